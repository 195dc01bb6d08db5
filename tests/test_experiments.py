"""The papers' presets (configs/experiment/): each composes, and its settings reach the run config."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from ptune import sweep, tasks
from ptune.config import compose_config, to_config
from tests.conftest import REPO
from tests.test_sweep import ptune, tiny

PRESETS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
TRAIN_ROWS = {"boolq": 9427, "copa": 400, "superglue_rte": 2490, "wic": 5428, "wsc": 554}


def first_job(name: str, *extra: str):
    raw = compose_config([f"+experiment={name}", *extra], hydra=True)
    return raw, to_config(raw)


def grid(raw) -> dict[str, list[str]]:
    return {k: str(v).split(",") for k, v in (raw.hydra.sweeper.params or {}).items()}


def test_every_paper_has_a_preset():
    assert {"lester2021", "spot_source_glue", "spot_target_superglue", "p_tuning_liu2021", "structured_glue",
            "hyperprompt_glue", "small_glue_minilm"} <= set(PRESETS)
    assert len([p for p in PRESETS if p.startswith("ptv2_")]) == 10  # 2 backbones x 5 SuperGLUE tasks


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_with_every_value_of_its_grid(name):
    assert sweep.check([f"+experiment={name}"], multirun=False) is (name != "spot_source_glue")
    raw, cfg = first_job(name)
    tasks_run = set(grid(raw).get("task", [])) | set(cfg.task)
    assert set(cfg.paper.scores) <= tasks_run  # a paper number names a task the preset runs
    assert set(cfg.paper.scores) <= set(tasks.TASKS)
    text = (REPO / "configs" / "experiment" / f"{name}.yaml").read_text()
    assert cfg.paper.scores or "unknown here" in text or name == "small_glue_minilm", \
        "a preset without paper numbers says they are unknown rather than leaving it silent"


def test_lester2021_is_the_papers_setting():
    raw, cfg = first_job("lester2021")
    assert (cfg.method.name, cfg.model.hf_id) == ("prompt_tuning", "google/t5-base-lm-adapt")
    assert (cfg.method.num_virtual_tokens, cfg.method.init) == (100, "class_labels")
    o = cfg.optimizer
    assert (o.name, o.lr, o.scheduler, o.weight_decay, o.warmup_steps, o.warmup_ratio) == (
        "adafactor", 0.3, "constant", 1e-5, 0, 0.0)
    assert (cfg.trainer.batch_size, cfg.trainer.max_steps) == (32, 30000)
    assert cfg.paper.scores == {"sst2": 95.07, "mrpc": 89.7, "rte": 68.6}
    assert grid(raw) == {"task": ["sst2", "mrpc", "rte"]}


def test_spot_targets_start_from_the_source_prompt():
    _, source = first_job("spot_source_glue")
    raw, target = first_job("spot_target_superglue")
    assert set(source.task) >= {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}
    assert target.method.init_from == source.resolved_run_dir()
    for cfg in (source, target):
        assert (cfg.method.num_virtual_tokens, cfg.method.init, cfg.model.dropout) == (100, "vocab_sample", 0.1)
        assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.trainer.max_steps) == ("adafactor", 0.3, 2 ** 18)
    assert target.trainer.eval_every == 500
    assert set(grid(raw)["task"]) == {"boolq", "cb", "copa", "multirc", "record", "superglue_rte", "wic", "wsc"}
    _, baseline = first_job("spot_prompt_tuning_superglue")
    assert baseline.method.init_from is None and baseline.method.init == "vocab_sample"
    _, tuned = first_job("spot_model_tuning_superglue")
    assert tuned.method.name == "model_tuning" and tuned.model.name == "t5-base-lm-adapt"


@pytest.mark.parametrize("name", [p for p in PRESETS if p.startswith("ptv2_")])
def test_p_tuning_v2_presets_follow_the_official_scripts(name):
    text = (REPO / "configs" / "experiment" / f"{name}.yaml").read_text()
    bs, lr, n, epochs = re.search(r"batch (\d+), lr ([\d.e-]+), prefix length (\d+), (\d+) epochs", text).groups()
    _, cfg = first_job(name)
    (task,) = cfg.task
    assert cfg.method.name == "p_tuning_v2" and cfg.model.family == "bert"
    assert cfg.model.hf_id in ("google-bert/bert-large-cased", "FacebookAI/roberta-large")
    assert (cfg.model.max_length, cfg.model.dropout, bool(cfg.model.trainable)) == (128, 0.1, False)
    assert (cfg.trainer.batch_size, cfg.optimizer.lr, cfg.method.num_virtual_tokens) == (int(bs), float(lr), int(n))
    per_epoch = math.ceil(TRAIN_ROWS[task] / int(bs))
    assert (cfg.trainer.max_steps, cfg.trainer.eval_every) == (int(epochs) * per_epoch, per_epoch)
    assert cfg.method.reparameterize == (name == "ptv2_bert_large_wic")
    assert list(cfg.paper.scores) == [task]


def test_the_published_p_tuning_v2_numbers():
    scores = {}
    for p in (REPO / "configs" / "experiment").glob("ptv2_*.yaml"):
        scores[p.stem.removeprefix("ptv2_")] = next(iter(yaml.safe_load(p.read_text())["paper"]["scores"].values()))
    order = ["boolq", "copa", "superglue_rte", "wic", "wsc"]
    assert [scores[f"bert_large_{t}"] for t in order] == [74.3, 77.0, 80.1, 75.1, 68.3]
    assert [scores[f"roberta_large_{t}"] for t in order] == [84.0, 92.0, 86.6, 73.7, 64.4]


def test_the_other_papers_presets():
    _, pt = first_job("p_tuning_liu2021")
    assert (pt.method.name, pt.method.encoder, pt.method.encoder_num_layers, pt.model.head) == (
        "p_tuning", "lstm", 2, "mlm")
    raw, st = first_job("structured_glue")
    assert grid(raw)["method"] == ["prompt_tuning", "structured"] and len(grid(raw)["optimizer.lr"]) >= 3
    raw, hp = first_job("hyperprompt_glue")
    assert hp.method.name == "hyperprompt" and hp.model.trainable and hp.trainer.eval_every == 2000
    assert grid(raw)["method.variant"] == ["global", "share", "sep"]
    raw, small = first_job("small_glue_minilm")
    g = grid(raw)
    assert set(g["method"]) == set(group for group in sweep_methods())
    assert {"sst2", "rte", "mrpc", "stsb", "cola"} <= set(g["task"]) and g["seed"] == ["1", "2", "3"]
    assert small.model.name == "minilm" and small.optimizer.lr is None  # each method's own lr, equal steps


def sweep_methods() -> list[str]:
    return [p.stem for p in (REPO / "configs" / "method").glob("*.yaml")]


def test_a_preset_runs_and_the_table_prints_the_papers_number(tmp_path):
    """The Lester preset on a tiny T5, one task: the run records paper.scores, and ptune table shows them."""
    done = ptune("train", "+experiment=lester2021", *tiny("model=tiny-t5", "trainer.max_steps=2"),
                 "method.num_virtual_tokens=4", "hydra.sweeper.params.task=rte", f"hydra.sweep.dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    table = ptune("table", str(tmp_path))
    assert table.returncode == 0, table.stderr
    assert "paper 68.6" in table.stdout
