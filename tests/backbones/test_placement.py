"""Prompt placement: the T5 encoder really sees its prefix (PEFT's does not), masks cover prompts,
the backbone stays frozen, and rank scoring equals scoring each candidate on its own."""

from __future__ import annotations

import pytest
import torch

from ptune import backbones, methods, tasks
from ptune.methods.base import Prompt
from tests.conftest import tiny_config


def setup(family: str, method: str, *overrides: str, **method_overrides):
    extra = [f"method.{k}={v}" for k, v in method_overrides.items()]
    cfg = tiny_config(family, method, *overrides, *extra)
    bb = backbones.load(cfg.model, [tasks.get("sst2")])
    m = methods.build(cfg.method, bb.dims(), [["negative", "positive"]])
    bb.eval(), m.eval()
    return bb, m


def t5_batch(ids: torch.Tensor, mask: torch.Tensor) -> dict:
    cands = torch.tensor([[2841, 1], [1465, 1]]).unsqueeze(0).expand(len(ids), -1, -1)
    return {"task": "sst2", "input_ids": ids, "attention_mask": mask, "cand_ids": cands,
            "choice_mask": torch.ones(len(ids), 2, dtype=torch.bool), "labels": cands[:, 1]}


def padded_inputs(pad_id: int = 0):
    torch.manual_seed(0)
    ids = torch.randint(10, 3000, (3, 9))
    mask = torch.ones_like(ids)
    ids[0, 6:], mask[0, 6:] = pad_id, 0
    return ids, mask


def test_t5_encoder_outputs_change_with_the_prefix():
    bb, m = setup("t5", "p_tuning_v2", prefix_dropout=0.0)
    ids, mask = padded_inputs()
    batch = t5_batch(ids, mask)
    prompt = m(torch.zeros(3, dtype=torch.long))
    plain, _ = bb.encode(batch, Prompt())
    prefixed, _ = bb.encode(batch, prompt)
    assert (plain - prefixed).abs().max() > 1e-3
    # only the encoder prefix, no decoder prefix: scores still move (PEFT's T5 prefix cannot do this)
    enc_only = Prompt(keys_values=prompt.keys_values)
    assert not torch.allclose(bb(batch, enc_only).scores, bb(batch, Prompt()).scores)


def test_t5_encoder_prefix_mask_covers_prefix_and_padding():
    """A padded row with a prefix gives the same encoder states as the same row unpadded."""
    bb, m = setup("t5", "p_tuning_v2", prefix_dropout=0.0)
    ids, mask = padded_inputs()
    full, _ = bb.encode(t5_batch(ids, mask), m(torch.zeros(3, dtype=torch.long)))
    alone, _ = bb.encode(t5_batch(ids[:1, :6], mask[:1, :6]), m(torch.zeros(1, dtype=torch.long)))
    assert torch.allclose(full[0, :6], alone[0], atol=1e-5)


def capture(module):
    """Record a module's hidden-state input and output on its next call."""
    seen = {}

    def grab(mod, args, kwargs, out):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["out"] = out[0]

    return seen, module.register_forward_hook(grab, with_kwargs=True)


def t5_reference(attn, hidden, pk, pv, causal: bool):
    """T5 self-attention over [prefix; input] written out: keys/values prepended, the queries at
    positions P.. for the relative position bias, the prefix always attended."""
    b, n, _ = hidden.shape
    heads, d, p = attn.n_heads, attn.key_value_proj_dim, pk.shape[2]

    def split(x):
        return x.view(b, n, heads, d).transpose(1, 2)

    q, k, v = split(attn.q(hidden)), split(attn.k(hidden)), split(attn.v(hidden))
    k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
    scores = q @ k.transpose(2, 3) + attn.compute_bias(n, p + n, past_seen_tokens=p)
    if causal:
        allowed = torch.ones(n, p + n, dtype=torch.bool).tril(p)
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, heads * d)
    return attn.o(out)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_t5_prefix_attention_matches_explicit_keys_values(attn):
    """Layer 0 of the encoder and of the decoder equal attention over [prefix keys; input keys] by hand."""
    bb, m = setup("t5", "p_tuning_v2", f"model.attn_implementation={attn}", prefix_dropout=0.0)
    ids = torch.randint(10, 3000, (2, 5))
    prompt = m(torch.zeros(2, dtype=torch.long))
    batch = t5_batch(ids, torch.ones_like(ids))
    for stack, kv, causal in (("encoder", prompt.keys_values, False), ("decoder", prompt.decoder_keys_values, True)):
        attn = bb.self_attention[stack][0]
        seen, hook = capture(attn)
        bb(batch, prompt, score=False)
        hook.remove()
        ref = t5_reference(attn, seen["hidden"], *kv[0], causal)
        assert (seen["out"] - ref).abs().max() < 1e-5, stack


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_prefix_attention_matches_explicit_keys_values(attn):
    bb, m = setup("bert", "p_tuning_v2", f"model.attn_implementation={attn}", prefix_dropout=0.0)
    ids, mask = padded_inputs()
    prompt = m(torch.zeros(3, dtype=torch.long))
    attn = bb.self_attention[0]
    seen, hook = capture(attn)
    bb({"task": "sst2", "input_ids": ids, "attention_mask": mask}, prompt)
    hook.remove()
    h = seen["hidden"]
    b, n, _ = h.shape
    heads, d = attn.num_attention_heads, attn.attention_head_size

    def split(x):
        return x.view(b, n, heads, d).transpose(1, 2)

    pk, pv = prompt.keys_values[0]
    k = torch.cat([pk, split(attn.key(h))], 2)
    v = torch.cat([pv, split(attn.value(h))], 2)
    scores = split(attn.query(h)) @ k.transpose(2, 3) * d**-0.5
    allowed = torch.cat([torch.ones(b, pk.shape[2], dtype=torch.bool), mask.bool()], 1)
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, heads * d)
    assert (seen["out"] - ref).abs().max() < 1e-5


def test_bert_mask_covers_soft_tokens_and_prefix(family="bert"):
    for method in ("prompt_tuning", "p_tuning_v2"):
        bb, m = setup("bert", method, **({"prefix_dropout": 0.0} if method != "prompt_tuning" else {}))
        ids, mask = padded_inputs(pad_id=0)
        ids[:, 0] = 101
        tt = torch.zeros_like(ids)
        full = bb({"task": "sst2", "input_ids": ids, "attention_mask": mask, "token_type_ids": tt},
                  m(torch.zeros(3, dtype=torch.long))).scores
        one = bb({"task": "sst2", "input_ids": ids[:1, :6], "attention_mask": mask[:1, :6],
                  "token_type_ids": tt[:1, :6]}, m(torch.zeros(1, dtype=torch.long))).scores
        assert torch.allclose(full[0], one[0], atol=1e-5), method


def test_rank_scores_equal_per_candidate_teacher_forced_logprob():
    bb, m = setup("t5", "prompt_tuning")
    ids, mask = padded_inputs()
    batch = t5_batch(ids, mask)
    prompt = m(torch.zeros(3, dtype=torch.long))
    scores = bb(batch, prompt).scores
    for c in range(2):
        one = dict(batch, labels=batch["cand_ids"][:, c])
        enc, emask = bb.encode(one, prompt)
        logits = bb.decode(enc, emask, one["labels"], prompt, 3)
        ref = logits.log_softmax(-1).gather(-1, one["labels"].unsqueeze(-1)).squeeze(-1).sum(-1)
        assert torch.allclose(scores[:, c], ref, atol=1e-4)


def test_backbone_is_frozen_and_gets_no_gradients(family):
    bb, m = setup(family, "p_tuning_v2")
    assert not any(p.requires_grad for p in bb.model.parameters())
    ids, mask = padded_inputs()
    batch = t5_batch(ids, mask) if family == "t5" else {
        "task": "sst2", "input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}
    bb.train(), m.train()
    bb(batch, m(torch.zeros(3, dtype=torch.long)), score=False).loss.backward()
    assert all(p.grad is None for p in bb.model.parameters())
    assert all(p.grad is not None for p in m.parameters())
