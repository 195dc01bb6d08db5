"""Resumable training state and the trainable parameters' checkpoint (atomic file writes: ptune/files.py).

The training state is a folder written like every file: a new ``state.tmp/`` is filled, then swapped in for
``state/``; a save that fails (a full disk) removes ``state.tmp/`` and says so in one line."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ptune.errors import CheckpointError
from ptune.files import atomic_save_tensors, atomic_write_json, read_tensors
from ptune.run_folder import STATE_FILE

FORMAT = "ptune-prompt-1"


# --- trainable parameters ------------------------------------------------------------------------
def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, Tensor]:
    """Only parameters that require grad, keyed ``<part>.<name>`` (part: method, head)."""
    return {f"{part}.{n}": p for part, m in modules.items() for n, p in m.named_parameters() if p.requires_grad}


def load_trainable(modules: dict[str, torch.nn.Module], tensors: dict[str, Tensor], where: Path) -> None:
    """Copy saved tensors into the trainable parameters, naming any mismatch."""
    expected = {k: p for k, p in trainable_state(modules).items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {where} does not fit this method/backbone: missing {missing[:4]}, unexpected {extra[:4]}"
        )
    for k, p in expected.items():
        if tuple(tensors[k].shape) != tuple(p.shape):
            raise CheckpointError(
                f"checkpoint {where}: {k} has shape {tuple(tensors[k].shape)}, this model expects {tuple(p.shape)}"
            )
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(tensors[k].to(p.dtype))


def check_metadata(metadata: dict[str, str], expected: dict[str, str], where: Path) -> None:
    for key, want in expected.items():
        got = metadata.get(key)
        if got is not None and got != want:
            raise CheckpointError(f"checkpoint {where} was trained with {key}={got!r}, this run has {key}={want!r}")


# --- optimizer / RNG state without pickle --------------------------------------------------------
def flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for k, v in pstate.items():
            if isinstance(v, Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def save_state(folder: Path, params: dict[str, Tensor], optimizer: dict, progress: dict,
               rank_rng: dict[str, Tensor] | None = None) -> None:
    """Write the whole training state to ``folder`` atomically (fill a temp folder, then swap).
    ``rank_rng``: the other ranks' RNG states of a distributed run, kept beside this process's."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    opt_t, opt_meta = flatten_optimizer(optimizer)
    rng_t, rng_meta = rng_state()
    rng_t.update(rank_rng or {})
    try:
        atomic_save_tensors(tmp / "params.safetensors", params)
        atomic_save_tensors(tmp / "optimizer.safetensors", opt_t)
        atomic_save_tensors(tmp / "rng.safetensors", rng_t)
        atomic_write_json(tmp / STATE_FILE, {"optimizer": opt_meta, "rng": rng_meta, "progress": progress})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no partial state.tmp/ left behind; state/ is untouched
        raise
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def latest_state_dir(folder: Path) -> Path | None:
    """``state/``, or ``state.old/`` when a kill fell between the two renames of :func:`save_state`."""
    for cand in (folder, folder.with_name(folder.name + ".old")):
        if (cand / STATE_FILE).is_file():
            return cand
    return None


def load_state(folder: Path) -> tuple[dict[str, Tensor], dict, dict, dict]:
    """(params, optimizer state dict, progress, rng) from a state folder; RNG is restored by the caller."""
    try:
        meta = json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"training state {folder} is unreadable ({err}); delete it to start over") from None
    missing = [k for k in ("optimizer", "progress", "rng") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"training state {folder} is unreadable ({STATE_FILE} lacks {', '.join(missing)}); "
                              "delete it to start over")
    params, _ = read_tensors(folder / "params.safetensors")
    opt_t, _ = read_tensors(folder / "optimizer.safetensors")
    rng_t, _ = read_tensors(folder / "rng.safetensors")
    try:
        optimizer = unflatten_optimizer(opt_t, meta["optimizer"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"training state {folder} is unreadable (its optimizer state: {err!r}); delete it to "
                              "start over") from None
    return params, optimizer, meta["progress"], {"t": rng_t, "m": meta["rng"]}
