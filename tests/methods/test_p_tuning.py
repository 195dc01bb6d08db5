"""P-Tuning: parameter counts (the module docstring's formulas), one prompt for every task computed once
per batch, and logits equal to Hugging Face PEFT's P-Tuning (PromptEncoder, LSTM and MLP) on T5 and BERT."""

from __future__ import annotations

import pytest
import torch
from peft import PromptEncoderConfig, TaskType, get_peft_model

from ptune import backbones, methods, tasks
from ptune.methods.p_tuning import PTuningConfig
from tests.backbones.test_peft_equivalence import bert_batch, bert_reference, inputs, stock
from tests.conftest import tiny_config
from tests.methods.common import count, small_dims
from tests.peft_compat import peft_reference

P = 5


def lstm_count(p: int, d: int, h: int, layers: int) -> int:
    first = 2 * (4 * h * (d + h) + 8 * h)
    above = (layers - 1) * 2 * (4 * h * (2 * h + h) + 8 * h)
    return p * d + first + above + 2 * h * 2 * h + 2 * h + 2 * h * d + d


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("hidden", [None, 6])
def test_lstm_parameter_count_follows_the_docstring(layers, hidden):
    m = methods.build(PTuningConfig(num_virtual_tokens=7, encoder_hidden_size=hidden, encoder_num_layers=layers),
                      small_dims(), [["a", "b"]])
    h = 8 if hidden is None else hidden  # null: d / 2 per direction (the official code)
    assert m.encoder.lstm_head.hidden_size == h
    assert count(m) == lstm_count(7, 16, h, layers)


@pytest.mark.parametrize("hidden", [None, 6])
def test_mlp_parameter_count_follows_the_docstring(hidden):
    m = methods.build(PTuningConfig(num_virtual_tokens=7, encoder="mlp", encoder_hidden_size=hidden),
                      small_dims(), [[]])
    p, d, h = 7, 16, 16 if hidden is None else hidden  # null: h = d (PEFT's default)
    assert count(m) == p * d + d * h + h + h * h + h + h * d + d


def test_one_prompt_for_every_task_computed_once_per_batch():
    m = methods.build(PTuningConfig(num_virtual_tokens=3), small_dims(), [["a"], ["b"]])
    calls = []
    m.encoder.mlp_head.register_forward_hook(lambda mod, i, o: calls.append(tuple(i[0].shape)))
    p = m(torch.tensor([0, 1, 1, 0, 1]))
    assert calls == [(1, 3, 16)]  # one pass over the P virtual tokens, not one per row or task
    assert all(torch.equal(p.embeds[0], row) for row in p.embeds)


def mean_cosine(tokens: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    return ((unit @ unit.T).sum().item() - len(unit)) / (len(unit) * (len(unit) - 1))


@pytest.mark.parametrize("encoder", ["lstm", "mlp"])
def test_the_residual_start_is_a_plain_prompt_and_the_encoder_still_learns(encoder):
    """residual=true: step 0 gives exactly the trainable embeddings at prompt tuning's uniform init, tokens
    that do not point the same way; a step moves the encoder's layers too (the zeroed last layer first)."""
    torch.manual_seed(0)
    m = methods.build(PTuningConfig(num_virtual_tokens=12, encoder=encoder, residual=True), small_dims(hidden=64),
                      [["a"]])
    tokens = m(torch.zeros(1, dtype=torch.long)).embeds[0]
    assert torch.equal(tokens, m.encoder.embedding.weight)
    assert tokens.abs().max() <= 0.5 and tokens.std() > 0.2  # uniform(-0.5, 0.5), as prompt_tuning's init
    assert abs(mean_cosine(tokens)) < 0.2
    torch.manual_seed(0)
    paper = methods.build(PTuningConfig(num_virtual_tokens=12, encoder=encoder, residual=False),
                          small_dims(hidden=64), [["a"]])
    assert mean_cosine(paper(torch.zeros(1, dtype=torch.long)).embeds[0]) > mean_cosine(tokens) + 0.2
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        m(torch.zeros(1, dtype=torch.long)).embeds.pow(3).sum().backward()
        opt.step()
    last = m.encoder.mlp_head[-1].weight
    assert last.abs().max() > 0 and all(p.grad is not None and p.grad.abs().max() > 0 for p in m.parameters())


def build(family: str, encoder: str, *extra: str):
    cfg = tiny_config(family, "p_tuning", f"method.num_virtual_tokens={P}", f"method.encoder={encoder}",
                      "method.encoder_hidden_size=16", "method.residual=false", *extra)  # PEFT's encoder alone
    bb = backbones.load(cfg.model, [tasks.get("sst2")])
    m = methods.build(cfg.method, bb.dims(), [["negative", "positive"]])
    bb.eval(), m.eval()
    with torch.no_grad():  # away from the initialisation, so the comparison sees every weight
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return bb, m


def peft_config(encoder: str, task_type: TaskType, **kw) -> PromptEncoderConfig:
    return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=P, encoder_hidden_size=16,
                               encoder_reparameterization_type=encoder.upper(), **kw)


def t5_logits(bb, m, ids, mask, labels):
    prompt = m(torch.zeros(len(ids), dtype=torch.long))
    enc, emask = bb.encode({"input_ids": ids, "attention_mask": mask}, prompt)
    return bb.decode(enc, emask, labels, prompt, len(ids))


LABELS = torch.tensor([[1465, 1], [2841, 1], [1465, 1], [2841, 1]])


@pytest.mark.parametrize("encoder", ["lstm", "mlp"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_p_tuning_on_bert_matches_peft(encoder, attn):
    bb, m = build("bert", encoder, f"model.attn_implementation={attn}")
    peft = get_peft_model(bert_reference(bb, attn), peft_config(encoder, TaskType.SEQ_CLS)).eval()
    peft.prompt_encoder["default"].load_state_dict(m.encoder.state_dict())  # same names and shapes
    ids, mask = inputs()
    ref = peft_reference(lambda: peft(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits)
    ours = bb(bert_batch(ids, mask), m(torch.zeros(4, dtype=torch.long))).scores
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("encoder", ["lstm", "mlp"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_p_tuning_on_t5_matches_peft_with_one_prompt_per_model(encoder, attn):
    """PEFT with ``num_transformer_submodules=1``: its encoder reads the same P virtual tokens as ours."""
    bb, m = build("t5", encoder, f"model.attn_implementation={attn}")
    peft = get_peft_model(stock(bb.model, attn), peft_config(encoder, TaskType.SEQ_2_SEQ_LM,
                                                             num_transformer_submodules=1)).eval()
    peft.prompt_encoder["default"].load_state_dict(m.encoder.state_dict())
    ids, mask = inputs()
    ref = peft_reference(lambda: peft(input_ids=ids, attention_mask=mask, labels=LABELS).logits)
    ours = t5_logits(bb, m, ids, mask, LABELS)
    assert ref.shape == ours.shape
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("encoder", ["lstm", "mlp"])
def test_p_tuning_on_t5_against_peft_s_default_two_prompt_copies(encoder):
    """PEFT's default for seq2seq models (``num_transformer_submodules=2``) gives the encoder 2P virtual
    tokens and places only the first P. The MLP encodes tokens one by one, so the logits still match; the
    bidirectional LSTM reads all 2P, so the last P (never placed) change the first P: a pinned difference
    of PEFT's, explained in docs/methods.md. It is exactly the LSTM context: PEFT's own encoder run on P
    tokens gives our prompt."""
    bb, m = build("t5", encoder)
    peft = get_peft_model(stock(bb.model, "sdpa"), peft_config(encoder, TaskType.SEQ_2_SEQ_LM)).eval()
    enc = peft.prompt_encoder["default"]
    state = m.encoder.state_dict()
    state["embedding.weight"] = torch.cat([state["embedding.weight"], torch.randn(P, state["embedding.weight"].shape[1])])
    enc.load_state_dict(state)
    ids, mask = inputs()
    ref = peft_reference(lambda: peft(input_ids=ids, attention_mask=mask, labels=LABELS).logits)
    ours = t5_logits(bb, m, ids, mask, LABELS)
    with torch.no_grad():
        two = enc(torch.arange(2 * P)[None])[:, :P]
        own = enc.mlp_head(enc.lstm_head(enc.embedding.weight[None, :P])[0]) if encoder == "lstm" else enc(
            torch.arange(P)[None])
        mine = m(torch.zeros(1, dtype=torch.long)).embeds
    assert torch.allclose(own, mine, atol=1e-6)
    if encoder == "mlp":
        assert (ours - ref).abs().max() < 1e-5 and torch.allclose(two, mine, atol=1e-6)
    else:
        assert (ours - ref).abs().max() > 1e-4 and not torch.allclose(two, mine, atol=1e-4)
