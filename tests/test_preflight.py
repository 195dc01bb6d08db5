"""Mismatched parts and impossible settings fail in one line (exit 2, no traceback), before the model loads
where the check does not need it: lengths the position table cannot hold, a family that is not the
checkpoint's, collapsing verbalizers, empty init text, optimizer ranges, 64-bit seeds, grad_accum larger
than an epoch, and damaged run folders for ptune eval."""

from __future__ import annotations

import json

import pytest

from ptune import backbones
from ptune.cli import main
from ptune.config import load
from tests.conftest import SHARED_DATA

RUN = ["train", "task=sst2", f"data.root={SHARED_DATA}", "data.train_limit=16", "data.eval_limit=8",
       "trainer.max_steps=2", "trainer.eval_every=2", "trainer.progress=false", "trainer.batch_size=8"]


def one_line_error(capsys, args, tmp_path, monkeypatch, *, loads: bool = False) -> str:
    if not loads:
        monkeypatch.setattr(backbones, "load", lambda *a, **k: pytest.fail("the model must not load"))
    last = {a.split("=", 1)[0]: a for a in args}  # RUN's value of a key the test sets again gives way to it
    args = [a for a in args if last[a.split("=", 1)[0]] is a]
    assert main([*args, f"run_dir={tmp_path / 'run'}"] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptune: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra,expect", [
    (["model=minilm", "model.max_length=600", "method=model_tuning"], "model.max_length=600 needs 600 positions, but "
     "sentence-transformers/all-MiniLM-L6-v2 has 512; use model.max_length<=512"),
    (["model=minilm", "model.max_length=500"], "model.max_length=500 + 20 virtual tokens needs 520 positions"),
    (["model=minilm", "model.max_length=500", "method=p_tuning_v2"], "+ a 20-token prefix (it shifts bert's position ids)"),
    (["model=minilm", "method.num_virtual_tokens=600"], "needs 728 positions, but sentence-transformers/all-MiniLM-L6-v2 has 512"),
    (["model=minilm", "model.family=t5"], "model.family=t5 but sentence-transformers/all-MiniLM-L6-v2 is a 'bert' model; "
     "use model.family=bert"),
    (["model=t5-small", "model.family=bert"], "model.family=bert but google-t5/t5-small is a 't5' model; use model.family=t5"),
])
def test_impossible_lengths_and_wrong_families_fail_before_the_model_loads(extra, expect, capsys, tmp_path, monkeypatch):
    assert expect in one_line_error(capsys, [*RUN, *extra], tmp_path, monkeypatch)


def test_t5_prompts_have_no_position_limit_and_a_fitting_length_passes():
    backbones.preflight(load(["model=tiny-t5", "model.max_length=4000"]).model, "input", 20)
    backbones.preflight(load(["model=minilm", "model.max_length=492"]).model, "input", 20)  # 512 exactly


@pytest.mark.parametrize("extra,expect", [
    (["optimizer.eps=0"], "optimizer.eps=0.0 must be > 0"),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9] must be two numbers in [0, 1)"),
    (["optimizer.betas=[0.9,1.5]"], "must be two numbers in [0, 1)"),
    (["seed=18446744073709551616"], "seed"),
    (["seed=-1"], "seed=-1 must be in [0, 2**63)"),
])
def test_optimizer_and_seed_ranges(extra, expect, capsys, tmp_path, monkeypatch):
    assert expect in one_line_error(capsys, [*RUN, "model=tiny-bert", *extra], tmp_path, monkeypatch)


def test_grad_accum_larger_than_an_epoch_fails_instead_of_hanging(capsys, tmp_path, monkeypatch):
    err = one_line_error(capsys, [*RUN, "model=tiny-bert", "trainer.grad_accum=5"], tmp_path, monkeypatch, loads=True)
    assert "trainer.grad_accum=5 is more than the 2 batches in an epoch (16 training rows" in err


def test_init_text_that_tokenizes_to_nothing(capsys, tmp_path, monkeypatch):
    err = one_line_error(capsys, [*RUN, "model=tiny-bert", "method.init=text", "method.init_text=' '"], tmp_path,
                         monkeypatch, loads=True)
    assert "method.init_text=' ' gives no tokens" in err


def test_t5_verbalizers_cut_to_the_same_tokens(capsys, tmp_path, monkeypatch):
    run = [o for o in RUN if not o.startswith("task=")]
    err = one_line_error(capsys, [*run, "task=mrpc", "model=tiny-t5", "model.max_target_length=1"], tmp_path,
                         monkeypatch, loads=True)
    assert "task mrpc: with model.max_target_length=1 the answers" in err and "raise model.max_target_length" in err


def test_t5_stsb_score_buckets_cut_to_the_same_tokens(capsys, tmp_path, monkeypatch):
    """STS-B on T5 is rank classification over 26 buckets "0.0" ... "5.0"; cut short they collapse."""
    run = [o for o in RUN if not o.startswith("task=")]
    err = one_line_error(capsys, [*run, "task=stsb", "model=tiny-t5", "model.max_target_length=2"], tmp_path,
                         monkeypatch, loads=True)
    assert "task stsb: with model.max_target_length=2 the answers ['0.0', '0.2'" in err


@pytest.mark.parametrize("model,init", [("tiny-bert", "method.init=class_labels"), ("tiny-t5", "method.init=class_labels"),
                                        ("tiny-bert", "method=structured method.prompt_init=class_labels")])
def test_class_label_init_on_a_task_without_class_labels(model, init, capsys, tmp_path, monkeypatch):
    run = [o for o in RUN if not o.startswith("task=")]
    err = one_line_error(capsys, [*run, "task=stsb", f"model={model}", *init.split()], tmp_path, monkeypatch)
    key = init.split()[-1].split("=")[0]
    assert f"{key}=class_labels: task(s) stsb have no class labels (regression)" in err


@pytest.mark.parametrize("extra,expect", [
    (["model=minilm", "model.tokenizer_id=google-t5/t5-small"],
     "tokenizer 'google-t5/t5-small' has 32100 tokens but model 'sentence-transformers/all-MiniLM-L6-v2' embeds 30522"),
    (["model=t5-small", "model.tokenizer_id=sentence-transformers/all-MiniLM-L6-v2"],
     "tokenizer 'sentence-transformers/all-MiniLM-L6-v2' (BertTokenizer) has no eos_token, which model.family=t5"),
    (["model=minilm", "+model.config_overrides.num_hidden_layers=8"],
     "model.config_overrides.num_hidden_layers=8 adds 2 layer(s) to sentence-transformers/all-MiniLM-L6-v2's 6"),
])
def test_parts_that_must_agree(extra, expect, capsys, tmp_path, monkeypatch):
    """A tokenizer from another model, or layers added to a pretrained body, would train silently on wrong inputs
    or random frozen layers: refused before the weights load."""
    assert expect in one_line_error(capsys, [*RUN, *extra], tmp_path, monkeypatch)


def test_fewer_layers_or_allowed_new_layers_pass_the_check():
    from ptune.backbones import check_new_layers

    base = ["model=minilm", "task=sst2"]
    check_new_layers(load([*base, "+model.config_overrides.num_hidden_layers=3"]).model)
    check_new_layers(load([*base, "+model.config_overrides.num_hidden_layers=8", "model.allow_new_layers=true"]).model)


@pytest.fixture()
def finished(tmp_path):
    run_dir = tmp_path / "done"
    assert main([*RUN, "model=tiny-bert", f"run_dir={run_dir}"]) == 0
    return run_dir


@pytest.mark.parametrize("damage,expect", [
    ("method: [unclosed", "is not valid YAML"),
    ("", "holds no run config (empty, or no method/task)"),
])
def test_damaged_config_yaml_for_eval(finished, damage, expect, capsys, monkeypatch, tmp_path):
    (finished / "config.yaml").write_text(damage)
    assert expect in one_line_error(capsys, ["eval", f"run={finished}"], tmp_path, monkeypatch)


def test_eval_with_a_truncated_results_json_still_prints_the_fresh_metrics(finished, capsys):
    (finished / "results.json").write_text('{"best": {"accur')
    assert main(["eval", f"run={finished}"]) == 0
    out = capsys.readouterr()
    assert "results.json is damaged" in out.err and "accuracy" in json.loads(out.out.strip().splitlines()[-1])["metrics"]


@pytest.mark.parametrize("override,expect", [("trainer.nonsense=1", "trainer.nonsense"),
                                             ("model.max_length=abc", "model.max_length"),
                                             ("justaword", "'justaword' is not one")])
def test_eval_overrides_fail_in_one_line(finished, override, expect, capsys, monkeypatch, tmp_path):
    assert expect in one_line_error(capsys, ["eval", f"run={finished}", override], tmp_path, monkeypatch)
