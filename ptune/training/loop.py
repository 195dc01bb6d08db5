"""The training loop: prompt-only updates, periodic evaluation, early stopping, kill-safe checkpoints.

Ours rather than a library's because checkpoints hold only the trainable parameters, training state
must resume bit-exactly (optimizer, scheduler, RNG, data position, early stopping), and task mixtures
draw one-task batches by their own sampling rule (ptune/tasks/mixture.py).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ptune import run_folder
from ptune.errors import CheckpointError, TrainingError
from ptune.tasks.collate import Split, collate, eval_batches, iterate, to_device
from ptune.tasks.mixture import average, mixture_batches, task_score
from ptune.training import checkpoint as ckpt
from ptune.training import distributed
from ptune.training.early_stopping import EarlyStopping
from ptune.training.optim import build_optimizer, build_scheduler
from ptune.training.parts import Parts
from ptune.training.report import Reporter
from ptune.training.trackers import eval_metrics as tracker_metrics


class Interrupted(Exception):
    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by signal {signum} at step {step}")
        self.signum, self.step = signum, step


@contextmanager
def catch_signals(flag: dict):
    """SIGINT/SIGTERM set a flag; the loop saves its state at the next step boundary and stops."""
    def handler(signum, _frame):
        if flag.get("signum"):  # a second signal: stop now
            raise KeyboardInterrupt
        flag["signum"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def amp_context(parts: Parts):
    """CUDA: autocast for bf16 / fp16. CPU: a frozen body is stored in bf16 itself, so no autocast; a
    trainable body keeps fp32 master weights and runs under bf16 autocast."""
    return autocast(parts.cfg.trainer.precision, parts.device, bool(parts.cfg.model.trainable))


def autocast(p: str, device: torch.device, trainable: bool = False):
    """:func:`amp_context` from its three inputs (the precision, the device, whether the body trains)."""
    if p == "fp32":
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if p == "bf16" else torch.float16)
    if trainable and p == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def read_score(scores: torch.Tensor, row: int) -> tuple[int | float, Any]:
    """A batch row's (value, raw scores): a regression head's value twice, else the best candidate's index and the
    list over candidates. ``predict`` and the pool (ptune/pool.py) read the backbone's scores through it."""
    if scores.dim() == 1:
        value = scores[row].item()
        return value, value
    return int(scores[row].argmax()), scores[row].tolist()


@torch.inference_mode()
def predict(parts: Parts, split: Split, batch_size: int, *, with_scores: bool = False, progress=None):
    """Per-example predictions (decoded by the task), in the split's order (batches run length-sorted).

    ``with_scores``: returns ``(predictions, scores)``, each example's raw scores beside its prediction: a
    list over its candidates / choices (T5 sequence log-probabilities, encoder logits; -inf pads a batch's
    shorter candidate lists) or, for a regression head, the value. ``progress(n)`` is called after each
    batch of n rows.
    """
    parts.method.eval()
    parts.backbone.eval()
    family, pad = parts.backbone.family, parts.pad_id
    preds: list = [None] * len(split)
    raw: list = [None] * len(split)
    for batch in iterate(split, eval_batches(split.lengths(), batch_size), family, pad):
        batch = to_device({k: v for k, v in batch.items() if k != "labels"}, parts.device)
        with amp_context(parts):
            out = parts.backbone(batch, parts.method(batch["task_ids"]))
        scores = out.scores.float().cpu()
        for row, i in enumerate(batch["index"].tolist()):
            value, raw[i] = read_score(scores, row)
            preds[i] = split.task.decode(split.examples[i], value)
        if progress is not None:
            progress(len(batch["index"]))
    return (preds, raw) if with_scores else preds


def evaluate(parts: Parts, split: Split) -> dict[str, float]:
    world = distributed.current()
    if not world.parallel:
        preds = predict(parts, split, parts.cfg.trainer.eval_batch_size)
    else:  # each rank predicts its shard; every rank gets every prediction, so all take the same decisions
        mine = world.shard(list(range(len(split))))
        shard = dataclasses.replace(split, examples=[split.examples[i] for i in mine],
                                    features=[split.features[i] for i in mine])
        preds = [None] * len(split)
        for rank, got in enumerate(world.gather(predict(parts, shard, parts.cfg.trainer.eval_batch_size))):
            preds[rank :: world.size] = got
    return split.task.compute_metrics(preds, split.examples)


def split_key(split, first: bool) -> str:
    """A task's row name: the task for its first evaluation split, ``task/split`` for the others."""
    return split.task.name if first else f"{split.task.name}/{split.split}"


def evaluate_all(parts: Parts, evals: list[Split] | None = None) -> dict:
    """Every task's official metrics on each of its evaluation splits, and their leaderboard average.

    One task: that task's metrics, as before mixtures. Several: ``{"avg": ..., "tasks": {key: metrics}}``
    with ``avg`` the mean over tasks of each task's score (ptune/tasks/mixture.py) and, for monitoring,
    ``<task>/<main metric>`` of each task's first split.
    """
    evals = parts.evals if evals is None else evals
    if len(parts.tasks) == 1:
        return evaluate(parts, evals[0])
    seen: set[str] = set()
    per_split, scores = {}, {}
    for split in evals:
        key = split_key(split, split.task.name not in seen)
        seen.add(split.task.name)
        metrics = evaluate(parts, split)
        per_split[key] = metrics
        scores.setdefault(split.task.name, []).append(task_score(metrics, split.task.metric_names))
    row: dict = {"avg": average(scores), "tasks": per_split}
    for name in scores:
        task = next(s.task for s in evals if s.task.name == name)
        row[f"{name}/{task.main_metric}"] = per_split[name][task.main_metric]
    return row


def fit(parts: Parts, console: Console | None = None) -> dict:
    cfg, run_dir = parts.cfg, Path(parts.run_dir)
    tcfg = cfg.trainer
    modules = parts.trainable_modules()
    params = parts.trainable_parameters()
    optimizer = build_optimizer(cfg.optimizer, parts.param_groups(), cfg.lr, parts.device)
    scheduler = build_scheduler(cfg.optimizer, optimizer, tcfg.max_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=parts.device.type == "cuda" and tcfg.precision == "fp16")
    world = distributed.current()
    if not world.main:
        console = None  # rank 0 reports and writes; the others train and evaluate
    stopper = EarlyStopping(tcfg.patience)
    progress = {"step": 0, "epoch": 0, "batch": 0, "wall_time": 0.0, "history": [], "loss_sum": 0.0,
                "loss_count": 0}

    state_dir = ckpt.latest_state_dir(run_dir / run_folder.STATE) if cfg.resume else None
    if state_dir is not None:
        saved, opt_state, progress, rng = ckpt.load_state(state_dir)
        ckpt.load_trainable(modules, saved, state_dir)
        try:
            optimizer.load_state_dict(opt_state)
        except ValueError as err:  # another grouping of the parameters (a state saved by an older ptune)
            raise CheckpointError(
                f"{state_dir} holds optimizer state for other parameter groups ({str(err).splitlines()[0]}); it was "
                "saved by another ptune version: finish it with that version, or start a new run_dir=") from None
        scheduler.load_state_dict(progress.pop("scheduler"))
        stopper = EarlyStopping(**progress.pop("early_stopping"))
        ckpt.set_rng_state(rng["t"], rng["m"])
        distributed.set_rank_rng(rng["t"], world)
        if console is not None:
            console.print(f"resuming {run_dir} from step {progress['step']} (its state/ folder)")

    def save_state():
        rank_rng = distributed.rank_rng(world)  # every rank's RNG (dropout), so a resume replays them all
        if world.main:
            prog = dict(progress, scheduler=scheduler.state_dict(), early_stopping=stopper.state())
            ckpt.save_state(run_dir / run_folder.STATE, ckpt.trainable_state(modules), optimizer.state_dict(), prog, rank_rng)

    reporter = Reporter(console, tcfg, start_step=progress["step"])
    runner = distributed.Trainer(parts, world)
    lengths = [split.lengths() for split in parts.trains]
    flag: dict = {}
    start = time.perf_counter() - progress["wall_time"]
    stop_reason = "max_steps"
    with catch_signals(flag), reporter:
        while progress["step"] < tcfg.max_steps and stop_reason == "max_steps":
            batches = mixture_batches(lengths, tcfg.batch_size, cfg.seed, progress["epoch"], parts.probabilities,
                                      tcfg.group_by_length)
            while progress["batch"] + tcfg.grad_accum <= len(batches):
                group = batches[progress["batch"] : progress["batch"] + tcfg.grad_accum]
                loss = train_step(parts, optimizer, scheduler, scaler, group, params, runner)
                loss, signalled = world.sum([loss, float(bool(flag))])  # the global loss; a signal stops every rank
                if signalled and not flag:
                    flag["signum"] = signal.SIGTERM
                progress["batch"] += tcfg.grad_accum
                progress["step"] += 1
                step = progress["step"]
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss is {loss} at step {step}; stopped, the last good checkpoint is kept in {run_dir} "
                        f"(try a lower optimizer.lr, now {cfg.lr}, or trainer.precision=fp32)"
                    )
                progress["loss_sum"] += loss
                progress["loss_count"] += 1
                reporter.step(step, loss, scheduler.get_last_lr()[0])
                parts.tracker.log_metrics(step, {"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]})
                if step % tcfg.eval_every == 0 or step == tcfg.max_steps:
                    record_eval(parts, progress, stopper, modules, start, reporter)
                    if stopper.should_stop:
                        stop_reason = "early_stopping"
                if step in tcfg.snapshot_steps and world.main:  # SPoT's early prompts (ptune similarity --step)
                    parts.save_prompt(run_folder.snapshot(run_dir, step) / run_folder.PROMPT, step=step)
                save_now = tcfg.save_every and step % tcfg.save_every == 0
                if save_now or step % tcfg.eval_every == 0 or step == tcfg.max_steps or flag or stop_reason != "max_steps":
                    progress["wall_time"] = time.perf_counter() - start
                    save_state()
                if flag:
                    raise Interrupted(flag["signum"], step)
                if step >= tcfg.max_steps or stop_reason != "max_steps":
                    break
            else:
                progress["epoch"] += 1
                progress["batch"] = 0
    progress["wall_time"] = time.perf_counter() - start
    return {"stopped": stop_reason, "progress": progress, "best_step": stopper.best_step}


def train_step(parts: Parts, optimizer, scheduler, scaler, group, params, runner=None) -> float:
    """One optimizer step over ``group``: batches of row indices, several for gradient accumulation; a
    batch is ``(task id, rows)`` in a mixture, or the rows alone for the first task. With several ranks
    each takes its shard of every batch (ptune/training/distributed.py); returns this rank's share of
    the loss."""
    parts.method.train()
    parts.backbone.train()
    runner = runner or distributed.Trainer(parts, distributed.World())
    world = runner.world
    total = 0.0
    for k, item in enumerate(group):
        t, idx = item if isinstance(item, tuple) else (0, item)
        rows = world.shard(idx)
        # a rank with no rows of a tiny batch still runs one (weight 0), so DDP's collectives line up
        batch = to_device(collate(parts.trains[t], rows or idx[:1], parts.backbone.family, parts.pad_id),
                          parts.device)
        mine = distributed.loss_terms(batch) if rows else 0
        share = mine / world.sum([mine])[0] if world.parallel else 1.0
        with amp_context(parts), runner.no_sync(last=k == len(group) - 1):
            loss = runner.module(batch).float() * (share * runner.scale() / len(group))
        scaler.scale(loss).backward()
        total += loss.item() / runner.scale()
    runner.sync(params)
    if parts.cfg.optimizer.max_grad_norm > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, parts.cfg.optimizer.max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def record_eval(parts: Parts, progress, stopper, modules, start, reporter) -> None:
    step = progress["step"]
    metrics = evaluate_all(parts)
    main = metrics[parts.monitor_key()]
    train_loss = progress["loss_sum"] / max(1, progress["loss_count"])
    progress["loss_sum"], progress["loss_count"] = 0.0, 0
    improved = stopper.update(main, step)
    row = {"step": step, "epoch": progress["epoch"], "train_loss": train_loss,
           "elapsed_s": round(time.perf_counter() - start, 3), **metrics, "best": improved}
    progress["history"].append(row)
    run_dir = Path(parts.run_dir)
    if not distributed.current().main:
        return
    if improved:
        parts.save_prompt(run_dir / run_folder.PROMPT, step=step)
    run_folder.write_metrics(run_dir, progress["history"])
    reporter.evaluation(row, parts, stopper)
    parts.tracker.log_metrics(step, tracker_metrics(row))

