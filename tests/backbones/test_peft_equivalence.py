"""With the same prompt parameters, ptune's logits equal Hugging Face PEFT's (within 1e-5).

On BERT-family models ptune, like PEFT, puts soft tokens before [CLS] by default
(``model.prompt_position=start``) and reproduces PEFT exactly. The option ``after_cls`` keeps [CLS] first
(the pooled first token is then [CLS], not a soft token): a deliberate difference, pinned by the last test.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import BertForSequenceClassification

from ptune import backbones, methods, tasks
from tests.conftest import tiny_config
from tests.peft_compat import peft_reference

P = 5


def build(family: str, method: str, *extra: str):
    cfg = tiny_config(family, method, f"method.num_virtual_tokens={P}", *extra)
    bb = backbones.load(cfg.model, [tasks.get("sst2")])
    m = methods.build(cfg.method, bb.dims(), [["negative", "positive"]])
    bb.eval(), m.eval()
    return bb, m


def inputs():
    torch.manual_seed(1)
    ids = torch.randint(1000, 3000, (4, 8))
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    return ids, mask


def stock(model, attn: str):
    """A copy of the frozen model on transformers' own attention kernel, for PEFT to wrap."""
    model = copy.deepcopy(model)
    model.set_attn_implementation(attn)
    return model


def bert_reference(bb, attn: str) -> BertForSequenceClassification:
    config = copy.deepcopy(bb.model.config)
    config._attn_implementation = attn
    hf = BertForSequenceClassification(config)
    hf.bert.load_state_dict(bb.model.state_dict())
    hf.classifier.load_state_dict(bb.heads["sst2"].classifier.state_dict())
    return hf


def bert_batch(ids, mask):
    return {"task": "sst2", "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prompt_tuning_on_t5_matches_peft(attn):
    bb, m = build("t5", "prompt_tuning", f"model.attn_implementation={attn}")
    peft = get_peft_model(stock(bb.model, attn), PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=P)).eval()
    # PEFT keeps one copy of the prompt per transformer submodule; the encoder uses the first
    peft.prompt_encoder["default"].embedding.weight.data.copy_(m.prompt.data.repeat(2, 1))
    ids, mask = inputs()
    labels = torch.tensor([[1465, 1], [2841, 1], [1465, 1], [2841, 1]])
    ref = peft_reference(lambda: peft(input_ids=ids, attention_mask=mask, labels=labels).logits)
    prompt = m(torch.zeros(4, dtype=torch.long))
    enc, emask = bb.encode({"input_ids": ids, "attention_mask": mask}, prompt)
    ours = bb.decode(enc, emask, labels, prompt, 4)
    assert ref.shape == ours.shape
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prompt_tuning_on_bert_matches_peft_with_start_placement(attn):
    bb, m = build("bert", "prompt_tuning", "model.prompt_position=start", f"model.attn_implementation={attn}")
    peft = get_peft_model(bert_reference(bb, attn), PromptTuningConfig(
        task_type=TaskType.SEQ_CLS, num_virtual_tokens=P)).eval()
    peft.prompt_encoder["default"].embedding.weight.data.copy_(m.prompt.data)
    ids, mask = inputs()
    ref = peft_reference(lambda: peft(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits)
    ours = bb(bert_batch(ids, mask), m(torch.zeros(4, dtype=torch.long))).scores
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["p_tuning_v2", "prefix_tuning"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefix_tuning_on_bert_matches_peft(method, attn):
    bb, m = build("bert", method, f"model.attn_implementation={attn}", "method.prefix_hidden_size=16")
    reparam = method == "prefix_tuning"
    peft = get_peft_model(bert_reference(bb, attn), PrefixTuningConfig(
        task_type=TaskType.SEQ_CLS, num_virtual_tokens=P, prefix_projection=reparam,
        encoder_hidden_size=16)).eval()
    enc = peft.prompt_encoder["default"]
    enc.embedding.load_state_dict(m.encoder.embedding.state_dict())
    if reparam:
        enc.transform.load_state_dict(m.encoder.transform.state_dict())
    ids, mask = inputs()
    ref = peft_reference(lambda: peft(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits)
    ours = bb(bert_batch(ids, mask), m(torch.zeros(4, dtype=torch.long))).scores
    assert (ours - ref).abs().max() < 1e-5


def test_after_cls_placement_differs_from_peft_and_keeps_cls_first():
    bb, m = build("bert", "prompt_tuning", "model.prompt_position=after_cls")
    peft = get_peft_model(bert_reference(bb, "sdpa"), PromptTuningConfig(
        task_type=TaskType.SEQ_CLS, num_virtual_tokens=P)).eval()
    peft.prompt_encoder["default"].embedding.weight.data.copy_(m.prompt.data)
    ids, mask = inputs()
    ids[:, 0] = 101
    ref = peft_reference(lambda: peft(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits)
    seen = {}
    h = bb.model.embeddings.register_forward_hook(lambda mod, args, kw, out: seen.update(kw), with_kwargs=True)
    ours = bb(bert_batch(ids, mask), m(torch.zeros(4, dtype=torch.long))).scores
    h.remove()
    assert (ours - ref).abs().max() > 1e-4  # the deliberate difference
    cls = bb.model.get_input_embeddings().weight[101]
    assert torch.equal(seen["inputs_embeds"][:, 0], cls.expand(4, -1))  # [CLS] still first
    assert torch.equal(seen["inputs_embeds"][:, 1 : 1 + P], m.prompt.expand(4, -1, -1))
