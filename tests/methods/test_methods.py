"""Method seam: registry, prompt shapes, parameter counts (the papers' formulas), initialisations."""

from __future__ import annotations

import pytest
import torch

from ptune import methods
from ptune.config import METHOD_CONFIGS
from ptune.methods.base import BackboneDims
from ptune.methods.prompt_tuning import PromptTuningConfig


def dims(decoder_layers: int = 0) -> BackboneDims:
    vocab = torch.randn(100, 16)
    return BackboneDims(
        hidden_size=16, num_layers=3, num_heads=4, head_dim=5, decoder_layers=decoder_layers,
        word_embeddings=vocab, tokenize=lambda text: [len(w) % 100 for w in text.split()],
        common_token_ids=torch.arange(10, 60),
    )


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(set(methods.METHODS) - {"model_tuning"}))  # no prompt: test_model_tuning.py
@pytest.mark.parametrize("decoder_layers", [0, 2])
def test_every_method_gives_a_prompt_of_the_right_shape(name, decoder_layers):
    cfg = METHOD_CONFIGS[name](num_virtual_tokens=7)
    m = methods.build(cfg, dims(decoder_layers), [["negative", "positive"]])
    p = m(torch.zeros(3, dtype=torch.long))
    if p.embeds is not None:
        assert p.embeds.shape == (3, 7, 16)
    if p.keys_values is not None:
        assert len(p.keys_values) == 3
        assert all(k.shape == v.shape == (3, 4, 7, 5) for k, v in p.keys_values)
        assert (p.decoder_keys_values is None) == (decoder_layers == 0)
        if decoder_layers:
            assert len(p.decoder_keys_values) == decoder_layers
    assert p.embeds is not None or p.keys_values is not None
    assert count(m) > 0


def test_model_tuning_places_no_prompt_and_has_no_parameters_of_its_own():
    m = methods.build(METHOD_CONFIGS["model_tuning"](), dims(2), [["negative", "positive"]])
    p = m(torch.zeros(3, dtype=torch.long))
    assert (p.embeds, p.keys_values, p.decoder_keys_values) == (None, None, None) and count(m) == 0


def test_parameter_counts_follow_the_papers():
    d = dims()
    pt = methods.build(PromptTuningConfig(num_virtual_tokens=7), d, [[]])
    assert count(pt) == 7 * 16  # P * hidden
    v2 = methods.build(METHOD_CONFIGS["p_tuning_v2"](num_virtual_tokens=7), d, [[]])
    assert count(v2) == 7 * 3 * 2 * 4 * 5  # P * L * 2 * heads * head_dim
    pre = methods.build(METHOD_CONFIGS["prefix_tuning"](num_virtual_tokens=7, prefix_hidden_size=8), d, [[]])
    out = 3 * 2 * 4 * 5
    assert count(pre) == 7 * 16 + 16 * 8 + 8 + 8 * out + out  # embedding + MLP


def test_keys_and_values_use_peft_layout():
    """Slot 2l of the flat prefix is layer l's key, 2l+1 its value (PEFT / P-Tuning v2 layout)."""
    d = dims()
    m = methods.build(METHOD_CONFIGS["p_tuning_v2"](num_virtual_tokens=2, prefix_dropout=0.0), d, [[]])
    flat = m.encoder.embedding.weight  # (P, L*2*H*D)
    p = m(torch.zeros(1, dtype=torch.long))
    per = flat.view(2, 3 * 2, 4, 5)
    assert torch.equal(p.keys_values[1][0][0], per[:, 2].permute(1, 0, 2))
    assert torch.equal(p.keys_values[1][1][0], per[:, 3].permute(1, 0, 2))


def test_random_uniform_init_is_in_range():
    m = methods.build(PromptTuningConfig(num_virtual_tokens=50, init="random_uniform"), dims(), [[]])
    assert m.prompt.min() >= -0.5 and m.prompt.max() <= 0.5 and m.prompt.std() > 0.2


def test_random_normal_init_is_peft_s_standard_normal():
    m = methods.build(PromptTuningConfig(num_virtual_tokens=50, init="random_normal"), dims(), [[]])
    assert abs(m.prompt.std().item() - 1) < 0.1 and abs(m.prompt.mean().item()) < 0.1
    assert m.prompt.abs().max() > 0.5  # not the uniform one


def test_vocab_sample_init_draws_from_common_tokens():
    d = dims()
    m = methods.build(PromptTuningConfig(num_virtual_tokens=20, init="vocab_sample"), d, [[]])
    common = d.word_embeddings[d.common_token_ids]
    for row in m.prompt:
        assert (common == row).all(-1).any()


def test_class_label_init_puts_each_label_embedding_first_then_vocab():
    d = dims()
    cfg = PromptTuningConfig(num_virtual_tokens=5, init="class_labels")
    m = methods.build(cfg, d, [["bad", "very good"]])
    emb = d.word_embeddings
    assert torch.allclose(m.prompt[0], emb[3])  # "bad" -> id 3
    assert torch.allclose(m.prompt[1], emb[[4, 4]].mean(0))  # "very good" -> ids 4, 4, averaged
    common = emb[d.common_token_ids]
    assert all((common == row).all(-1).any() for row in m.prompt[2:])


def test_text_init_repeats_the_text_embeddings():
    d = dims()
    m = methods.build(PromptTuningConfig(num_virtual_tokens=5, init="text", init_text="ab cde"), d, [[]])
    emb = d.word_embeddings
    assert torch.equal(m.prompt, emb[[2, 3, 2, 3, 2]])


def test_prompt_is_computed_once_per_batch_and_shared():
    m = methods.build(METHOD_CONFIGS["prefix_tuning"](num_virtual_tokens=3), dims(), [[]])
    calls = []
    m.encoder.transform.register_forward_hook(lambda mod, i, o: calls.append(i[0].shape))
    m(torch.zeros(64, dtype=torch.long))
    assert calls == [torch.Size([3, 16])]  # the MLP ran once on P rows, not on 64 * P


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning_v2", "prefix_tuning"])
def test_per_task_keeps_one_prompt_per_task_and_routes_rows_by_task_id(name):
    extra = {} if name == "prompt_tuning" else {"prefix_dropout": 0.0}
    shared = methods.build(METHOD_CONFIGS[name](num_virtual_tokens=3, **extra), dims(2), [["a"], ["b"]])
    per = methods.build(METHOD_CONFIGS[name](num_virtual_tokens=3, per_task=True, **extra), dims(2), [["a"], ["b"]])
    assert count(per) == 2 * count(shared)  # one copy per task
    ids = torch.tensor([1, 0, 1, 0, 0])
    mixed = per(ids)
    for t in (0, 1):
        alone = per.copies[t](torch.zeros(int((ids == t).sum()), dtype=torch.long))
        rows = ids == t
        if mixed.embeds is not None:
            assert torch.equal(mixed.embeds[rows], alone.embeds)
        for (k, v), (ka, va) in zip(mixed.keys_values or [], alone.keys_values or [], strict=True):
            assert torch.equal(k[rows], ka) and torch.equal(v[rows], va)
    a, b = per(torch.tensor([0])), per(torch.tensor([1]))
    first = (lambda p: p.embeds) if a.embeds is not None else (lambda p: p.keys_values[0][0])
    assert not torch.equal(first(a), first(b))  # two tasks, two prompts
    calls = []
    hooks = [c.register_forward_hook(lambda *_: calls.append(1)) for c in per.copies]
    per(torch.tensor([1, 1, 1, 1]))
    for h in hooks:
        h.remove()
    assert len(calls) == 1  # a one-task batch runs one copy, once
