"""Data parallel training through PyTorch's own launcher, or SLURM through Hydra's submitit launcher.

    torchrun --nproc_per_node=2 -m ptune train method=p_tuning_v2 task=rte trainer.batch_size=32
    ptune train -m hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=4 hydra.launcher.gpus_per_node=4 ...

The process group comes from the environment (``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_*``; inside a submitit job with several tasks, submitit's ``TorchDistributedEnvironment`` exports
them). Each rank runs the whole job on ``cuda:LOCAL_RANK`` (or the CPU, with the gloo backend), and:

- **batches**: every rank draws the same global batches (the sampler is a function of the seed and the
  epoch, ptune/tasks/mixture.py) and keeps its shard ``rows[rank::world]``, so ``trainer.batch_size`` is
  the *global* batch and a run on N processes takes the same steps as one process;
- **gradients**: each rank's loss is weighted by its share of the batch's loss terms (rows, or T5 target
  tokens), so the sum over ranks is the one-process mean even when the shards are uneven (the last batch
  of an epoch). A frozen backbone's small trainable set is summed with one bucketed all-reduce per
  optimizer step (after gradient accumulation); a trained body (``model.trainable=true``) goes through
  ``DistributedDataParallel``, which overlaps that traffic with the backward pass;
- **evaluation**: every rank predicts its shard of each evaluation split; the predictions are gathered,
  so every rank computes the same metrics and takes the same early-stopping decision;
- **files**: only rank 0 writes (config, checkpoints, training state with every rank's RNG, metrics,
  results, sweep.json); a signal on any rank stops all of them at the same step, so a killed run resumes
  with the same command;
- **a dead launcher**: torchrun forwards SIGTERM and SIGINT to its workers, but a SIGKILLed torchrun (an
  out-of-memory kill, ``kill -9``, a lost terminal) would leave them training as orphans that hold the run
  folder's lock. Each rank started by torchrun watches its parent (``watch_launcher``): once it is gone, the
  rank says so in one line and stops as on SIGTERM (the state is saved at the next step boundary when every
  rank is still there to agree), and ends itself ``LAUNCHER_GRACE_S`` later if it could not stop cleanly.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from ptune.training.parts import Parts

BUCKET = 1 << 24  # elements per all-reduce of the gradients (64 MiB in fp32)
LAUNCHER_POLL_S = 1.0  # how often a torchrun worker checks that its launcher is alive
LAUNCHER_GRACE_S = 60.0  # after that, how long it may take to save and stop before it ends itself


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, rows: list[int]) -> list[int]:
        return rows[self.rank :: self.size]

    def sum(self, values: list[float]) -> list[float]:
        """The sum over ranks of each value (one all-reduce); the values themselves in one process."""
        if not self.parallel:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj):
        """Every rank's ``obj``, in rank order."""
        if not self.parallel:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, fn):
        """``fn()`` run on rank 0 only; every rank returns its result, or raises its error."""
        if not self.parallel:
            return fn()
        box = None
        if self.main:
            try:
                box = ("ok", fn())
            except Exception as err:  # noqa: BLE001  (re-raised on every rank below)
                box = ("error", err)
        box = self.broadcast(box)
        if box[0] == "error":
            raise box[1]
        return box[1]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.parallel:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def env_world() -> World:
    """The world the environment describes (before or without a process group)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def is_main_process() -> bool:
    return env_world().main


def export_slurm() -> None:
    """Inside a submitit SLURM job of several tasks (and no torchrun), export its ranks for ``env://``."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # keep every GPU visible: each rank picks cuda:LOCAL_RANK itself
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ  # torchrun's agent sets it for every worker it starts


def watch_launcher(poll_s: float = LAUNCHER_POLL_S, grace_s: float = LAUNCHER_GRACE_S) -> threading.Thread:
    """A daemon thread that stops this process once its parent (the launcher) is gone: SIGTERM to itself
    (the training loop saves and stops at the next step boundary), then ``os._exit`` after ``grace_s`` if that
    did not end it (a collective waiting for a rank that died with the launcher). Polling ``getppid`` is
    portable and, unlike ``PR_SET_PDEATHSIG``, does not fire when the launcher thread that spawned us ends."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"ptune: rank {os.environ.get('RANK', '?')}: its launcher (pid {parent}) is gone; stopping "
              "(rerun the same command to resume)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(128 + signal.SIGTERM)

    thread = threading.Thread(target=watch, name="ptune-launcher-watch", daemon=True)
    thread.start()
    return thread


_watching = False


def setup(device: str) -> World:
    """Join the process group the environment describes (once per process); one process: ``World()``."""
    global _watching
    export_slurm()
    world = env_world()
    if not world.parallel:
        return world
    if launched_by_torchrun() and not _watching:
        watch_launcher()
        _watching = True
    if not dist.is_initialized():
        cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(dist.destroy_process_group)
    return World(dist.get_rank(), dist.get_world_size(), world.local_rank)


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)
    return World()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Sum the gradients over ranks in buckets of ``BUCKET`` elements. A parameter without a gradient
    (another task's head in a mixture batch) keeps none, as in one process, where AdamW then leaves it
    alone; every rank ran the same task's forward (an empty shard runs a weight-0 row), so the set agrees."""
    if not world.parallel:
        return
    params = [p for p in params if p.grad is not None]
    bucket: list[Tensor] = []
    size = 0
    for p in [*params, None]:
        if p is not None and (not bucket or (size + p.numel() <= BUCKET and p.grad.dtype == bucket[0].dtype)):
            bucket.append(p.grad)
            size += p.numel()
            continue
        if bucket:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        bucket, size = ([p.grad], p.numel()) if p is not None else ([], 0)


class Joint(torch.nn.Module):
    """The method and the backbone as one module, the unit DistributedDataParallel wraps; returns the loss."""

    def __init__(self, backbone: torch.nn.Module, method: torch.nn.Module):
        super().__init__()
        self.backbone, self.method = backbone, method

    def forward(self, batch: dict) -> Tensor:
        return self.backbone(batch, self.method(batch["task_ids"]), score=False).loss


class Trainer:
    """How a rank runs its forward passes and syncs gradients: plain, summed, or through DDP."""

    def __init__(self, parts: Parts, world: World):
        self.world = world
        joint = Joint(parts.backbone, parts.method)
        self.ddp = world.parallel and parts.cfg.model.trainable
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [parts.device.index] if parts.device.type == "cuda" else None
            # unused parameters: other tasks' heads and per-task copies in a mixture batch
            self.module = DistributedDataParallel(joint, device_ids=ids, broadcast_buffers=False,
                                                  find_unused_parameters=True)
        else:
            self.module = joint

    def scale(self) -> int:
        """DDP averages gradients over ranks; the summed path adds them."""
        return self.world.size if self.ddp else 1

    def no_sync(self, last: bool):
        return self.module.no_sync() if self.ddp and not last else nullcontext()

    def sync(self, params: list[torch.nn.Parameter]) -> None:
        if not self.ddp:
            sum_gradients(params, self.world)


def loss_terms(batch: dict) -> int:
    """How many terms the backbone's mean loss averages: target tokens (T5, -100 ignored) or rows."""
    labels = batch["labels"]
    if labels.dtype.is_floating_point:
        return labels.shape[0]
    return int((labels != -100).sum()) if labels.dim() > 1 else labels.shape[0]


def rank_rng(world: World) -> dict[str, Tensor]:
    """Every rank's torch (and CUDA) RNG state, gathered on each rank: ``rank<r>.torch``, ``rank<r>.cuda``."""
    if not world.parallel:
        return {}
    mine = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        mine["cuda"] = torch.cuda.get_rng_state()
    return {f"rank{r}.{k}": v for r, states in enumerate(world.gather(mine)) for k, v in states.items()}


def set_rank_rng(tensors: dict[str, Tensor], world: World) -> None:
    """Restore this rank's RNG from :func:`rank_rng`'s tensors (a one-process state has none)."""
    if f"rank{world.rank}.torch" in tensors:
        torch.set_rng_state(tensors[f"rank{world.rank}.torch"])
    if f"rank{world.rank}.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rank{world.rank}.cuda"])
