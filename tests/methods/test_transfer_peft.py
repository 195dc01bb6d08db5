"""method.init_from=<PEFT adapter folder>: an adapter trained by PEFT's own code starts a ptune run that
predicts what PEFT predicts; type, task type, backbone and shape mismatches fail in one line before the
model loads."""

from __future__ import annotations

import json

import pytest
import torch
from peft import (
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)

from ptune import backbones, run, tasks
from ptune.cli import main
from ptune.config import load
from ptune.errors import ConfigError
from ptune.methods import transfer
from tests.backbones.test_peft_equivalence import inputs
from tests.conftest import sst2_examples
from tests.export.conftest import T5_LABELS, P, peft_base, peft_logits, ptune_logits
from tests.peft_compat import peft_reference
from tests.tasks.conftest import root_for

TASK_TYPE = {"bert": TaskType.SEQ_CLS, "t5": TaskType.SEQ_2_SEQ_LM}


def peft_config(kind: str, family: str, projection: bool = False):
    common = {"task_type": TASK_TYPE[family], "num_virtual_tokens": P}
    if kind == "PROMPT_TUNING":
        return PromptTuningConfig(**common)
    if kind == "P_TUNING":
        return PromptEncoderConfig(**common, encoder_hidden_size=16)
    return PrefixTuningConfig(**common, prefix_projection=projection, encoder_hidden_size=16)


def overrides(family: str, method: str, where, *extra: str) -> list[str]:
    return [f"method={method}", f"model=tiny-{family}", "task=sst2", "trainer.progress=false",
            f"method.num_virtual_tokens={P}", f"run_dir={where}", *extra]


def peft_trained(family: str, kind: str, folder, projection: bool = False) -> PeftModel:
    """A few Adam steps of PEFT's own training on the tiny backbone, saved by PEFT; returns it reloaded by PEFT."""
    bb = backbones.load(load(overrides(family, "prompt_tuning", folder)).model, [tasks.get("sst2")])
    model = get_peft_model(peft_base(bb), peft_config(kind, family, projection))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids, mask = inputs()
    labels = T5_LABELS if family == "t5" else torch.tensor([1, 0, 1, 0])
    extra = {} if family == "t5" else {"token_type_ids": torch.zeros_like(ids)}
    for _ in range(3):
        loss = peft_reference(lambda: model(input_ids=ids, attention_mask=mask, labels=labels, **extra).loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(folder))
    return PeftModel.from_pretrained(peft_base(bb), str(folder)).eval()


def started_from(family: str, method: str, folder, where):
    cfg = load(overrides(family, method, where, f"method.init_from={folder}"))
    source = transfer.check(cfg, run.run_metadata(cfg), backbones.sizes)
    parts = run.build(cfg, examples={"train": sst2_examples(), "eval": sst2_examples()})
    transfer.apply(parts.method, cfg, *source)
    heads = transfer.apply_heads(parts.backbone.heads if family == "bert" else {}, source[0])
    return parts, heads, source[1]


IMPORTS = [("bert", "PROMPT_TUNING", "prompt_tuning", False), ("bert", "P_TUNING", "prompt_tuning", False),
           ("bert", "PREFIX_TUNING", "p_tuning_v2", False), ("bert", "PREFIX_TUNING", "p_tuning_v2", True),
           ("t5", "PROMPT_TUNING", "prompt_tuning", False), ("t5", "P_TUNING", "prompt_tuning", False)]


@pytest.mark.parametrize("family,kind,method,projection", IMPORTS,
                         ids=[f"{f}-{k}-{m}{'-projection' * p}" for f, k, m, p in IMPORTS])
def test_a_peft_trained_adapter_starts_a_run_that_predicts_as_peft(family, kind, method, projection, tmp_path):
    reference = peft_trained(family, kind, tmp_path / "adapter", projection)
    parts, heads, meta = started_from(family, method, tmp_path / "adapter", tmp_path / "run")
    ids, mask = inputs()
    ref = peft_logits(reference, family, ids, mask)
    ours = ptune_logits(parts, "sst2", ids, mask)
    assert (ours - ref).abs().max() < 1e-5
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    assert heads == (["sst2"] if family == "bert" else [])
    assert ("imported as a plain prompt" in meta["note"]) == (kind == "P_TUNING")


def test_the_console_says_a_p_tuning_adapter_is_a_plain_prompt(tmp_path, capsys):
    peft_trained("bert", "P_TUNING", tmp_path / "adapter")
    assert main(["train", *overrides("bert", "prompt_tuning", tmp_path / "run", f"method.init_from={tmp_path / 'adapter'}",
                                     f"data.root={root_for(tasks.get('sst2'), 'train')}", "data.train_limit=8",
                                     "data.eval_limit=8", "trainer.max_steps=1", "trainer.eval_every=1")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "PEFT P_TUNING adapter: it keeps only its encoder's output, imported as a plain prompt" in err
    assert "initialised the heads of sst2 from the adapter's classifier" in err


def edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


MISMATCHES = [
    ("PREFIX_TUNING", "prompt_tuning", {}, "a PEFT PREFIX_TUNING adapter, which method=prompt_tuning cannot start "
                                           "from; choose method=p_tuning_v2"),
    ("PREFIX_TUNING", "prefix_tuning", {}, "choose method=p_tuning_v2"),
    ("P_TUNING", "p_tuning", {}, "choose method=prompt_tuning"),
    ("PROMPT_TUNING", "prompt_tuning", {"num_virtual_tokens": P + 1}, f"set method.num_virtual_tokens={P + 1}"),
    ("PROMPT_TUNING", "prompt_tuning", {"token_dim": 384}, "has token_dim=384, tiny-bert has 32"),
    ("PROMPT_TUNING", "prompt_tuning", {"base_model_name_or_path": "bert-base-uncased"},
     "was trained on bert-base-uncased, this run's model is sentence-transformers/all-MiniLM-L6-v2"),
    ("PROMPT_TUNING", "prompt_tuning", {"task_type": "SEQ_2_SEQ_LM"}, "a model.family=bert run takes SEQ_CLS adapters"),
]


@pytest.mark.parametrize("kind,method,changes,message", MISMATCHES, ids=[f"{k}-{m}-{','.join(c)}" for k, m, c, _ in MISMATCHES])
def test_mismatches_fail_in_one_line_before_the_model_loads(kind, method, changes, message, tmp_path, monkeypatch, capsys):
    peft_trained("bert", kind, tmp_path / "adapter")
    edit_config(tmp_path / "adapter", **changes)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(backbones, "load", no_model)
    assert main(["train", *overrides("bert", method, tmp_path / "run", f"method.init_from={tmp_path / 'adapter'}",
                                     f"data.root={root_for(tasks.get('sst2'), 'train')}")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptune: error:") and "\n" not in err and message in " ".join(err.split()), err


def test_a_t5_prefix_adapter_has_no_ptune_equivalent(tmp_path):
    (tmp_path / "adapter").mkdir()
    config = {"peft_type": "PREFIX_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": P}
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    cfg = load(overrides("t5", "p_tuning_v2", tmp_path / "run", f"method.init_from={tmp_path / 'adapter'}"))
    with pytest.raises(ConfigError, match="PEFT's T5 prefix tuning prompts only the decoder"):
        transfer.check(cfg, run.run_metadata(cfg))


def test_a_per_task_export_needs_the_task(tmp_path):
    for task in ("sst2", "mrpc"):
        (tmp_path / "export" / task).mkdir(parents=True)
        (tmp_path / "export" / task / "adapter_config.json").write_text("{}")
    cfg = load(overrides("bert", "prompt_tuning", tmp_path / "run", f"method.init_from={tmp_path / 'export'}"))
    with pytest.raises(ConfigError, match=r"one PEFT adapter per task; choose one with method.init_from_task=<task> "
                                          r"\(mrpc, sst2\)"):
        transfer.check(cfg, run.run_metadata(cfg))
