"""HyperPrompt: parameter counts, the paper's equations for each variant, which stacks get hyper-prompts,
per-task hyper-prompts generated once per distinct task, and the hyperfan-in initialisation's scale."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import rms_norm

from ptune import methods
from ptune.errors import ConfigError
from ptune.methods import hyperprompt
from ptune.methods.hyperprompt import HyperPromptConfig
from tests.methods.common import count, small_dims

CFG = dict(num_virtual_tokens=7, bottleneck=3, task_embedding_dim=4, layer_embedding_dim=5,
           embedding_hidden_size=6, layer_task_embedding_dim=2)


def build(variant: str, tasks: int = 2, decoder_layers: int = 2, **kw):
    cfg = HyperPromptConfig(variant=variant, **{**CFG, **kw})
    torch.manual_seed(0)  # the same weights whatever ran before
    return methods.build(cfg, small_dims(decoder_layers), [["a", "b"]] * tasks)


@pytest.mark.parametrize("stacks,decoder_layers,m", [("both", 2, 5), ("both", 0, 3), ("encoder", 2, 3),
                                                      ("decoder", 2, 2)])
@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("variant", ["share", "sep", "global"])
def test_parameter_count_follows_the_docstring(variant, tasks, stacks, decoder_layers, m):
    model = build(variant, tasks, decoder_layers, stacks=stacks)
    t, p, d, a, b = tasks, 7, 16, 4 * 5, 3  # p: the paper's l
    t1, t2, e, tt = 4, 5, 6, 2
    expected = {
        "share": t * p * d + 2 * m * b * (d + a),
        "sep": t * p * d + 2 * t * m * b * (d + a),
        "global": t * p * d + t * t1 + m * t2 + (t1 + t2) * e + e + e * tt + tt + 2 * tt * b * (d + a),
    }[variant]
    assert count(model) == expected


@pytest.mark.parametrize("stacks,enc,dec", [("both", 3, 2), ("encoder", 3, None), ("decoder", None, 2)])
def test_stacks_choose_which_self_attention_layers_get_hyper_prompts(stacks, enc, dec):
    p = build("global", stacks=stacks)(torch.zeros(3, dtype=torch.long))
    for kv, n in ((p.keys_values, enc), (p.decoder_keys_values, dec)):
        if n is None:
            assert kv is None
        else:
            assert len(kv) == n and all(k.shape == v.shape == (3, 4, 7, 5) for k, v in kv)


def test_decoder_only_hyper_prompts_need_a_decoder():
    with pytest.raises(ConfigError, match="no decoder"):
        build("share", decoder_layers=0, stacks="decoder")


def layer_prompts(model, task: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    p = model(torch.tensor([task]))
    return [(k[0], v[0]) for k, v in p.keys_values + p.decoder_keys_values]


def heads(x: torch.Tensor) -> torch.Tensor:
    """(l, heads*head_dim) -> (heads, l, head_dim), as K and V are split."""
    return x.view(x.shape[0], 4, 5).transpose(0, 1)


@pytest.mark.parametrize("variant", ["share", "sep"])
def test_share_and_sep_apply_the_local_hypernetworks_to_the_global_prompt(variant):
    """P^m_{t,k} = U^m_k ReLU(D^m_k P_t), with one set of (D, U) per layer (share) or per task and layer (sep)."""
    model = build(variant)
    for task in (0, 1):
        s = 0 if variant == "share" else task
        for m, (k, v) in enumerate(layer_prompts(model, task)):
            for slot, got in ((2 * m, k), (2 * m + 1, v)):
                want = torch.relu(model.global_prompts[task] @ model.down[s, slot]) @ model.up[s, slot]
                assert torch.allclose(got, heads(want), atol=1e-6)


def test_global_generates_each_task_and_layer_s_local_hypernetworks_from_a_layer_aware_task_embedding():
    """I = h([k_t; z_m]); (D, U) = (W^D I, W^U I) for keys (H_k) and values (H_v)."""
    model = build("global")
    lin1, _, lin2 = model.layer_aware.h.net
    for task in (0, 1):
        for m, (k, v) in enumerate(layer_prompts(model, task)):
            z = torch.cat([model.task_embeddings.weight[task], model.layer_embeddings.weight[m]])
            i = rms_norm(lin2(torch.relu(lin1(z))), (2,))
            for hyper, got in ((model.key_hypernet, k), (model.value_hypernet, v)):
                down, up = (hyper.down.weight @ i).view(16, 3), (hyper.up.weight @ i).view(3, 20)
                want = torch.relu(model.global_prompts[task] @ down) @ up
                assert torch.allclose(got, heads(want), atol=1e-6)


@pytest.mark.parametrize("variant", ["share", "sep", "global"])
def test_two_tasks_get_different_hyper_prompts_and_every_layer_its_own(variant):
    model = build(variant)
    zero, one = layer_prompts(model, 0), layer_prompts(model, 1)
    assert all(not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1]) for a, b in zip(zero, one, strict=True))
    assert not torch.allclose(zero[0][0], zero[1][0])


@pytest.mark.parametrize("variant", ["share", "sep", "global"])
def test_hyper_prompts_are_generated_once_per_distinct_task_in_a_batch(variant, monkeypatch):
    model = build(variant)
    seen = []
    real = hyperprompt.bottleneck
    monkeypatch.setattr(hyperprompt, "bottleneck", lambda x, d, u: seen.append(len(x)) or real(x, d, u))
    if variant == "global":
        model.key_hypernet.register_forward_hook(lambda mod, i, o: seen.append(tuple(i[0].shape[:2])))
    ids = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    mixed = model(ids)
    assert seen == ([(2, 5)] if variant == "global" else []) + [2]  # 2 tasks x 5 layers; 2 prompts, not 8
    per = {t: layer_prompts(model, t) for t in (0, 1)}
    for row, t in enumerate(ids.tolist()):
        for m, (k, v) in enumerate(mixed.keys_values + mixed.decoder_keys_values):
            assert torch.allclose(k[row], per[t][m][0], atol=1e-5) and torch.allclose(v[row], per[t][m][1], atol=1e-5)
    seen.clear()
    model(torch.zeros(32, dtype=torch.long))
    assert seen[-1] == 1


def test_hyperfan_in_init_starts_generated_weights_at_nn_linear_scale():
    """Generated D (d -> b) and U (b -> a) entries have std near 1/sqrt(3 fan_in), a default nn.Linear's."""
    d, b = 64, 16
    dims = small_dims(hidden=d, layers=6, heads=4, head_dim=16)
    model = methods.build(HyperPromptConfig(num_virtual_tokens=4, bottleneck=b), dims, [["a"]] * 4)
    down, up = model.local_weights(torch.arange(4))
    assert down.std().item() == pytest.approx((3 * d) ** -0.5, rel=0.2)
    assert up.std().item() == pytest.approx((3 * b) ** -0.5, rel=0.2)


@pytest.mark.parametrize("key,value", [("variant", "both"), ("stacks", "cross"), ("bottleneck", 0),
                                       ("layer_task_embedding_dim", 0)])
def test_bad_options_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"method.{key}"):
        HyperPromptConfig(**{key: value}).check()
