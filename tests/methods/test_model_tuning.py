"""Model tuning (full fine-tuning) and ``model.trainable`` for any method: the body trains in fp32 with its
own optional lr, the checkpoint holds the whole model under its Hugging Face names, and runs resume."""

from __future__ import annotations

import pytest
import torch

from ptune import files, run
from ptune.config import load
from ptune.errors import ConfigError
from ptune.training.loop import fit
from tests.conftest import sst2_examples
from tests.methods.common import batch16, method_outputs, parts_for, train_until_halved


def test_model_tuning_trains_the_body_and_refuses_a_frozen_one():
    assert load(["method=model_tuning"]).model.trainable is True
    assert load(["method=prompt_tuning"]).model.trainable is False
    assert load(["method=prompt_tuning", "model.trainable=true"]).model.trainable is True
    bad = {"model.trainable=false": "model.trainable=false", "method.num_virtual_tokens=5": "num_virtual_tokens=5",
           "method.per_task=true": "per_task"}
    for override, named in bad.items():
        with pytest.raises(ConfigError, match=named):
            load(["method=model_tuning", override])
    with pytest.raises(ConfigError, match="model.lr=0.001 .*frozen"):
        load(["method=prompt_tuning", "model.lr=0.001"])


@pytest.mark.parametrize("method,extra", [("model_tuning", ()), ("prompt_tuning", ("model.trainable=true",)),
                                          ("p_tuning_v2", ("model.trainable=true",))])
def test_gradients_reach_the_body_only_when_it_trains(family, method, extra, tmp_path):
    parts = parts_for(family, method, tmp_path, *extra)
    parts.method.train(), parts.backbone.train()
    batch = batch16(parts)
    parts.backbone(batch, parts.method(batch["task_ids"]), score=False).loss.backward()
    body = dict(parts.backbone.model.named_parameters())
    assert all(p.requires_grad for p in body.values())
    reached = [n for n, p in body.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(reached) > 0.8 * len(body), sorted(set(body) - set(reached))[:5]  # e.g. T5's unused rel. bias rows
    for name, p in parts.method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_count_is_the_body_plus_the_heads_counted_once(family, tmp_path):
    parts = parts_for(family, "model_tuning", tmp_path)
    body = sum(p.numel() for p in parts.backbone.model.parameters())
    heads = sum(p.numel() for p in getattr(parts.backbone, "heads", torch.nn.ModuleDict()).parameters())
    assert sum(p.numel() for p in parts.method.parameters()) == 0
    assert parts.parameter_counts() == {"trainable_params": body + heads, "total_params": body + heads}
    frozen = parts_for(family, "prompt_tuning", tmp_path)
    assert frozen.parameter_counts()["total_params"] == body + heads + 20 * frozen.backbone.dims().hidden_size


def test_model_lr_puts_the_body_in_its_own_optimizer_group(tmp_path):
    parts = parts_for("bert", "prompt_tuning", tmp_path, "model.trainable=true", "model.lr=1e-4", "optimizer.lr=0.1")
    groups = parts.param_groups()
    assert [g["lr"] for g in groups] == [0.1, 0.1, 1e-4]  # the prompt, the head, the body
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in parts.backbone.model.parameters()}
    one = parts_for("bert", "model_tuning", tmp_path).param_groups()
    assert [g["lr"] for g in one] == [5e-5, 5e-5]  # the head, the body


def test_model_tuning_learns_16_examples(family, tmp_path):
    parts = parts_for(family, "model_tuning", tmp_path, "optimizer.lr=1e-3", "optimizer.scheduler=constant",
                      "optimizer.warmup_ratio=0")
    before, after, steps = train_until_halved(parts, 40)
    assert after < before / 2, (before, after, steps)


def test_the_checkpoint_holds_the_whole_model_under_its_own_names_and_loads_back(family, tmp_path):
    parts = parts_for(family, "model_tuning", tmp_path)
    with torch.no_grad():
        for p in parts.backbone.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    want = method_outputs(parts)
    parts.save_prompt(tmp_path / "prompt.safetensors", step=3)
    tensors, _ = files.read_tensors(tmp_path / "prompt.safetensors")
    body = {k[len("body."):]: v for k, v in tensors.items() if k.startswith("body.")}
    assert set(body) == {n for n, _ in parts.backbone.model.named_parameters()}
    missing, unexpected = type(parts.backbone.model)(parts.backbone.model.config).load_state_dict(body, strict=False)
    assert not unexpected and all("embed_tokens" in k or "lm_head" in k for k in missing)  # only tied copies
    assert not (tmp_path / "folded.safetensors").exists()  # no prompt to fold
    fresh = parts_for(family, "model_tuning", tmp_path)
    assert not torch.equal(method_outputs(fresh), want)
    assert fresh.load_prompt(tmp_path / "prompt.safetensors") == 3
    assert torch.equal(method_outputs(fresh), want)


def test_bf16_keeps_a_trainable_body_in_fp32_and_trains_under_autocast(tmp_path):
    parts = parts_for("bert", "model_tuning", tmp_path, "trainer.precision=bf16", "optimizer.lr=1e-3")
    assert {p.dtype for p in parts.backbone.model.parameters()} == {torch.float32}
    before = [p.detach().clone() for p in parts.backbone.model.parameters()]
    fit_parts = parts
    fit_parts.cfg.trainer.max_steps, fit_parts.cfg.trainer.eval_every = 2, 2
    fit(fit_parts)
    after = list(parts.backbone.model.parameters())
    assert all(p.dtype == torch.float32 for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_resumed_model_tuning_run_ends_with_the_same_parameters(tmp_path):
    def parts(where, steps):
        cfg = load(["method=model_tuning", "model=tiny-bert", "task=sst2", "trainer.progress=false",
                    "trainer.batch_size=4", "trainer.eval_every=2", f"trainer.max_steps={steps}",
                    "optimizer.lr=1e-3", "optimizer.scheduler=constant", "optimizer.warmup_ratio=0.0",
                    f"run_dir={where}"])
        ex = sst2_examples()
        return run.build(cfg, examples={"train": ex, "eval": ex})

    straight = parts(tmp_path / "a", 4)
    fit(straight)
    fit(parts(tmp_path / "b", 2))
    resumed = parts(tmp_path / "b", 4)
    fit(resumed)
    for a, b in zip(straight.trainable_parameters(), resumed.trainable_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
