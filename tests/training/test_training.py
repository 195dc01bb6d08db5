"""Training: the learnability test, prompt-only checkpoints, a bit-identical frozen backbone, eval replay."""

from __future__ import annotations

import json

import pytest
import torch

from ptune import files, run, run_folder
from ptune.tasks.collate import iterate, train_batches
from ptune.training.loop import evaluate, fit, train_step
from ptune.training.optim import build_optimizer, build_scheduler
from tests.conftest import sst2_examples, tiny_config


def parts_for(family, method, tmp_path, *extra):
    cfg = tiny_config(family, method, *extra, tmp_path=tmp_path)
    ex = sst2_examples()
    return run.build(cfg, examples={"train": ex, "eval": ex})


def full_batch_loss(parts) -> float:
    parts.method.eval(), parts.backbone.eval()
    batch = next(iterate(parts.train, [list(range(16))], parts.backbone.family, parts.pad_id))
    with torch.no_grad():
        return parts.backbone(batch, parts.method(batch["task_ids"]), score=False).loss.item()


@pytest.mark.parametrize("method,lr", [("prompt_tuning", "0.3"), ("p_tuning_v2", "0.05")])
def test_learnability_loss_on_16_examples_drops_by_more_than_half(family, method, lr, tmp_path):
    parts = parts_for(family, method, tmp_path, f"optimizer.lr={lr}", "optimizer.scheduler=constant",
                      "optimizer.warmup_ratio=0", "model.dropout=0.0", "method.num_virtual_tokens=8",
                      *(["method.prefix_dropout=0.0"] if method != "prompt_tuning" else []))
    before = full_batch_loss(parts)
    params = parts.trainable_parameters()
    opt = build_optimizer(parts.cfg.optimizer, params, parts.cfg.lr, parts.device)
    sched = build_scheduler(parts.cfg.optimizer, opt, 100)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for _ in range(60):
        train_step(parts, opt, sched, scaler, [list(range(16))], params)
    after = full_batch_loss(parts)
    assert after < before / 2, (before, after)


def test_fit_writes_run_folder_with_only_trainable_parameters_and_keeps_backbone(family, tmp_path):
    parts = parts_for(family, "p_tuning_v2", tmp_path, "trainer.max_steps=6", "trainer.eval_every=3",
                      "trainer.batch_size=8")
    body = {k: v.clone() for k, v in parts.backbone.model.state_dict().items()}
    run_folder.save_config(parts.cfg, parts.run_dir)
    outcome = fit(parts)
    results = run.write_results(parts, outcome)
    d = parts.run_dir
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "prompt.safetensors", "metrics.jsonl",
                                              "results.json", "state"}
    tensors, meta = files.read_tensors(d / "prompt.safetensors")
    expected = {f"method.{n}" for n, _ in parts.method.named_parameters()}
    if family == "bert":
        expected |= {f"head.{n}" for n, _ in parts.backbone.heads.named_parameters()}
    assert set(tensors) == expected
    assert meta["method"] == "p_tuning_v2" and meta["family"] == family
    after = parts.backbone.model.state_dict()
    assert all(torch.equal(body[k], after[k]) for k in body)  # bit-identical frozen body
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert results["trainable_params"] == sum(t.numel() for t in tensors.values())
    frozen = sum(p.numel() for p in parts.backbone.model.parameters())  # tied weights counted once
    assert results["total_params"] == results["trainable_params"] + frozen


def test_eval_from_run_folder_reproduces_stored_metric(family, tmp_path):
    parts = parts_for(family, "prompt_tuning", tmp_path, "trainer.max_steps=4", "trainer.eval_every=2",
                      "trainer.batch_size=8")
    outcome = fit(parts)
    best = next(r for r in outcome["progress"]["history"] if r["step"] == outcome["best_step"])
    fresh = parts_for(family, "prompt_tuning", tmp_path, "trainer.max_steps=4")
    fresh.load_prompt(parts.run_dir / "prompt.safetensors")
    assert evaluate(fresh, fresh.eval)["accuracy"] == best["accuracy"]


def test_train_batches_are_deterministic_grouped_and_cover_the_epoch():
    lengths = [(i * 37) % 50 + 1 for i in range(1000)]
    a = train_batches(lengths, 32, seed=1, epoch=0, group_by_length=True, mega=4)
    assert a == train_batches(lengths, 32, seed=1, epoch=0, group_by_length=True, mega=4)
    assert a != train_batches(lengths, 32, seed=1, epoch=1, group_by_length=True, mega=4)
    assert sorted(i for b in a for i in b) == list(range(1000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    plain = train_batches(lengths, 32, seed=1, epoch=0, group_by_length=False)
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / len(plain)
    assert spread < plain_spread / 3


def test_warmup_then_linear_decay_and_constant_schedules():
    from ptune.config import OptimizerConfig

    p = [torch.nn.Parameter(torch.zeros(1))]
    lin = build_scheduler(OptimizerConfig(warmup_steps=4), torch.optim.SGD(p, lr=1.0), 20)
    seen = []
    for _ in range(20):
        seen.append(lin.get_last_lr()[0])
        lin.optimizer.step(), lin.step()
    assert seen[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]  # warmup to the peak
    assert seen[5] == pytest.approx(15 / 16) and seen[-1] == pytest.approx(1 / 16)  # linear to zero
    const = build_scheduler(OptimizerConfig(warmup_steps=0, warmup_ratio=0, scheduler="constant"),
                            torch.optim.SGD(p, lr=0.3), 20)
    for _ in range(5):
        const.optimizer.step(), const.step()
    assert const.get_last_lr() == [0.3]


def test_adafactor_and_gradient_accumulation_train_the_prompt(tmp_path):
    parts = parts_for("t5", "prompt_tuning", tmp_path, "optimizer=adafactor", "trainer.max_steps=3",
                      "trainer.grad_accum=2", "trainer.batch_size=4", "trainer.eval_every=3")
    before = parts.method.prompt.detach().clone()
    outcome = fit(parts)
    progress = outcome["progress"]  # 16 rows = 4 batches of 4 = 2 steps of 2 batches an epoch
    assert (progress["step"], progress["epoch"], progress["batch"]) == (3, 1, 2)
    assert isinstance(build_optimizer(parts.cfg.optimizer, [parts.method.prompt], 0.3, parts.device),
                      __import__("transformers").optimization.Adafactor)
    assert not torch.equal(before, parts.method.prompt)


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path, monkeypatch):
    from ptune.training import loop

    scores = iter([50.0, 60.0, 55.0, 58.0, 70.0, 99.0])
    monkeypatch.setattr(loop, "evaluate", lambda parts, split: {"accuracy": next(scores)})
    parts = parts_for("bert", "prompt_tuning", tmp_path, "trainer.max_steps=20", "trainer.eval_every=1",
                      "trainer.patience=2", "trainer.batch_size=8")
    outcome = fit(parts)
    assert outcome["stopped"] == "early_stopping" and outcome["best_step"] == 2
    assert [r["accuracy"] for r in outcome["progress"]["history"]] == [50.0, 60.0, 55.0, 58.0]
    _, meta = files.read_tensors(parts.run_dir / "prompt.safetensors")
    assert meta["step"] == "2"  # the best checkpoint is the one kept


def test_bf16_stores_the_frozen_body_in_bf16_and_keeps_trainables_and_loss_in_fp32(family, tmp_path):
    parts = parts_for(family, "p_tuning_v2", tmp_path, "trainer.precision=bf16", "trainer.max_steps=2",
                      "trainer.eval_every=2", "trainer.batch_size=8")
    assert {p.dtype for p in parts.backbone.model.parameters()} == {torch.bfloat16}
    trainable = [p for m in parts.trainable_modules().values() for p in m.parameters()]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    params = [p for p in trainable if p.requires_grad]
    opt = build_optimizer(parts.cfg.optimizer, params, parts.cfg.lr, parts.device)
    sched = build_scheduler(parts.cfg.optimizer, opt, 10)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss = train_step(parts, opt, sched, scaler, [list(range(8))], params)
    assert isinstance(loss, float) and loss == loss  # a finite fp32 number
    moments = [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    batch = next(iterate(parts.train, [list(range(8))], parts.backbone.family, parts.pad_id))
    assert parts.backbone(batch, parts.method(batch["task_ids"]), score=False).loss.dtype == torch.float32
