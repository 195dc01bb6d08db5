"""Every run writes its folded form (folded.safetensors) that scores exactly as the trained method, and
``ptune describe`` reports, from the code, each method's trainable parameters and injection sites."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ptune import describe, files, methods
from ptune.cli import main
from ptune.methods.base import Folded
from ptune.run_folder import FOLDED
from tests.conftest import tiny_config
from tests.methods.common import batch16, method_outputs, outputs, parts_for

PROMPT_METHODS = [m for m in methods.METHODS if m != "model_tuning"]


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_the_folded_form_a_run_writes_scores_as_the_method(family, method, tmp_path):
    parts = parts_for(family, method, tmp_path, "method.num_virtual_tokens=4")
    with torch.no_grad():
        for p in parts.method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    parts.method.train()  # save_prompt must fold in eval mode (no prefix dropout) and restore the mode
    parts.save_prompt(tmp_path / "prompt.safetensors", step=2)
    assert parts.method.training
    tensors, meta = files.read_tensors(tmp_path / FOLDED)
    assert meta["tasks"] == "sst2" and meta["step"] == "2" and meta["method"] == method
    batch = batch16(parts)
    with torch.no_grad():
        folded = outputs(parts, Folded(tensors)(batch["task_ids"]), batch)
    assert torch.equal(folded, method_outputs(parts))


@pytest.mark.parametrize("method,extra", [("structured", ("method.prompt_init=generator",)), ("hyperprompt", ()),
                                          ("prompt_tuning", ("method.per_task=true",))])
def test_a_mixture_folds_one_prompt_per_task(method, extra, tmp_path):
    parts = parts_for("bert", method, tmp_path, "method.num_virtual_tokens=4", *extra)
    parts.method = methods.build(parts.cfg.method, parts.backbone.dims(), [["negative", "positive"], ["no", "yes"]])
    parts.tasks = parts.tasks * 2  # two task ids; the rows' task ids come from the batch below
    parts.save_prompt(tmp_path / "prompt.safetensors", step=1)
    tensors, _ = files.read_tensors(tmp_path / FOLDED)
    assert all(t.shape[0] == 2 for t in tensors.values())
    ids = torch.tensor([0, 1] * 8)
    with torch.no_grad():
        want = method_outputs(parts, ids)
        got = outputs(parts, Folded(tensors)(ids))
    assert torch.equal(got, want)
    assert (method_outputs(parts, torch.zeros(16, dtype=torch.long)) - want).abs().max() > 1e-4  # ids matter


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_describe_counts_what_the_run_trains_and_says_where_it_goes(family, method, tmp_path):
    cfg = tiny_config(family, method, tmp_path=tmp_path)
    s = describe.summary(cfg)
    parts = parts_for(family, method, tmp_path)
    assert s["trainable_params"] == parts.parameter_counts()["trainable_params"]
    assert s["body_params"] == sum(p.numel() for p in parts.backbone.model.parameters())
    assert s["share_of_backbone"] == pytest.approx(s["trainable_params"] / s["body_params"])
    prompt = parts.method(torch.zeros(1, dtype=torch.long))
    text = " | ".join(s["injects"])
    assert ("input embeddings" in text) == (prompt.embeds is not None)
    assert ("self-attention" in text) == (prompt.keys_values is not None)
    assert ("decoder self-attention" in text) == (prompt.decoder_keys_values is not None)
    assert ("whole body trains" in text) == (method == "model_tuning")
    if prompt.keys_values is not None:
        p, layers = prompt.keys_values[0][0].shape[2], len(prompt.keys_values)
        assert f"{p} keys and {p} values in each of {layers} layers" in text


def test_describe_prints_the_summary_as_comments_after_the_config(capsys):
    assert main(["describe", "method=hyperprompt", "model=tiny-t5", "method.stacks=encoder"]) == 0
    out = capsys.readouterr().out
    assert OmegaConf.create(out).method.variant == "global"  # still one YAML document
    notes = [line for line in out.splitlines() if line.startswith("# ")]
    assert any(line.startswith("# trainable parameters: ") and "% of the backbone" in line for line in notes)
    assert any("encoder self-attention: 16 keys" in line for line in notes)
    assert not any("decoder self-attention" in line for line in notes)
