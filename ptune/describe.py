"""``ptune describe``: a run's resolved config and, from the code, what its method trains and injects where.

Nothing is trained and no weights are read: the backbone is built from its config on the meta device
(:func:`ptune.backbones.skeleton`), the method is built for real and run once per task, and the
:class:`~ptune.methods.base.Prompt` it returns says where its tensors go.
"""

from __future__ import annotations

import torch

from ptune import backbones, methods, tasks
from ptune.config import Config
from ptune.methods.base import KeysValues, Prompt


def summary(cfg: Config) -> dict:
    """Parameter counts and injection sites of ``cfg``'s method on ``cfg``'s backbone shapes."""
    run_tasks = [tasks.get(n) for n in cfg.task_names]
    torch.manual_seed(cfg.seed)
    backbone, body = backbones.skeleton(cfg.model, run_tasks)
    method = methods.build_for(cfg.method, backbone.dims(), run_tasks)
    method.eval()
    with torch.no_grad():
        prompt = method(torch.arange(len(run_tasks)))
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    heads = count(getattr(backbone, "heads", torch.nn.ModuleDict()))
    trained_body = body if cfg.model.trainable else 0
    trainable = count(method) + heads + trained_body
    return {
        "method": cfg.method.name, "model": cfg.model.name, "hf_id": cfg.model.hf_id, "task": cfg.task_label,
        "method_params": count(method), "head_params": heads, "body_params": body, "body_trains": bool(trained_body),
        "trainable_params": trainable, "share_of_backbone": trainable / body,
        "injects": injections(prompt, cfg, backbone.family, trained_body),
    }


def injections(prompt: Prompt, cfg: Config, family: str, trained_body: int) -> list[str]:
    out = []
    if prompt.embeds is not None:
        _, p, d = prompt.embeds.shape
        where = ("before the input" if family == "t5" else
                 "before [CLS]" if cfg.model.prompt_position == "start" else "after [CLS]")
        out.append(f"input embeddings: {p} soft tokens ({p} x {d}), {where}")
    stacks = (("encoder self-attention" if family == "t5" else "self-attention", prompt.keys_values),
              ("decoder self-attention", prompt.decoder_keys_values))
    for name, kv in stacks:
        if kv:
            out.append(f"{name}: {per_layer(kv)}")
    if trained_body:
        out.append(f"the whole body trains (model.trainable): {trained_body:,} parameters")
    return out or ["nothing"]


def per_layer(kv: KeysValues) -> str:
    _, heads, p, head_dim = kv[0][0].shape
    return f"{p} keys and {p} values in each of {len(kv)} layers ({heads} heads x {head_dim})"


def comment(s: dict) -> str:
    """The summary as YAML comment lines, so ``ptune describe``'s output stays one YAML document."""
    lines = [f"{s['method']} on {s['model']} ({s['hf_id'] or 'random init'}), task {s['task']}",
             f"trainable parameters: {s['trainable_params']:,} = method {s['method_params']:,} + heads "
             f"{s['head_params']:,}" + (f" + body {s['body_params']:,}" if s["body_trains"] else "")
             + f"; {100 * s['share_of_backbone']:.4f}% of the backbone's {s['body_params']:,}",
             *(f"injects: {i}" for i in s["injects"])]
    return "".join(f"# {line}\n" for line in lines)
