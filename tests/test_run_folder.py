"""ptune/run_folder.py: the one module that spells a run folder's file names, opens a run (one line for a missing or
damaged folder), reads its results and metrics forgivingly, and merges eval's and predict's overrides."""

from __future__ import annotations

import ast
import json
import re

import pytest

from ptune import run_folder
from ptune.config import load
from ptune.errors import CheckpointError, ConfigError
from tests.conftest import REPO

FILES = [n for n in (*run_folder.OWN, run_folder.STATE_FILE, run_folder.PREDICTIONS) if "." in n]
FOLDERS = [n for n in (*run_folder.OWN, run_folder.PREDICTIONS) if "." not in n]


def docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def spelled(source: str) -> list[str]:
    """The run-folder names that code spells as a path: a file name as a path's part (``"results.json"``,
    ``f"{d}/results.json"``), a folder name on the right of ``/`` or in a path string (``f"{d}/state"``), or the
    snapshot folders' ``step-`` prefix. Prose (docstrings, messages and help with spaces in them) may name them."""
    tree = ast.parse(source)
    skip = docstrings(tree)
    divided = {id(n.right) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value
        if re.search(r"\s", text):
            continue
        for name in FILES:
            if re.search(rf"(^|/){re.escape(name)}($|/)", text):
                found.append(f"{node.lineno}: {text!r}")
        for name in FOLDERS:
            if (text == name and id(node) in divided) or re.search(rf"(^|/){name}/|/{name}$", text):
                found.append(f"{node.lineno}: {text!r}")
        if text.startswith("step-"):
            found.append(f"{node.lineno}: {text!r}")
    return found


def test_the_spelling_check_catches_paths_and_lets_prose_through():
    assert spelled('p = run_dir / "results.json"') and spelled('p = run_dir / "state" / x')
    assert spelled('p = f"{run_dir}/state"') and spelled('p = d / f"step-{n}"') and spelled('glob("config.yaml")')
    assert not spelled('raise E(f"{p} is damaged: results.json is not JSON")')
    assert not spelled('x = state["state"]')
    assert not spelled('def f():\n    """Reads results.json."""')


def test_no_module_but_run_folder_spells_a_run_folder_name():
    found = {str(p.relative_to(REPO)): spelled(p.read_text()) for p in sorted((REPO / "ptune").rglob("*.py"))
             if p.name != "run_folder.py" and "configs" not in p.parts}
    assert {k: v for k, v in found.items() if v} == {}, "use the constants of ptune/run_folder.py"


def test_open_names_a_missing_or_damaged_run_folder_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run_folder.open(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"is not a ptune run folder \(no config.yaml\)"):
        run_folder.open(tmp_path)
    (tmp_path / run_folder.CONFIG).write_text("method: [unclosed")
    with pytest.raises(CheckpointError, match="is not valid YAML"):
        run_folder.open(tmp_path)
    (tmp_path / run_folder.CONFIG).write_text("")
    with pytest.raises(CheckpointError, match=r"holds no run config \(empty, or no method/task\)"):
        run_folder.open(tmp_path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run folder holding only the config that ptune train would save."""
    folder = tmp_path_factory.mktemp("run")
    run_folder.save_config(load(["method=prompt_tuning", "model=tiny-bert", "task=sst2"]), folder)
    return folder


def test_a_finished_run_reads_back(saved, tmp_path):
    folder = run_folder.open(saved)
    assert folder.config.method.name == "prompt_tuning" and folder.config.task_names == ["sst2"]
    assert folder.results is None and not folder.results_damaged and folder.metrics == []
    assert folder.prompt == saved / run_folder.PROMPT and folder.folded == saved / run_folder.FOLDED
    with pytest.raises(CheckpointError, match="has no prompt.safetensors"):
        run_folder.open(saved, need_prompt=True)


def test_results_and_metrics_are_read_forgivingly(saved):
    (saved / run_folder.RESULTS).write_text('{"best": {"accur')
    assert run_folder.open(saved).results is None and run_folder.open(saved).results_damaged
    (saved / run_folder.RESULTS).write_text(json.dumps({"best": {"step": 2, "accuracy": 50.0}}))
    assert run_folder.open(saved).results == {"best": {"step": 2, "accuracy": 50.0}}
    rows = [{"step": 1, "epoch": 0, "accuracy": 50.0}, {"step": 2, "epoch": 0, "avg": 60.0, "tasks": {
        "rte": {"accuracy": 55.0}, "mrpc": {"f1": 65.0}}}]
    run_folder.write_metrics(saved, rows)
    assert len((saved / run_folder.METRICS).read_text().splitlines()) == 4  # a mixture: a line per task, then avg
    (saved / run_folder.METRICS).write_text((saved / run_folder.METRICS).read_text() + '{"step": 3, "acc')
    assert [r["step"] for r in run_folder.open(saved).metrics] == [1, 2]  # the torn last line is skipped


def test_eval_and_predict_merge_overrides_through_one_helper(saved):
    folder = run_folder.open(saved)
    cfg = folder.configured(["data.root=/data", "trainer.eval_batch_size=3"], "ptune eval")
    assert cfg.data.root == "/data" and cfg.trainer.eval_batch_size == 3 and cfg.method.name == "prompt_tuning"
    with pytest.raises(ConfigError, match="ptune eval takes key=value overrides; 'justaword' is not one"):
        folder.configured(["justaword"], "ptune eval")
    with pytest.raises(ConfigError, match="ptune predict: 'trainer.nonsense' cannot be set that way"):
        folder.configured(["trainer.nonsense=1"], "ptune predict")


def test_snapshot_steps_are_the_numbered_folders(tmp_path):
    for step in (10, 2, "x"):
        run_folder.snapshot(tmp_path, step).mkdir(parents=True)
    assert run_folder.snapshot_steps(tmp_path) == [2, 10] and run_folder.snapshot_steps(tmp_path / "none") == []
