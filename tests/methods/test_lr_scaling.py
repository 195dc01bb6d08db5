"""Per-parameter learning rates (issue 24): generator weights train at lr / fan-in, heads at model.head_lr,
and Structured Prompt Tuning starts from a plain prompt_tuning prompt."""

from __future__ import annotations

import pytest
import torch

from ptune import methods
from ptune.methods.structured import StructuredConfig
from ptune.training.optim import build_optimizer
from tests.methods.common import batch16, parts_for, small_dims


def lr_of(groups: list[dict]) -> dict[int, float]:
    return {id(p): g["lr"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "structured",
                                    "hyperprompt"])
def test_every_trainable_parameter_is_in_exactly_one_group(method, tmp_path):
    parts = parts_for("bert", method, tmp_path)
    groups = parts.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for m in parts.trainable_modules().values() for p in m.parameters() if p.requires_grad}
    assert set(ids) == trainable


def test_generator_weights_train_at_lr_over_fan_in(tmp_path):
    parts = parts_for("bert", "prefix_tuning", tmp_path, "optimizer.lr=0.1")
    lrs = lr_of(parts.param_groups())
    enc = parts.method.encoder
    assert lrs[id(enc.embedding.weight)] == pytest.approx(0.1)  # the prompt's own embedding: fan-in 1
    first, last = enc.transform[0], enc.transform[2]
    assert lrs[id(first.weight)] == pytest.approx(0.1 / first.in_features)
    assert lrs[id(last.weight)] == pytest.approx(0.1 / last.in_features)
    assert lrs[id(first.bias)] == pytest.approx(0.1)


def test_lstm_and_raw_hypernetwork_weights_have_their_fan_in(tmp_path):
    pt = parts_for("bert", "p_tuning", tmp_path, "optimizer.lr=1.0")
    lrs = lr_of(pt.method.param_groups(1.0))
    lstm = pt.method.encoder.lstm_head
    assert lrs[id(lstm.weight_ih_l0)] == pytest.approx(1 / lstm.weight_ih_l0.shape[1])
    assert lrs[id(lstm.weight_hh_l0)] == pytest.approx(1 / lstm.hidden_size)
    hp = parts_for("bert", "hyperprompt", tmp_path, "method.variant=sep", "method.bottleneck=4")
    lrs = lr_of(hp.method.param_groups(1.0))
    assert lrs[id(hp.method.down)] == pytest.approx(1 / hp.backbone.dims().hidden_size)
    assert lrs[id(hp.method.up)] == pytest.approx(1 / 4)
    assert lrs[id(hp.method.global_prompts)] == 1.0


def test_lr_scaling_none_gives_one_group_at_the_run_lr(tmp_path):
    parts = parts_for("bert", "structured", tmp_path, "method.lr_scaling=none", "optimizer.lr=0.02")
    assert {g["lr"] for g in parts.param_groups()} == {0.02}


def test_heads_train_at_model_head_lr(tmp_path):
    parts = parts_for("bert", "p_tuning", tmp_path, "model.head_lr=0.05", "optimizer.lr=1e-3")
    lrs = lr_of(parts.param_groups())
    assert {lrs[id(p)] for p in parts.backbone.heads.parameters()} == {0.05}
    default = parts_for("bert", "p_tuning", tmp_path, "optimizer.lr=1e-3")
    assert {lr_of(default.param_groups())[id(p)] for p in default.backbone.heads.parameters()} == {1e-3}


def test_fan_in_scaling_changes_training_and_each_setting_is_reproducible(tmp_path):
    """The grouping reaches the optimizer: a step with scaled generator weights differs from one without."""
    def one_step(*extra):
        parts = parts_for("bert", "structured", tmp_path, "optimizer.lr=0.1", "optimizer.warmup_ratio=0",
                          "optimizer.scheduler=constant", *extra)
        opt = build_optimizer(parts.cfg.optimizer, parts.param_groups(), parts.cfg.lr, parts.device)
        batch = batch16(parts)
        parts.backbone(batch, parts.method(batch["task_ids"])).loss.backward()
        opt.step()
        return parts.method.prompts(torch.tensor([0])).detach()

    scaled, plain = one_step(), one_step("method.lr_scaling=none")
    assert torch.equal(scaled, one_step())
    assert not torch.allclose(scaled, plain)


@pytest.mark.parametrize("kind", ["linear", "low_rank", "mlp"])
def test_structured_starts_at_a_prompt_tuning_prompt(kind):
    """The paper's point that prompt tuning is its special case, at step 0: every task's generated prompt is
    the same prompt_tuning init (uniform in [-0.5, 0.5] by default; vocabulary rows for vocab_sample)."""
    dims = small_dims()
    m = methods.build(StructuredConfig(num_virtual_tokens=50, hypernetwork=kind), dims, [["a"], ["b"]])
    out = m.prompts(torch.tensor([0, 1]))
    assert torch.equal(out[0], out[1])
    assert out.abs().max() <= 0.5 and abs(out.std().item() - 12 ** -0.5) < 0.02
    vocab = methods.build(StructuredConfig(num_virtual_tokens=4, hypernetwork=kind, prompt_init="vocab_sample"),
                          dims, [["a"]])
    rows = vocab.prompts(torch.tensor([0]))[0]
    emb = dims.word_embeddings.float()
    assert all(bool((emb == row).all(-1).any()) for row in rows)


def test_structured_generator_init_is_still_available():
    torch.manual_seed(0)
    m = methods.build(StructuredConfig(num_virtual_tokens=5, prompt_init="generator"), small_dims(), [["a"], ["b"]])
    out = m.prompts(torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])  # the task embedding matters from the start
