"""The CLI: commands, config composition and overrides, and every task through both backbone families."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from ptune import run, tasks
from ptune.cli import main
from ptune.config import METHOD_CONFIGS, Config, group_choices, load
from ptune.methods import METHODS
from ptune.training.loop import evaluate, fit
from tests.conftest import REPO
from tests.tasks.conftest import root_for


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "ptune.cli", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    for command in ("train", "eval", "describe", "table", "plot", "-m method=prompt_tuning,p_tuning_v2"):
        assert command in out
    assert "method, model, task, optimizer, trainer" in out


def test_nothing_imports_the_cli():
    """cli.py is dispatch only: config loading lives in ptune.config, and nothing below imports upward."""
    for path in (REPO / "ptune").rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):  # the two entry points
            text = path.read_text()
            assert "ptune.cli" not in text and "from ptune import cli" not in text, path


def test_config_groups_mirror_the_registries():
    assert set(group_choices("task")) == set(tasks.TASKS) | set(tasks.MIXTURES)
    assert set(group_choices("method")) == set(METHODS) == set(METHOD_CONFIGS)
    assert {"t5-small", "t5-base", "t5-large", "t5-base-lm-adapt", "t5-large-lm-adapt", "flan-t5-base",
            "bert-base", "bert-large", "roberta-base", "roberta-large", "minilm", "tiny-t5",
            "tiny-bert"} <= set(group_choices("model"))


@pytest.mark.parametrize("model", group_choices("model"))
def test_every_model_config_composes_to_a_typed_config(model):
    cfg = load([f"model={model}"])
    assert isinstance(cfg, Config) and cfg.model.name == model and cfg.model.family in ("bert", "t5")


def test_groups_compose_and_any_value_overrides():
    cfg = load(["method=p_tuning_v2", "model=tiny-t5", "task=rte", "optimizer=adafactor",
                "method.num_virtual_tokens=7", "trainer.max_steps=13", "optimizer.lr=0.5", "seed=3",
                "data.root=/some/where", "model.dropout=0.0"])
    assert type(cfg.method) is METHOD_CONFIGS["p_tuning_v2"]
    assert (cfg.method.num_virtual_tokens, cfg.trainer.max_steps, cfg.optimizer.name, cfg.lr, cfg.seed) == (
        7, 13, "adafactor", 0.5, 3)
    assert cfg.data.root == "/some/where" and cfg.model.dropout == 0.0 and cfg.task_names == ["rte"]
    assert cfg.resolved_run_dir().endswith("p_tuning_v2-rte-tiny-t5-s3")
    assert load([]).lr == METHOD_CONFIGS["prompt_tuning"]().lr  # null optimizer.lr: the method's


def test_describe_prints_the_resolved_config(capsys):
    assert main(["describe", "method=p_tuning_v2", "trainer.max_steps=77"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.method.name == "p_tuning_v2" and printed.trainer.max_steps == 77


@pytest.mark.parametrize("family", ["bert", "t5"])
@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_trains_and_scores_on_both_families(name, family, tmp_path):
    """Real rows (../shared, else hub-schema fixtures) through collate, backbone, loss and the task's metrics."""
    task = tasks.get(name)
    train = tasks.load_split(task, "train", root=root_for(task, "train"), limit=6)
    valid = tasks.load_split(task, "validation", root=root_for(task, "validation"), limit=6)
    model = "tiny-t5" if family == "t5" else "tiny-bert"
    cfg = load([f"task={name}", f"model={model}", "method=p_tuning_v2", "trainer.max_steps=2",
                "trainer.eval_every=2", "trainer.batch_size=3", "trainer.progress=false",
                f"run_dir={tmp_path / 'run'}"])
    parts = run.build(cfg, examples={"train": train, "eval": valid})
    outcome = fit(parts)
    metrics = evaluate(parts, parts.eval)
    assert set(task.metric_names) <= set(metrics) and task.main_metric in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert outcome["progress"]["history"][-1][task.main_metric] == metrics[task.main_metric]


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-bert"])
def test_train_and_eval_print_no_deprecation_or_future_warnings(tmp_path, model):
    """Deep prompts on both families, with every warning shown once (``-W default``): ptune calls no
    deprecated API (transformers 5.24 deprecated the ``past_key_values`` keyword ptune used to pass)."""
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-W", "default", "-m", "ptune.cli"]
    train = subprocess.run([*cli, "train", f"model={model}", "method=p_tuning_v2", "task=rte",
                            f"data.root={root_for(tasks.get('rte'))}", "trainer.max_steps=2", "trainer.eval_every=2",
                            "trainer.progress=false", f"run_dir={run_dir}"],
                           capture_output=True, text=True, cwd=REPO, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    score = subprocess.run([*cli, "eval", f"run={run_dir}"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert score.returncode == 0, score.stderr[-2000:]
    for out in (train.stderr, score.stderr):
        assert "DeprecationWarning" not in out and "FutureWarning" not in out, out[-2000:]


def test_progress_goes_to_a_log_as_plain_lines(tmp_path):
    """Output redirected (not a terminal): no progress bar frames, a plain line every trainer.log_seconds and at
    each evaluation, with step, loss, lr, elapsed time and the time left."""
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "ptune.cli", "train", "model=tiny-bert", "task=rte",
                               f"data.root={root_for(tasks.get('rte'))}", "data.train_limit=64", "data.eval_limit=16",
                               "trainer.max_steps=6", "trainer.eval_every=3", "trainer.log_every=1",
                               "trainer.log_seconds=0.000001", f"run_dir={tmp_path / 'run'}"],
                              stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-2000:]
    lines = [line for line in text.splitlines() if line.startswith("train step ")]
    assert [line.split()[2] for line in lines][:6] == [f"{s}/6" for s in (1, 2, 3, 4, 5, 6)]
    assert all(" loss " in line and " lr " in line and " elapsed " in line for line in lines)
    assert "\r" not in text and "\x1b[" not in text  # no bar redraws, no terminal escapes


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ptune {version('ptune')}"


def test_ptune_trains_flags_match_the_installed_hydras():
    """cli.hydra_parser spells out @hydra.main's flags (Hydra's own parser is private): same options, same
    short forms, same choices, so a Hydra upgrade that changes them fails here."""
    from hydra._internal.utils import get_args_parser  # only the test reads the private parser

    from ptune.cli import hydra_parser

    def options(parser):
        return {tuple(sorted(a.option_strings)): (tuple(a.choices) if a.choices else None, a.nargs, a.const)
                for a in parser._actions if a.option_strings and "--version" not in a.option_strings}

    assert options(hydra_parser()) == options(get_args_parser())
