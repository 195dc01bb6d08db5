"""`ptune table` on hand-made run folders: the cells are the numbers we put in."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console

from ptune.analysis import table
from ptune.analysis.runs import find
from ptune.analysis.table import build
from ptune.cli import main
from ptune.errors import ConfigError
from tests.analysis.conftest import make_run


@pytest.fixture
def sweep_dir(tmp_path):
    root = tmp_path / "sweep"
    for seed, score in zip((1, 2, 3), (60.0, 62.0, 64.0), strict=True):
        make_run(root, "prompt_tuning", "rte", seed, score, paper={"rte": 65.0, "mrpc": 80.0})
    for seed, score in zip((1, 2), (80.0, 84.0), strict=True):
        make_run(root, "prompt_tuning", "mrpc", seed, score, metric="f1", paper={"rte": 65.0, "mrpc": 80.0})
    make_run(root, "p_tuning_v2", "rte", 1, 55.0, trainable=300, total=10_300)
    make_run(root, "p_tuning_v2", "rte", 2, None, step=5)  # unfinished: not averaged in
    make_run(root, "p_tuning_v2", "mrpc", 1, None, step=3)  # failed, says sweep.json
    jobs = [{"overrides": ["method=p_tuning_v2", "task=mrpc", "seed=1"], "num": 4, "status": "failed",
             "run_dir": "elsewhere/p_tuning_v2-mrpc-tiny-bert-s1", "error": "loss is nan at step 3; stopped"},
            {"overrides": ["method=p_tuning_v2", "task=mrpc", "seed=2", "model=gpt9"], "num": 5, "status": "failed",
             "swept": "seed=2", "error": "unknown model 'gpt9'; choose one of: minilm"}]
    (root / "sweep.json").write_text(json.dumps({"jobs": jobs}))
    return root


def run_table(folder, out=None) -> str:
    buf = io.StringIO()
    assert table.main([folder], out, Console(file=buf, width=250)) == 0
    return buf.getvalue()


def test_cells_are_mean_and_std_over_seeds_with_paper_numbers_beside(sweep_dir):
    printed = run_table(sweep_dir)
    md = (sweep_dir / "table.md").read_text().splitlines()
    assert md[0] == "| method | trainable params | of backbone | mrpc (f1) | rte (accuracy) | avg |"
    pt = next(line for line in md if line.startswith("| prompt_tuning"))
    assert pt == ("| prompt_tuning | 100 | 1% | 82.0 ± 2.8 (n=2)<br>paper 80.0 (Δ +2.0) | "
                  "62.0 ± 2.0 (n=3)<br>paper 65.0 (Δ -3.0) | 72.0<br>paper 72.5 (Δ -0.5) |")
    v2 = next(line for line in md if line.startswith("| p_tuning_v2"))
    assert v2 == "| p_tuning_v2 | 300 | 3% | – | 55.0 (n=1) | – |"  # no mrpc: no average either
    assert "62.0 ± 2.0 (n=3)" in printed and "paper 65.0 (Δ -3.0)" in printed


def test_failed_and_unfinished_runs_are_listed_not_averaged(sweep_dir):
    printed = " ".join(run_table(sweep_dir).split())
    assert "unfinished: p_tuning_v2-rte-tiny-bert-s2 (step 5 of 10)" in printed
    assert "failed: p_tuning_v2-mrpc-tiny-bert-s1 (p_tuning_v2, mrpc): loss is nan at step 3" in printed
    assert "failed: job-5 (p_tuning_v2 seed=2, mrpc): unknown model 'gpt9'" in printed  # never had a folder
    md = (sweep_dir / "table.md").read_text()
    assert "- unfinished: p_tuning_v2-rte-tiny-bert-s2" in md and "- failed: p_tuning_v2-mrpc-tiny-bert-s1" in md


def test_csv_holds_the_numbers(sweep_dir, tmp_path):
    run_table(sweep_dir, out=tmp_path / "out" / "paper.md")
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "paper.csv").open())}
    pt = rows["prompt_tuning"]
    assert (pt["rte_mean"], pt["rte_std"], pt["rte_n"], pt["rte_paper"], pt["rte_delta"]) == (
        "62.0000", "2.0000", "3", "65.0", "-3.0000")
    assert (pt["trainable_params"], pt["backbone_share_pct"], pt["avg_mean"]) == ("100", "1", "72.0000")
    assert rows["p_tuning_v2"]["rte_std"] == "" and rows["p_tuning_v2"]["mrpc_n"] == "0"
    assert (tmp_path / "out" / "paper.md").is_file()


def test_rows_tell_swept_values_and_models_apart(tmp_path):
    for lr, score in (("0.1", 50.0), ("0.3", 70.0)):
        make_run(tmp_path, "prompt_tuning", "rte", 1, score, variant=f"optimizer.lr={lr}")
    make_run(tmp_path, "prompt_tuning", "rte", 1, 40.0, model="tiny-t5")
    md = (run_table(tmp_path), (tmp_path / "table.md").read_text())[1]
    assert "| prompt_tuning optimizer.lr=0.1 | tiny-bert |" in md and "| prompt_tuning optimizer.lr=0.3 | tiny-bert |" in md
    assert "| prompt_tuning | tiny-t5 |" in md


def test_the_cli_command(sweep_dir, capsys):
    assert main(["table", str(sweep_dir), "-o", str(sweep_dir / "t")]) == 0
    out = capsys.readouterr().out
    assert "62.0 ± 2.0 (n=3)" in out and f"wrote {sweep_dir / 't.md'}" in " ".join(out.split())


def test_no_runs_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no run folders under"):
        table.main([tmp_path], None, Console(file=io.StringIO()))
    assert main(["table", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"ptune: error: no such folder: {tmp_path / 'nope'}"


def test_per_task_puts_a_mixture_s_tasks_in_the_task_columns(tmp_path, capsys):
    from omegaconf import OmegaConf

    for seed, (s, m) in enumerate([(70.0, 80.0), (72.0, 84.0)]):
        make_run(tmp_path, "prompt_tuning", "sst2", seed, 75.0 + seed)
        mix = tmp_path / f"prompt_tuning-sst2+mrpc-tiny-bert-s{seed}"
        mix.mkdir()
        OmegaConf.save(OmegaConf.create({"method": {"name": "prompt_tuning"}, "task": {"sst2": {}, "mrpc": {}},
                                         "model": {"name": "tiny-bert"}, "seed": seed}), mix / "config.yaml")
        best = {"step": 4, "avg": 1.0, "sst2/accuracy": s, "mrpc/f1": m,
                "tasks": {"sst2": {"accuracy": s}, "mrpc": {"accuracy": 60.0, "f1": m}}}
        (mix / "results.json").write_text(json.dumps({"task": "sst2+mrpc", "main_metric": "avg", "best": best,
                                                      "steps": 4, "trainable_params": 10, "total_params": 110}))
    rows, tasks, metrics = build(find([tmp_path]), per_task=True)
    assert tasks == ["mrpc", "sst2"] and metrics == {"mrpc": "f1", "sst2": "accuracy"}
    by = {r.label: r for r in rows}
    mixed = by["prompt_tuning (mixture sst2+mrpc)"]
    assert mixed.cells["sst2"].scores == [70.0, 72.0] and mixed.cells["mrpc"].mean == 82.0
    assert by["prompt_tuning"].cells["sst2"].scores == [75.0, 76.0] and "mrpc" not in by["prompt_tuning"].cells
    plain, columns, _ = build(find([tmp_path]))
    assert "sst2+mrpc" in columns and len(plain) == 1  # without --per-task: one column for the mixture
    assert main(["table", str(tmp_path), "--per-task"]) == 0
    assert "(mixture sst2+mrpc)" in capsys.readouterr().out


def test_runs_that_differ_in_any_setting_but_the_seed_are_never_averaged(tmp_path):
    """Loose folders named alike (no swept values in their names): a different lr, step budget or process count
    gets its own row, labelled with what differs; seeds, paths and logging do not split rows."""
    from omegaconf import OmegaConf

    def loose(name, seed, score, lr=0.3, steps=10, world="1", **config):
        folder = make_run(tmp_path / name, "prompt_tuning", "rte", seed, score, max_steps=steps)
        cfg = OmegaConf.load(folder / "config.yaml")
        cfg.optimizer, cfg.run_dir, cfg.logger = {"lr": lr}, str(folder), {"name": config.get("logger", "none")}
        OmegaConf.save(cfg, folder / "config.yaml")
        results = json.loads((folder / "results.json").read_text())
        results["environment"] = {"world_size": world}
        (folder / "results.json").write_text(json.dumps(results))

    loose("a", 1, 50.0)
    loose("b", 2, 54.0, logger="tensorboard")  # same settings, another seed and logger: averaged
    loose("c", 1, 60.0, lr=0.03)
    loose("d", 1, 70.0, world="2")
    loose("e", 1, 80.0, steps=20)
    rows, _, _ = build(find([tmp_path]))
    cells = {r.label: r.cells["rte"].scores for r in rows}
    assert cells == {
        "prompt_tuning lr=0.3 processes=1 trainer.max_steps=10": [50.0, 54.0],
        "prompt_tuning lr=0.03 processes=1 trainer.max_steps=10": [60.0],
        "prompt_tuning lr=0.3 processes=2 trainer.max_steps=10": [70.0],
        "prompt_tuning lr=0.3 processes=1 trainer.max_steps=20": [80.0],
    }


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", ""])
def test_a_damaged_results_json_is_named_not_called_unfinished(tmp_path, damage):
    root = tmp_path / "sweep"
    make_run(root, "prompt_tuning", "rte", 1, 60.0)
    broken = make_run(root, "prompt_tuning", "rte", 2, 70.0)
    (broken / "results.json").write_text(damage)
    printed = " ".join(run_table(root).split())
    assert "60.0 (n=1)" in printed  # the damaged run is not averaged in
    assert "failed: prompt_tuning-rte-tiny-bert-s2" in printed and "results.json is damaged" in printed
    assert "unfinished" not in printed


@pytest.mark.parametrize("damage,why", [("method: [unclosed", "is not valid YAML"), ("", "holds no run config")])
def test_a_damaged_config_yaml_is_a_failed_row_not_a_traceback(tmp_path, damage, why):
    root = tmp_path / "sweep"
    make_run(root, "prompt_tuning", "rte", 1, 60.0)
    broken = make_run(root, "prompt_tuning", "rte", 2, 70.0)
    (broken / "config.yaml").write_text(damage)
    printed = " ".join(run_table(root).split())
    assert "60.0 (n=1)" in printed and "failed: prompt_tuning-rte-tiny-bert-s2" in printed and why in printed
