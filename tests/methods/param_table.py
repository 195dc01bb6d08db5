"""The trainable-parameter table of docs/methods.md, computed from the code.

    .venv/bin/python -m tests.methods.param_table

Each method is built with its default config (plus the listed options) on the dimensions of t5-base
(d_model 768, 12 + 12 layers, 12 heads, d_kv 64) and bert-base (768, 12 layers, 12 heads), with a small
zero word-embedding tensor; backbone sizes come from transformers' configs instantiated on the meta
device (no weights). tests/methods/test_param_table.py checks that the docs hold exactly this table.
"""

from __future__ import annotations

import torch

BACKBONES = {  # name: (hidden, layers, heads, head_dim, decoder layers)
    "t5-base": (768, 12, 12, 64, 12),
    "bert-base": (768, 12, 12, 64, 0),
}
ROWS = [  # (method, options)
    ("prompt_tuning", {}), ("p_tuning_v2", {}), ("prefix_tuning", {}),
    ("p_tuning", {}), ("p_tuning", {"encoder": "mlp"}),
    ("structured", {}), ("structured", {"hypernetwork": "linear"}), ("structured", {"hypernetwork": "mlp"}),
    ("hyperprompt", {}), ("hyperprompt", {"variant": "share"}), ("hyperprompt", {"variant": "sep"}),
    ("model_tuning", {}),
]
TASKS = (1, 8)  # one task; the eight GLUE tasks trained together (HyperPrompt's multi-task setting)


def backbone_size(name: str) -> int:
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    with torch.device("meta"):
        if name == "t5-base":
            model = T5ForConditionalGeneration(T5Config(d_model=768, d_ff=3072, d_kv=64, num_layers=12,
                                                        num_decoder_layers=12, num_heads=12, vocab_size=32128))
        else:
            model = BertModel(BertConfig())  # bert-base-uncased's shape, pooler included
    return sum(p.numel() for p in model.parameters())  # tied embeddings counted once


def dims(name: str):
    from ptune.methods.base import BackboneDims

    hidden, layers, heads, head_dim, dec = BACKBONES[name]
    return BackboneDims(hidden_size=hidden, num_layers=layers, num_heads=heads, head_dim=head_dim,
                        decoder_layers=dec, word_embeddings=torch.zeros(8, hidden), tokenize=lambda text: [],
                        common_token_ids=torch.arange(8))


def trainable(method: str, options: dict, backbone: str, tasks: int) -> int:
    from ptune import methods
    from ptune.config import METHOD_CONFIGS

    if getattr(METHOD_CONFIGS[method], "trains_body", False):  # model_tuning: the whole body, no prompt
        return backbone_size(backbone)
    torch.manual_seed(0)
    m = methods.build(METHOD_CONFIGS[method](**options), dims(backbone), [["no", "yes"]] * tasks)
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def label(method: str, options: dict) -> str:
    return " ".join([f"`{method}`", *(f"{k}={v}" for k, v in options.items())])


def table() -> str:
    sizes = {b: backbone_size(b) for b in BACKBONES}
    head = "| method (default config unless shown) | " + " | ".join(
        f"{b}, {t} task{'s' if t > 1 else ''}" for b in BACKBONES for t in TASKS) + " |"
    lines = [head, "|" + "---|" * (1 + len(BACKBONES) * len(TASKS))]
    for method, options in ROWS:
        cells = []
        for b in BACKBONES:
            for t in TASKS:
                n = trainable(method, options, b, t)
                cells.append(f"{n:,} ({100 * n / sizes[b]:.3f}%)")
        lines.append(f"| {label(method, options)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Backbone sizes: " + ", ".join(f"{b} {n:,}" for b, n in sizes.items()) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
