"""Multi-task runs end to end on tiny backbones: task ids stay with their rows, per-task evaluation and
the average, resume, and mixtures refused in one line when tasks have no data."""

from __future__ import annotations

import json

import pytest
import torch

from ptune import run
from ptune.cli import main
from ptune.config import load
from ptune.training.loop import evaluate, evaluate_all, fit
from tests.conftest import FIXTURE_DATA

MIX = ["task=[mnli,qqp]", "task.mnli.eval_splits=[validation,validation_mismatched]", f"data.root={FIXTURE_DATA}",
       "data.train_limit=24", "data.eval_limit=12", "trainer.batch_size=4", "trainer.eval_every=3",
       "trainer.progress=false", "data.sampling=equal"]


def config(tmp_path, family="bert", *extra):
    model = "tiny-t5" if family == "t5" else "tiny-bert"
    return load([f"model={model}", "method=prompt_tuning", "method.per_task=true", *MIX,
                 f"run_dir={tmp_path / 'run'}", *extra])


def test_a_list_of_tasks_composes_with_per_task_settings(tmp_path):
    cfg = config(tmp_path, "bert", "task.qqp.weight=3")
    assert cfg.task_names == ["mnli", "qqp"] and cfg.task_label == "mnli+qqp"
    assert cfg.task["qqp"].weight == 3 and cfg.task["mnli"].eval_splits == ["validation", "validation_mismatched"]
    glue = load(["task=glue"])
    assert glue.task_label == "glue" and len(glue.task) == 8
    assert glue.task["mnli"].eval_splits == ["validation", "validation_mismatched"]
    assert "glue" in glue.run_name() and load(["task=rte"]).run_name() == "prompt_tuning-rte-minilm-s42"


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_every_batch_reaches_the_method_with_its_own_task_id(tmp_path, family):
    parts = run.build(config(tmp_path, family, "trainer.max_steps=12"))
    assert [s.task_id for s in parts.trains] == [0, 1]
    seen = []
    forward = parts.backbone.forward

    def spy(batch, prompt, **kw):
        seen.append((batch["task"], batch["task_ids"].tolist()))
        return forward(batch, prompt, **kw)

    parts.backbone.forward = spy
    fit(parts)
    names = parts.cfg.task_names
    train_batches = [(task, ids) for task, ids in seen]
    assert {task for task, _ in train_batches} == set(names)  # both tasks were drawn
    for task, ids in train_batches:
        assert set(ids) == {names.index(task)}, (task, ids)  # each row keeps its own task's id


def test_per_task_metrics_and_the_average(tmp_path):
    parts = run.build(config(tmp_path, "bert", "trainer.max_steps=3"))
    row = evaluate_all(parts)
    assert set(row["tasks"]) == {"mnli", "mnli/validation_mismatched", "qqp"}
    for split in parts.evals:  # each task's metrics are exactly the single-task computation
        key = split.task.name if split.split == "validation" else f"{split.task.name}/{split.split}"
        assert row["tasks"][key] == evaluate(parts, split)
    mnli = (row["tasks"]["mnli"]["accuracy"] + row["tasks"]["mnli/validation_mismatched"]["accuracy"]) / 2
    qqp = (row["tasks"]["qqp"]["f1"] + row["tasks"]["qqp"]["accuracy"]) / 2
    assert row["avg"] == pytest.approx((mnli + qqp) / 2)


def test_train_writes_per_task_rows_and_eval_reproduces_them(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "model=tiny-bert", "method=p_tuning_v2", *MIX, "trainer.max_steps=6",
                 f"run_dir={run_dir}"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows[:4]] == ["mnli", "mnli/validation_mismatched", "qqp", "avg"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "mnli+qqp" and results["tasks"] == ["mnli", "qqp"] and results["main_metric"] == "avg"
    assert set(results["best"]["tasks"]) == {"mnli", "mnli/validation_mismatched", "qqp"}
    capsys.readouterr()
    assert main(["eval", f"run={run_dir}"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["metrics"]["tasks"] == results["best"]["tasks"]  # exactly
    assert scored["metrics"]["avg"] == results["best"]["avg"]
    assert main(["eval", f"run={run_dir}", "task=qqp"]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["metrics"]["tasks"] == {"qqp": results["best"]["tasks"]["qqp"]}  # that task alone


def test_a_resumed_mixture_run_ends_with_the_same_parameters(tmp_path):
    extra = ["optimizer.scheduler=constant", "optimizer.warmup_ratio=0.0", "trainer.eval_every=4"]
    straight = run.build(config(tmp_path / "a", "bert", "trainer.max_steps=8", *extra))
    fit(straight)
    first = run.build(config(tmp_path / "b", "bert", "trainer.max_steps=4", *extra))
    fit(first)
    resumed = run.build(config(tmp_path / "b", "bert", "trainer.max_steps=8", *extra))
    fit(resumed)
    for a, b in zip(straight.trainable_parameters(), resumed.trainable_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_mixture_with_missing_data_fails_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from ptune import backbones

    monkeypatch.setattr(backbones, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["train", "task=glue", f"data.root={FIXTURE_DATA}", f"run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no data for 6 of the 8 tasks (cola, sst2, mrpc, stsb, qnli, rte)" in err and str(FIXTURE_DATA) in err


def test_methods_learn_the_runs_tasks_by_name_words_and_description(tmp_path):
    from ptune.tasks import DESCRIPTIONS, TASKS

    assert set(DESCRIPTIONS) == set(TASKS) and all(DESCRIPTIONS.values())
    parts = run.build(load(["model=tiny-bert", "method=structured", "method.init=description", *MIX,
                            f"run_dir={tmp_path / 'run'}"]))
    assert [t.name for t in parts.method.tasks] == ["mnli", "qqp"]
    assert parts.method.tasks[1].label_words == ["not duplicate", "duplicate"]
    assert parts.method.tasks[0].description == DESCRIPTIONS["mnli"]
    # task-aware methods condition on the id themselves: per_task does not wrap them
    from ptune.methods.base import PerTask

    aware = run.build(load(["model=tiny-bert", "method=hyperprompt", "method.per_task=true", *MIX,
                            f"run_dir={tmp_path / 'run2'}"]))
    assert not isinstance(aware.method, PerTask)
