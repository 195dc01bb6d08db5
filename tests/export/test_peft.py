"""ptune export format=peft: PEFT's own loader reads every export, and the logits equal ptune's (within 1e-5);
where PEFT has no equivalent the export stops in one line and writes nothing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from peft import PeftModel
from safetensors import safe_open

import ptune
from ptune.cli import main
from ptune.errors import ConfigError
from ptune.export import peft as export_peft
from tests.backbones.test_peft_equivalence import inputs
from tests.export.conftest import P, overrides, peft_base, peft_logits, ptune_logits, train

EXPORTS = [
    ("bert", "prompt_tuning", ()),
    ("bert", "p_tuning", ("method.encoder=mlp",)),
    ("bert", "p_tuning", ("method.encoder=lstm",)),
    ("bert", "structured", ()),
    ("bert", "p_tuning_v2", ()),
    ("bert", "prefix_tuning", ("method.prefix_hidden_size=16",)),
    ("bert", "hyperprompt", ()),
    ("t5", "prompt_tuning", ()),
    ("t5", "p_tuning", ()),
    ("t5", "structured", ()),
]
PREFIX = ("p_tuning_v2", "prefix_tuning", "hyperprompt")


def prefix_or_skip(family: str, method: str, run_dir: str, out: Path) -> None:
    """Where the installed PEFT cannot run prefix tuning the export must refuse it, naming why (then skip)."""
    why = export_peft.prefix_refused("bert") if family == "bert" and method in PREFIX else None
    if why:
        with pytest.raises(ConfigError, match="past_key_values"):
            export_peft.export(run_dir, out)
        assert not out.exists()
        if os.environ.get("PTUNE_REQUIRE_PEFT") == "1":
            pytest.fail(why)
        pytest.skip(why)


def check_equal(run_dir: str, folder: Path, task: str) -> None:
    loaded = ptune.load(run_dir)
    parts = loaded._loaded.parts
    ids, mask = inputs()
    model = PeftModel.from_pretrained(peft_base(parts.backbone), str(folder)).eval()
    ref = peft_logits(model, parts.cfg.model.family, ids, mask)
    ours = ptune_logits(parts, task, ids, mask)
    assert ref.shape == ours.shape
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("family,method,extra", EXPORTS, ids=["-".join([f, m, *e]) for f, m, e in EXPORTS])
def test_peft_loads_the_export_and_gives_ptune_s_logits(runs, family, method, extra, tmp_path):
    run_dir = runs(family, method, *extra)
    out = tmp_path / "adapter"
    prefix_or_skip(family, method, run_dir, out)
    done = ptune.load(run_dir).export(format="peft", out=out)
    assert done["adapters"] == {"sst2": str(out)}
    config = json.loads((out / "adapter_config.json").read_text())
    assert list(config) == sorted(config) and config["inference_mode"] is True
    assert config["num_virtual_tokens"] == P and config["task_type"] == ("SEQ_CLS" if family == "bert" else "SEQ_2_SEQ_LM")
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    if family == "bert":
        assert set(shapes) == {"prompt_embeddings", "base_model.classifier.weight", "base_model.classifier.bias"}
    else:
        assert set(shapes) == {"prompt_embeddings"} and shapes["prompt_embeddings"][0] == 2 * P
    check_equal(run_dir, out, "sst2")
    card = (out / "README.md").read_text()
    for word in ("sentence-transformers/all-MiniLM-L6-v2" if family == "bert" else "google-t5/t5-small", method,
                 "accuracy", "| trained with | `", "PeftModel.from_pretrained", "| ptune | "):
        assert word in card, word
    assert (out / "ptune" / "prompt.safetensors").is_file() and (out / "ptune" / "state").is_dir()


@pytest.mark.parametrize("family,method", [("bert", "hyperprompt"), ("bert", "structured"), ("t5", "structured")])
def test_a_multi_task_run_exports_one_adapter_per_task(runs, family, method, tmp_path):
    run_dir = runs(family, method, task="[sst2,mrpc]")
    out = tmp_path / "adapters"
    prefix_or_skip(family, method, run_dir, out)
    done = export_peft.export(run_dir, out)
    assert done["adapters"] == {"sst2": str(out / "sst2"), "mrpc": str(out / "mrpc")}
    assert "sst2/" in (out / "README.md").read_text()
    for task in ("sst2", "mrpc"):
        check_equal(run_dir, out / task, task)
    only = export_peft.export(run_dir, tmp_path / "one", task="mrpc")
    assert only["adapters"] == {"mrpc": str(tmp_path / "one")}
    check_equal(run_dir, tmp_path / "one", "mrpc")


REFUSED = [
    ("t5", "p_tuning_v2", (), "PEFT has no per-layer prompts for T5's encoder"),
    ("t5", "hyperprompt", (), "PEFT has no per-layer prompts for T5's encoder"),
    ("t5", "hyperprompt", ("method.stacks=decoder",), "its T5 prefix tuning feeds the decoder only"),
    ("bert", "model_tuning", ("method.num_virtual_tokens=0",), "PEFT has no equivalent of method=model_tuning"),
    ("bert", "prompt_tuning", ("model.prompt_position=after_cls",), "PEFT puts soft tokens before it"),
    ("bert", "p_tuning", ("method.split=2",), "PEFT puts them all before it"),
]


@pytest.mark.parametrize("family,method,extra,why", REFUSED, ids=[f"{f}-{m}-{len(e)}" for f, m, e, _ in REFUSED])
def test_no_peft_equivalent_stops_in_one_line_and_writes_nothing(runs, family, method, extra, why, tmp_path):
    run_dir = runs(family, method, *extra)
    out = tmp_path / "adapter"
    with pytest.raises(ConfigError, match=why) as err:
        export_peft.export(run_dir, out)
    assert "\n" not in str(err.value)
    assert ("folded.safetensors" if method != "model_tuning" else "ptune predict") in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no adapter, no temporary folder


def test_a_peft_that_refuses_the_architecture_stops_the_export(runs, tmp_path, monkeypatch):
    run_dir = runs("bert", "p_tuning_v2")
    monkeypatch.setattr(export_peft, "takes_past", lambda model_class: False)  # as peft 0.21.2 on transformers 5.24
    with pytest.raises(ConfigError, match="runs prefix tuning through a past_key_values argument, which transformers"):
        export_peft.export(run_dir, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_exports_and_refuses_in_one_line(runs, tmp_path, capsys):
    good, bad = runs("bert", "prompt_tuning"), runs("t5", "p_tuning_v2")
    assert main(["export", f"run={good}", "format=peft", f"out={tmp_path / 'a'}"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "a")
    assert main(["export", f"run={bad}", "format=peft", f"out={tmp_path / 'b'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptune: error: no PEFT export of") and "\n" not in err and not (tmp_path / "b").exists()
    assert main(["export", f"run={good}", "format=peft", f"out={tmp_path / 'a'}"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", f"run={good}"]) == 2
    assert "needs format=<peft>" in capsys.readouterr().err
    assert main(["export", f"run={good}", "format=onnx"]) == 2
    assert "choose one of: peft" in capsys.readouterr().err
    assert main(["export", f"run={good}", "format=peft", "task=rte"]) == 2
    assert "choose one of: sst2" in capsys.readouterr().err


def test_without_peft_the_export_names_the_extra(runs, tmp_path, monkeypatch):
    run_dir = runs("bert", "prompt_tuning")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ConfigError, match=r"needs the peft package: pip install 'ptune\[peft\]'"):
        export_peft.export(run_dir, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_the_run_kept_beside_the_adapter_resumes(tmp_path):
    run_dir = train(tmp_path / "run", "bert", "prompt_tuning")
    out = tmp_path / "adapter"
    export_peft.export(run_dir, out)
    results = ptune.train([*overrides(out / "ptune", "bert", "prompt_tuning", steps=4), "resume=true"])
    assert results["steps"] == 4
    assert json.loads((Path(run_dir) / "results.json").read_text())["steps"] == 2  # the original is untouched
