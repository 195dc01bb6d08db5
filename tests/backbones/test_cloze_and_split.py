"""P-Tuning's two BERT-family placements: the cloze head (``model.head=mlm``: the frozen MLM head's logits of
the label words at a [MASK]) and split prompts (``method.split``: tokens before and after the input)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM

from ptune import backbones, methods, run, tasks
from ptune.config import METHOD_CONFIGS, load
from ptune.errors import ConfigError, ModelError
from ptune.methods.base import Prompt
from ptune.tasks.collate import featurize
from tests.conftest import REPO, SHARED, sst2_examples, tiny_config
from tests.methods.common import batch16, train_until_halved
from tests.tasks.conftest import root_for


def parts_for(*extra, method="p_tuning", tmp_path=None):
    cfg = tiny_config("bert", method, "model.dropout=0.0", "method.num_virtual_tokens=6", *extra, tmp_path=tmp_path)
    ex = sst2_examples()
    return run.build(cfg, examples={"train": ex, "eval": ex})


def test_cloze_rows_hold_one_mask_before_the_final_separator_within_max_length():
    cfg = tiny_config("bert", "p_tuning", "model.head=mlm")
    backbone = backbones.load(cfg.model, [tasks.get("rte")])
    tok = backbone.tokenizer
    rte = tasks.get("rte")
    long = "word " * 200
    rows = [rte.example({"sentence1": a, "sentence2": b, "label": 0, "idx": i})
            for i, (a, b) in enumerate([("a cat sat", "a cat"), (long, "short"), ("short", long)])]
    split = featurize(rte, 0, rows, tok, "bert", cfg.model.max_length, cloze=True)
    for f in split.features:
        ids, types = f["input_ids"][0], f["token_type_ids"][0]
        assert ids.count(tok.mask_token_id) == 1 and ids[-2] == tok.mask_token_id and ids[-1] == tok.sep_token_id
        assert len(ids) == len(types) <= cfg.model.max_length and f["length"] == len(ids)
        assert types[-2] == types[-1] == 1  # the mask belongs to the second segment


def mlm_reference(parts, batch, soft: torch.Tensor | None) -> torch.Tensor:
    """Hugging Face's own BertForMaskedLM on ptune's weights, soft tokens before [CLS]: label-word logits."""
    bb = parts.backbone
    ref = AutoModelForMaskedLM.from_config(bb.model.config)
    ref.bert.load_state_dict(bb.model.state_dict())
    ref.cls.load_state_dict(bb.mlm.state_dict())
    ref.eval()
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    emb = ref.get_input_embeddings()(ids)
    p = 0 if soft is None else soft.shape[1]
    if soft is not None:
        emb = torch.cat([soft, emb], 1)
        mask = torch.cat([mask.new_ones(len(ids), p), mask], 1)
        types = torch.cat([types.new_zeros(len(ids), p), types], 1)
    with torch.no_grad():
        logits = ref(inputs_embeds=emb, attention_mask=mask, token_type_ids=types).logits
    pos = (ids == bb.tokenizer.mask_token_id).int().argmax(1) + p
    return logits[torch.arange(len(ids)), pos][:, bb.word_ids["sst2"]]


def test_cloze_scores_are_the_mlm_head_s_label_word_logits_at_the_mask():
    parts = parts_for("model.head=mlm")
    bb = parts.backbone
    assert not bb.heads and all(not p.requires_grad for p in bb.mlm.parameters())
    tok = bb.tokenizer
    assert tok.convert_ids_to_tokens(bb.word_ids["sst2"].tolist()) == ["negative", "positive"]
    batch = batch16(parts)
    parts.method.eval(), bb.eval()
    with torch.no_grad():
        soft = parts.method(batch["task_ids"]).embeds
        got = bb(batch, Prompt(soft)).scores
        plain = bb(batch, Prompt()).scores
    assert torch.allclose(got, mlm_reference(parts, batch, soft), atol=1e-5)
    assert torch.allclose(plain, mlm_reference(parts, batch, None), atol=1e-5)


def test_p_tuning_in_cloze_form_learns_16_examples_with_only_its_encoder():
    parts = parts_for("model.head=mlm", "method.encoder=mlp", "optimizer.lr=5e-3", "optimizer.scheduler=constant",
                      "optimizer.warmup_ratio=0")
    assert {n.split(".")[0] for n, p in parts.backbone.named_parameters() if p.requires_grad} == set()
    before, after, steps = train_until_halved(parts, 80)
    assert after < before / 2, (before, after, steps)


@pytest.mark.parametrize("head", ["classifier", "mlm"])
def test_split_prompts_go_before_the_input_and_after_it_in_every_padded_row(head):
    parts = parts_for(f"model.head={head}", "method.split=2")
    bb = parts.backbone
    bb.eval(), parts.method.eval()
    batch = batch16(parts)
    with torch.no_grad():
        prompt = parts.method(batch["task_ids"])
        assert prompt.split == 2
        batched = bb(batch, prompt).scores
        soft = prompt.embeds[0]
        for row in range(len(batch["input_ids"])):
            n = int(batch["attention_mask"][row].sum())
            ids = batch["input_ids"][row, :n]
            types = batch["token_type_ids"][row, :n]
            at = int((ids == bb.tokenizer.mask_token_id).int().argmax()) if head == "mlm" else n - 1
            emb = bb.model.get_input_embeddings()(ids)
            by_hand = torch.cat([soft[:2], emb[:at], soft[2:], emb[at:]])[None]
            tt = torch.cat([types.new_zeros(2), types[:at], types[at:at + 1].expand(4), types[at:]])[None]
            hidden = bb.model(inputs_embeds=by_hand, token_type_ids=tt).last_hidden_state
            if head == "mlm":
                want = bb.mlm(hidden[0, at + 6]).float()[bb.word_ids["sst2"]]
            else:
                pooled = bb.model.pooler(hidden) if bb.model.pooler is not None else hidden[:, 0]
                want = bb.heads["sst2"](pooled)[0]
            assert torch.allclose(batched[row], want, atol=1e-5), row


def test_split_zero_and_full_match_the_plain_placements():
    full = parts_for("method.split=6")
    plain = parts_for()
    batch = batch16(full)
    with torch.no_grad():
        full.method.eval(), full.backbone.eval()
        soft = full.method(batch["task_ids"]).embeds
        before = full.backbone(batch, Prompt(soft, split=6)).scores
        assert torch.equal(before, full.backbone(batch, Prompt(soft)).scores)
        after = full.backbone(batch, Prompt(soft, split=0)).scores
        assert not torch.allclose(after, before)
    assert plain.method.cfg.split is None


def test_cloze_and_split_refusals_name_the_value_and_the_fix():
    with pytest.raises(ConfigError, match="model.head=mlm is for BERT-family models"):
        load(["model=tiny-t5", "model.head=mlm"])
    with pytest.raises(ConfigError, match="method.split=3 is for BERT-family"):
        load(["model=tiny-t5", "method=p_tuning", "method.split=3"])
    with pytest.raises(ConfigError, match=r"needs classification tasks; not: stsb \(regression\)"):
        load(["model=tiny-bert", "model.head=mlm", "task=[rte,stsb]"])
    with pytest.raises(ConfigError, match="method.split=9 must be in"):
        load(["method=p_tuning", "method.num_virtual_tokens=8", "method.split=9"])
    with pytest.raises(ConfigError, match="model.head='cls' is not valid"):
        load(["model.head=cls"])


@pytest.mark.skipif(not (SHARED / "models" / "hub").is_dir(), reason="needs ../shared/models")
def test_a_checkpoint_without_an_mlm_head_is_refused_in_one_line():
    cfg = load(["model=minilm", "model.head=mlm", "method=p_tuning"])
    with pytest.raises(ModelError, match="has no masked-LM head .*cls.predictions"):
        backbones.load(cfg.model, [tasks.get("sst2")])


def test_folded_cloze_split_run_scores_as_the_method(tmp_path):
    from ptune import files
    from ptune.methods.base import Folded
    from tests.methods.common import method_outputs, outputs

    parts = parts_for("model.head=mlm", "method.split=4", tmp_path=tmp_path)
    parts.save_prompt(tmp_path / "prompt.safetensors", step=1)
    tensors, meta = files.read_tensors(tmp_path / "folded.safetensors")
    assert meta["split"] == "4"
    batch = batch16(parts)
    got = outputs(parts, Folded(tensors, int(meta["split"]))(batch["task_ids"]), batch)
    assert torch.equal(got, method_outputs(parts))


def test_the_cli_trains_and_evaluates_p_tuning_in_cloze_form_with_a_split(tmp_path):
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "ptune.cli"]
    train = subprocess.run([*cli, "train", "method=p_tuning", "model=tiny-bert", "model.head=mlm", "method.split=10",
                            "task=rte", f"data.root={root_for(tasks.get('rte'))}", "trainer.max_steps=4",
                            "trainer.eval_every=4", "trainer.progress=false", f"run_dir={run_dir}"],
                           capture_output=True, text=True, cwd=REPO, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    score = subprocess.run([*cli, "eval", f"run={run_dir}"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert score.returncode == 0, score.stderr[-2000:]
    import json

    out = json.loads(score.stdout.strip().splitlines()[-1])
    assert out["metrics"]["accuracy"] == out["stored"]["accuracy"]
    assert METHOD_CONFIGS["p_tuning"]().split is None and "p_tuning" in methods.METHODS
