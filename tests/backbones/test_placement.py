"""Prompt placement: the T5 encoder really sees its prefix (PEFT's does not), masks cover prompts,
the backbone stays frozen, and rank scoring equals scoring each candidate on its own."""

from __future__ import annotations

import torch

from ptune import backbones, methods, tasks
from ptune.methods.base import Prompt
from tests.conftest import tiny_config


def setup(family: str, method: str, **method_overrides):
    extra = [f"method.{k}={v}" for k, v in method_overrides.items()]
    cfg = tiny_config(family, method, *extra)
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


def test_t5_prefix_attention_matches_explicit_keys_values():
    """The hook puts the prefix keys/values in front of the input's: check layer 0 by hand."""
    bb, m = setup("t5", "p_tuning_v2", prefix_dropout=0.0)
    ids = torch.randint(10, 3000, (1, 5))
    prompt = m(torch.zeros(1, dtype=torch.long))
    attn = bb.model.encoder.block[0].layer[0].SelfAttention
    seen = {}

    def grab(mod, args, kwargs, out):
        seen["kv"] = kwargs["past_key_values"]

    h = attn.register_forward_hook(grab, with_kwargs=True)
    bb.encode(t5_batch(ids, torch.ones_like(ids)), prompt)
    h.remove()
    keys = seen["kv"].layers[0].keys
    assert keys.shape[2] == 5 + prompt.prefix_length
    assert torch.equal(keys[:, :, : prompt.prefix_length], prompt.keys_values[0][0])


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
