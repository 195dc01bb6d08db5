"""SPoT's prompt transfer (Vu et al. 2022, Section 3): start a run from a source run's method parameters.

``method.init_from`` names a source run folder (its best ``prompt.safetensors``, or with
``method.init_from_step=N`` its snapshot ``snapshots/step-N/``) or a file in that format (``ptune similarity``
writes the top-k weighted average of source prompts as one, ``<out>.init.safetensors``). Only ``method.*`` tensors are
read: task heads never transfer. The source must be the same method on the same backbone; then each of
the target method's parameters takes, in this order,

1. the source tensor of the same name and shape;
2. from a ``method.per_task`` source (one copy per task), copy ``init_from_task``'s;
3. for a per-task table (first dimension = the source's task count: structured's task embeddings,
   HyperPrompt's global prompts and ``sep`` networks), ``init_from_task``'s row, for each target task;

and anything else is a mismatch, refused in one line naming the parameter and both shapes. The metadata
check (method, model, family) runs before the target's model loads (:func:`check`).

``method.init_from`` may also name a Hugging Face PEFT adapter folder (``adapter_config.json`` beside
``adapter_model.safetensors``; for ``ptune export``'s per-task folders, their parent with
``method.init_from_task``). PEFT saves a prompt-learning adapter as one tensor, ``prompt_embeddings``:
the P x d prompt (prompt tuning; P-Tuning's encoder output, so a P-Tuning adapter starts a prompt_tuning
run as a plain prompt) or the flat P x (layers*2*d) prefix (prefix tuning, which starts p_tuning_v2 with
``reparameterize=false``). Each method says which adapter types it reads (``PromptMethod.peft_imports``,
``from_peft``). Type, task type (SEQ_CLS for BERT-family runs, SEQ_2_SEQ_LM for T5), base model, sizes
and prompt length are checked against the run before its model loads. A SEQ_CLS adapter's classifier
was trained with the prompt, so unlike a ptune source's heads it initialises every task head of its
shape (:func:`apply_heads`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ptune import files, run_folder
from ptune.errors import CheckpointError, ConfigError

# PEFT's file names (peft.utils.constants CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME) and its task type for the
# way each backbone family scores: a classifier on the pooled first token, or T5's text-to-text decoder
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TASK_TYPES = {"bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}
HEAD = "head:"  # source keys of an adapter's classifier (PEFT saves it as base_model.classifier.*)


def source_file(init_from: str, step: int | None) -> Path:
    path = Path(init_from)
    if path.is_file():
        if step is not None:
            raise ConfigError(f"method.init_from_step={step} needs a run folder; method.init_from={init_from} is a file")
        return path
    if not path.is_dir():
        raise ConfigError(f"method.init_from={init_from}: no run folder or prompt file there")
    if step is None:
        return path / run_folder.PROMPT
    snap = run_folder.snapshot(path, step) / run_folder.PROMPT
    if not snap.is_file():
        have = run_folder.snapshot_steps(path)
        raise ConfigError(f"method.init_from_step={step}: {path} has no snapshot at that step (it has: "
                          f"{', '.join(map(str, have)) or 'none'}; trainer.snapshot_steps keeps them)")
    return snap


def source_tasks(path: Path, meta: dict[str, str]) -> list[str]:
    if meta.get("tasks"):
        return meta["tasks"].split(",")
    return [t for t in meta.get("task", "").split("+") if t]


def check(cfg, expected: dict[str, str], sizes: Callable[..., dict] | None = None
          ) -> tuple[dict[str, Tensor], dict[str, str], Path]:
    """Read the source and check it is this method on this backbone, before anything loads. ``sizes``
    (``backbones.sizes``) gives the model's sizes from its config, for a PEFT adapter's."""
    m = cfg.method
    folder = peft_folder(m.init_from, m.init_from_task)
    if folder is not None:
        return peft_source(cfg, folder, sizes(cfg.model) if sizes else None)
    path = source_file(m.init_from, m.init_from_step)
    tensors, meta = files.read_tensors(path)
    for key in ("method", "model", "family"):
        if meta.get(key) is not None and meta[key] != expected[key]:
            raise ConfigError(f"method.init_from={m.init_from} holds {key}={meta[key]!r}, this run has "
                              f"{key}={expected[key]!r}; transfer needs the same method and backbone")
    tasks = source_tasks(path, meta)
    if m.init_from_task is not None and m.init_from_task not in tasks:
        raise ConfigError(f"method.init_from_task={m.init_from_task!r} is not a task of {m.init_from}; "
                          f"choose one of: {', '.join(tasks) or '(the source names no tasks)'}")
    return {k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")}, meta, path


def peft_folder(init_from: str, task: str | None) -> Path | None:
    """The PEFT adapter folder that ``method.init_from`` names; None for a ptune run folder or prompt file."""
    path = Path(init_from)
    if not path.is_dir() or (path / run_folder.PROMPT).is_file():
        return None
    if task is not None and (path / task / ADAPTER_CONFIG).is_file():
        return path / task
    if (path / ADAPTER_CONFIG).is_file():
        return path
    per_task = sorted(p.parent.name for p in path.glob(f"*/{ADAPTER_CONFIG}"))
    if per_task:
        raise ConfigError(f"method.init_from={init_from} holds one PEFT adapter per task; choose one with "
                          f"method.init_from_task=<task> ({', '.join(per_task)})")
    return None


def peft_source(cfg, folder: Path, sizes: dict | None) -> tuple[dict[str, Tensor], dict[str, str], Path]:
    """A PEFT adapter as a transfer source: this method's parameters (``from_peft``) and ``head:`` tensors."""
    from ptune.methods import METHODS

    m, where, family = cfg.method, cfg.method.init_from, cfg.model.family
    if m.init_from_step is not None:
        raise ConfigError(f"method.init_from_step={m.init_from_step} needs a ptune run folder; {where} is a PEFT adapter")
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} is not readable JSON ({str(err).splitlines()[0]})") from None
    kind, task_type = config.get("peft_type"), config.get("task_type")
    if kind not in METHODS[m.name].peft_imports:
        takers = [n for n, c in METHODS.items() if kind in c.peft_imports]
        fix = f"choose method={' or '.join(takers)}" if takers else \
            "ptune reads PEFT's PROMPT_TUNING, P_TUNING and PREFIX_TUNING adapters"
        raise ConfigError(f"method.init_from={where} is a PEFT {kind} adapter, which method={m.name} cannot start "
                          f"from; {fix}")
    if task_type != TASK_TYPES[family]:
        raise ConfigError(f"method.init_from={where} is a PEFT {task_type} adapter; a model.family={family} run "
                          f"takes {TASK_TYPES[family]} adapters")
    if kind == "PREFIX_TUNING" and family == "t5":
        raise ConfigError(f"method.init_from={where}: PEFT's T5 prefix tuning prompts only the decoder, through a "
                          "cache; ptune's p_tuning_v2 prompts both stacks, so it has no equivalent to start from")
    base, hf_id = config.get("base_model_name_or_path"), cfg.model.hf_id
    if base and hf_id and base != hf_id:
        raise ConfigError(f"method.init_from={where} was trained on {base}, this run's model is {hf_id}; transfer "
                          "needs the same backbone")
    for key in ("token_dim", "num_layers", "num_attention_heads"):
        if sizes and config.get(key) is not None and config[key] != sizes[key]:
            raise ConfigError(f"method.init_from={where} has {key}={config[key]}, {cfg.model.name} has "
                              f"{sizes[key]}; transfer needs the same backbone")
    p = config.get("num_virtual_tokens")
    if p != m.num_virtual_tokens:
        raise ConfigError(f"method.init_from={where} has {p} virtual tokens, this run "
                          f"method.num_virtual_tokens={m.num_virtual_tokens}; set method.num_virtual_tokens={p}")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"{folder} has no {ADAPTER_WEIGHTS} (ptune reads safetensors only, never a pickled "
                              "adapter_model.bin)")
    tensors, _ = files.read_tensors(folder / ADAPTER_WEIGHTS)
    emb = tensors.get("prompt_embeddings")
    width = (2 * config.get("num_layers", 0) if kind == "PREFIX_TUNING" else 1) * config.get("token_dim", 0)
    if emb is None or emb.dim() != 2 or emb.shape[0] < p or emb.shape[1] != width:
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS} holds no prompt_embeddings of {p} x {width} "
                              f"({None if emb is None else tuple(emb.shape)}), as its {ADAPTER_CONFIG} says")
    source = dict(METHODS[m.name].from_peft(m, kind, emb.float()))
    source.update({HEAD + k.removeprefix("base_model."): v.float() for k, v in tensors.items()
                   if k != "prompt_embeddings"})
    note = "PEFT P_TUNING adapter: it keeps only its encoder's output, imported as a plain prompt" \
        if kind == "P_TUNING" else ""
    return source, {"format": "peft", "peft_type": kind, "tasks": m.init_from_task or "", "note": note}, folder


def apply_heads(heads: nn.ModuleDict | dict, source: dict[str, Tensor]) -> list[str]:
    """A PEFT adapter's classifier into each task head of its shape; returns those tasks (none for a ptune
    source, whose heads never transfer)."""
    found = {k[len(HEAD):]: v for k, v in source.items() if k.startswith(HEAD)}
    done = []
    with torch.no_grad():
        for task, head in heads.items():
            own = dict(head.named_parameters())
            if found and all(k in found and found[k].shape == p.shape for k, p in own.items()):
                for k, p in own.items():
                    p.copy_(found[k].to(p.dtype))
                done.append(task)
    return done


def apply(method: torch.nn.Module, cfg, source: dict[str, Tensor], meta: dict[str, str], path: Path) -> int:
    """Copy the source into ``method``'s parameters (rules in the module docstring); returns how many."""
    tasks = source_tasks(path, meta)
    index = tasks.index(cfg.method.init_from_task) if cfg.method.init_from_task is not None else None
    plan: dict[str, Tensor] = {}
    for name, p in method.named_parameters():
        plan[name] = pick(name, tuple(p.shape), source, index, len(tasks), cfg.method.init_from)
    if not plan:
        raise ConfigError(f"method={cfg.method.name} has no parameters to initialise from {cfg.method.init_from}")
    with torch.no_grad():
        for name, p in method.named_parameters():
            p.copy_(plan[name].to(p.dtype))
    return len(plan)


def pick(name: str, shape: tuple, source: dict[str, Tensor], index: int | None, n_tasks: int, where: str) -> Tensor:
    rest = name.split(".", 2)[2] if name.startswith("copies.") else None  # a per_task target's copy
    for key in (name, rest):
        if key is not None and key in source and tuple(source[key].shape) == shape:
            return source[key]
    copies = [k for k in source if k.startswith("copies.") and k.split(".", 2)[2] == (rest or name)]
    if copies:
        if index is None:
            raise ConfigError(f"method.init_from={where} keeps one prompt per task; choose one with "
                              "method.init_from_task=<task>")
        t = source.get(f"copies.{index}.{rest or name}")
        if t is not None and tuple(t.shape) == shape:
            return t
    t = source.get(rest or name)
    if t is not None and t.dim() == len(shape) and tuple(t.shape[1:]) == shape[1:] and t.shape[0] == n_tasks > 1:
        if index is None:
            raise ConfigError(f"method.init_from={where} is a {n_tasks}-task run; choose the task with "
                              "method.init_from_task=<task>")
        return t[index : index + 1].expand(shape).clone()
    have = next((tuple(v.shape) for k, v in source.items() if k.endswith(rest or name)), None)
    if have is None:
        raise CheckpointError(f"method.init_from={where} has no {name} (a different method or configuration)")
    raise ConfigError(f"method.init_from={where}: {name} has shape {have} there, {shape} here "
                      "(a different prompt length or configuration)")
