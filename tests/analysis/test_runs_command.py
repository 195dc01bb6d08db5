"""`ptune runs`: one line per run with its status, step, best metric, age and the settings that differ."""

from __future__ import annotations

import fcntl
import json

from ptune.analysis import listing
from ptune.cli import main
from tests.analysis.conftest import make_run


def with_settings(folder, **changes):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(folder / "config.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    return folder


def test_every_status_and_what_differs_from_the_defaults(tmp_path, capsys):
    done = with_settings(make_run(tmp_path, "prompt_tuning", "rte", 1, 61.0), **{"optimizer.lr": 0.03})
    early = with_settings(make_run(tmp_path, "p_tuning_v2", "rte", 1, 55.0), **{"method.lr": 0.01})
    results = json.loads((early / "results.json").read_text())
    (early / "results.json").write_text(json.dumps(dict(results, stopped="early_stopping")))
    stopped = make_run(tmp_path, "prompt_tuning", "rte", 2, None, step=4, curve=[(2, 52.0, 0.7), (4, 57.5, 0.6)])
    running = make_run(tmp_path, "prompt_tuning", "rte", 3, None, step=2, curve=[(2, 50.0, 0.7)])
    dead = make_run(tmp_path, "prompt_tuning", "rte", 4, None)
    (dead / "state" / "state.json").unlink()  # ended with neither results nor a state
    with (running / ".ptune.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live `ptune train` holds it
        rows = {r["run"]: r for r in listing.records([tmp_path])}
    by = {name: rows[str(f.resolve())] for name, f in
          (("done", done), ("early", early), ("stopped", stopped), ("running", running), ("dead", dead))}
    assert {k: v["status"] for k, v in by.items()} == {"done": "finished", "early": "stopped early",
                                                       "stopped": "interrupted", "running": "running", "dead": "failed"}
    assert (by["stopped"]["step"], by["stopped"]["best"]) == (4, 57.5)  # best so far, from metrics.jsonl
    assert by["done"]["best"] == 61.0 and by["done"]["changed"]["lr"] == 0.03
    assert "lr" not in by["early"]["changed"]  # the method's default lr
    assert main(["runs", str(tmp_path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and {line["status"] for line in lines} == {"finished", "stopped early", "interrupted",
                                                                      "failed"}  # the lock is released now


def test_the_table_names_each_run_and_a_missing_folder_is_one_line(tmp_path, capsys):
    make_run(tmp_path, "prompt_tuning", "rte", 1, 61.0)
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "prompt_tuning-rte-tiny-bert-s1" in out and "finished" in out and "61.00 accuracy" in out
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
