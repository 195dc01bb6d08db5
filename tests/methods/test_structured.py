"""Structured Prompt Tuning: parameter counts, prompt tuning as the linear special case (single- and
multi-task), per-task prompts generated once per distinct task, and the task-description initialisation."""

from __future__ import annotations

import pytest
import torch

from ptune import methods
from ptune.errors import ConfigError
from ptune.methods.structured import StructuredConfig
from tests.methods.common import count, method_outputs, parts_for, small_dims


@pytest.mark.parametrize("tasks", [1, 2])
@pytest.mark.parametrize("kind", ["linear", "low_rank", "mlp"])
def test_parameter_count_follows_the_docstring(kind, tasks):
    cfg = StructuredConfig(num_virtual_tokens=7, hypernetwork=kind, rank=3, hidden_size=5, task_embedding_dim=4)
    m = methods.build(cfg, small_dims(), [["a", "b"]] * tasks)
    t, e, n, r, h = tasks, 4, 7 * 16, 3, 5
    expected = {"linear": t * e + n * e + n, "low_rank": t * e + r * e + n * r + n,
                "mlp": t * e + e * h + h + h * n + n}[kind]
    assert count(m) == expected


def test_task_embedding_size_defaults_to_the_hidden_size():
    m = methods.build(StructuredConfig(num_virtual_tokens=2), small_dims(), [[]])
    assert m.task_embeddings.weight.shape == (1, 16)


def test_prompt_tuning_is_the_linear_special_case(family, tmp_path):
    """W = 0, c = vec(P): the generated prompt is P for any task embedding, and the backbone's logits equal
    those of a prompt_tuning module holding P (the paper's claim that it subsumes prompt tuning)."""
    pt = parts_for(family, "prompt_tuning", tmp_path, "method.num_virtual_tokens=4")
    sp = parts_for(family, "structured", tmp_path, "method.num_virtual_tokens=4", "method.hypernetwork=linear",
                   "method.task_embedding_dim=3")
    with torch.no_grad():
        sp.method.generator.net.weight.zero_()
        sp.method.generator.net.bias.copy_(pt.method.prompt.flatten())
        sp.backbone.load_state_dict(pt.backbone.state_dict())  # the same BERT head
    assert torch.equal(method_outputs(sp), method_outputs(pt))


def test_multi_task_prompt_tuning_is_the_linear_special_case_with_one_hot_task_embeddings():
    """One-hot task embeddings and W's columns set to each task's prompt: task t gets exactly P_t."""
    prompts = torch.randn(2, 3, 16)
    m = methods.build(StructuredConfig(num_virtual_tokens=3, hypernetwork="linear", task_embedding_dim=2),
                      small_dims(), [["a"], ["b"]])
    with torch.no_grad():
        m.task_embeddings.weight.copy_(torch.eye(2))
        m.generator.net.weight.copy_(prompts.flatten(1).T)
        m.generator.net.bias.zero_()
    out = m(torch.tensor([1, 0, 1])).embeds
    assert torch.allclose(out, prompts[[1, 0, 1]], atol=1e-6)


def test_linear_hypernetwork_can_output_a_given_prompt_from_a_given_task_embedding():
    """W = vec(P) z^T / |z|^2 (no bias) maps the task embedding z onto P."""
    m = methods.build(StructuredConfig(num_virtual_tokens=3, hypernetwork="linear", task_embedding_dim=5),
                      small_dims(), [[]])
    target = torch.randn(3, 16)
    z = m.task_embeddings.weight[0].detach()
    with torch.no_grad():
        m.generator.net.weight.copy_(torch.outer(target.flatten(), z) / z.dot(z))
        m.generator.net.bias.zero_()
    assert torch.allclose(m(torch.zeros(2, dtype=torch.long)).embeds[0], target, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "low_rank", "mlp"])
def test_each_task_gets_its_own_prompt_generated_once_per_batch(kind):
    m = methods.build(StructuredConfig(num_virtual_tokens=3, hypernetwork=kind, prompt_init="generator"), small_dims(),
                      [["a"], ["b"]])
    seen = []
    m.generator.register_forward_hook(lambda mod, i, o: seen.append(i[0].shape[0]))
    mixed = m(torch.tensor([1, 0, 0, 1, 1, 0, 1])).embeds
    assert seen == [2]  # two distinct tasks in the batch: two prompts, not seven
    zero, one = m(torch.zeros(1, dtype=torch.long)).embeds[0], m(torch.ones(1, dtype=torch.long)).embeds[0]
    assert not torch.allclose(zero, one)
    for row, task in zip(mixed, [1, 0, 0, 1, 1, 0, 1], strict=True):
        assert torch.allclose(row, one if task else zero, atol=1e-6)  # batched matmul: last-bit noise
    seen.clear()
    m(torch.zeros(64, dtype=torch.long))
    assert seen == [1]


def test_description_init_is_the_mean_word_embedding_of_each_task_description():
    d = small_dims()
    m = methods.build(StructuredConfig(num_virtual_tokens=2, init="description",
                                       task_descriptions=["is it good", "same or not"]), d, [["a"], ["b"]])
    emb = d.word_embeddings
    assert torch.allclose(m.task_embeddings.weight[0], emb[[2, 2, 4]].mean(0))  # "is it good" -> 2, 2, 4
    assert torch.allclose(m.task_embeddings.weight[1], emb[[4, 2, 3]].mean(0))


def test_description_init_derives_a_description_from_the_label_words():
    d = small_dims()
    m = methods.build(StructuredConfig(num_virtual_tokens=2, init="description"), d, [["bad", "great"]])
    # "bad or great" -> token ids 3, 2, 5
    assert torch.allclose(m.task_embeddings.weight[0], d.word_embeddings[[3, 2, 5]].mean(0))


@pytest.mark.parametrize("cfg,label_words,message", [
    (dict(init="description", task_descriptions=["one"]), [["a"], ["b"]], "has 1 entries"),
    (dict(init="description"), [[]], "no description or label words"),
    (dict(init="description", task_embedding_dim=8), [["a"]], "task_embedding_dim=8"),
])
def test_description_init_mistakes_are_one_line_config_errors(cfg, label_words, message):
    with pytest.raises(ConfigError, match=message):
        methods.build(StructuredConfig(num_virtual_tokens=2, **cfg), small_dims(), label_words)


@pytest.mark.parametrize("key,value", [("hypernetwork", "deep"), ("init", "zeros"), ("rank", 0),
                                       ("task_embedding_dim", 0)])
def test_bad_options_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"method.{key}"):
        StructuredConfig(**{key: value}).check()
