"""``ptune similarity`` (SPoT's retrieval): both metrics on constructed prompts with a known ranking, deep prompts
place by place, refusals naming both sides, the three retrieval rules (the weighted-average file loads through
method.init_from with the expected parameters), the JSON and heatmap, and source folders left unwritten."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console

from ptune import files, run, tasks
from ptune.analysis import similarity
from ptune.cli import main
from ptune.config import load
from ptune.errors import ConfigError
from ptune.methods import transfer
from ptune.training import checkpoint as ckpt
from tests.conftest import REPO, sst2_examples
from tests.tasks.conftest import root_for

HIDDEN, TOKENS = 32, 4  # tiny-bert's hidden size; method.num_virtual_tokens=4
META = {"format": ckpt.FORMAT, "method": "prompt_tuning", "family": "bert"}


def tiny_meta() -> dict[str, str]:
    return run.run_metadata(load(["method=prompt_tuning", "model=tiny-bert", "task=sst2"]))


def pattern(*tokens: tuple[float, float]) -> torch.Tensor:
    """A (TOKENS, HIDDEN) prompt: the given 2-d tokens repeated to TOKENS rows, in the first two dimensions."""
    out = torch.zeros(TOKENS, HIDDEN)
    for i in range(TOKENS):
        out[i, :2] = torch.tensor(tokens[i % len(tokens)])
    return out


def make_run(root: Path, name: str, folded: dict[str, torch.Tensor], tasks_: list[str], *, params=None,
             meta: dict | None = None, step: int | None = None) -> Path:
    """A run folder as ptune writes one: config.yaml, folded.safetensors (row t: task t) and, with ``params``,
    prompt.safetensors (``method.*``); at ``step``, the snapshot instead of the best checkpoint."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"method": {"name": "prompt_tuning"}, "seed": 1}), folder / "config.yaml")
    header = dict(meta or tiny_meta(), task="+".join(tasks_), tasks=",".join(tasks_), step=str(step or 5))
    where = folder if step is None else folder / "snapshots" / f"step-{step}"
    files.atomic_save_tensors(where / "folded.safetensors", folded, header)
    if params is not None:
        files.atomic_save_tensors(where / "prompt.safetensors", {f"method.{k}": v for k, v in params.items()}, header)
    return folder


def plain(root: Path, name: str, prompt: torch.Tensor, task: str, **kw) -> Path:
    """A one-task prompt_tuning run whose prompt (its parameter and its folded form) is ``prompt``."""
    return make_run(root, name, {"embeds": prompt.unsqueeze(0)}, [task], params={"prompt": prompt}, **kw)


def digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def similar(*args: str | Path) -> int:
    return main(["similarity", *map(str, args)])


def test_the_two_metrics_by_hand():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert similarity.avg_tokens(a, b) == pytest.approx(1 / math.sqrt(2))  # (.5, .5) against (1, 0)
    assert similarity.per_token(a, b) == pytest.approx(0.5)  # pairs: 1, 1, 0, 0
    assert similarity.avg_tokens(a, a.flip(0)) == pytest.approx(1.0)  # the same tokens in another order
    assert similarity.per_token(a, a) == pytest.approx(0.5)  # not 1: every pair of tokens counts


def test_a_known_ranking_for_each_metric_and_the_rules(tmp_path):
    """The metrics disagree by construction: ``swapped`` holds the target's tokens in another order (average
    tokens 1.0, per-token 0.5), ``leaning`` leans both tokens towards the first (0.74 and 0.52)."""
    lib = tmp_path / "lib"
    target = plain(tmp_path, "target", pattern((1, 0), (0, 1)), "sst2")
    plain(lib, "swapped", pattern((0, 1), (1, 0)), "rte")
    plain(lib, "leaning", pattern((1, 0.05), (1, 0.05)), "mrpc")
    plain(lib, "opposite", pattern((-1, 0), (0, -1)), "cola")
    before = digest(lib) | digest(target)
    assert similar(target, lib, "-k", "2", "-o", tmp_path / "out" / "sim") == 0
    record = json.loads((tmp_path / "out" / "sim.json").read_text())
    (t,) = record["targets"]
    rows = {r["source"]: r for r in t["ranking"]}
    lean = (1 + 0.05) / 2 / (math.sqrt(0.5) * math.sqrt(1 + 0.05**2))
    assert rows["swapped"]["avg_tokens"] == pytest.approx(1.0) and rows["swapped"]["per_token"] == pytest.approx(0.5)
    assert rows["leaning"]["avg_tokens"] == pytest.approx(lean)
    assert rows["leaning"]["per_token"] == pytest.approx((1 + 0.05) / math.sqrt(1 + 0.05**2) / 2)
    assert rows["opposite"]["avg_tokens"] == pytest.approx(-1.0)
    assert [r["source"] for r in t["ranking"]] == ["swapped", "leaning", "opposite"]  # by avg_tokens, the default
    assert (rows["leaning"]["rank_per_token"], rows["swapped"]["rank_per_token"]) == (1, 2)
    rules = t["rules"]
    assert rules["mixture"] == "task=[rte,mrpc,sst2]"
    assert rules["best_of_top_k"] == {"sweep": f"method.init_from={lib / 'swapped'},{lib / 'leaning'}",
                                      "overrides": [[f"method.init_from={lib / n}"] for n in ("swapped", "leaning")]}
    weights = rules["weighted_average"]["weights"]
    assert weights == pytest.approx({"swapped": 1 / (1 + lean), "leaning": lean / (1 + lean)})
    # every score: each pair of entries under both metrics, the target first, then the sources nearest first
    assert [e["label"] for e in record["entries"]] == ["target", "swapped", "leaning", "opposite"]
    for m in ("avg_tokens", "per_token"):
        assert len(record["matrix"][m]) == 4 and all(len(row) == 4 for row in record["matrix"][m])
        assert record["matrix"][m][0][1] == record["matrix"][m][1][0] == pytest.approx(rows["swapped"][m])
        assert record["matrix"][m][2][3] == pytest.approx(similarity.MEASURES[m](pattern((1, 0.05)), -torch.eye(2, 32)))
    png = (tmp_path / "out" / "sim.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert digest(lib) | digest(target) == before  # sources (and the target) are only read

    assert similar(target, lib, "--metric", "per_token", "-o", tmp_path / "per") == 0
    ranked = json.loads((tmp_path / "per.json").read_text())["targets"][0]["ranking"]
    assert [r["source"] for r in ranked] == ["leaning", "swapped", "opposite"]


def test_the_weighted_average_loads_through_init_from(tmp_path):
    torch.manual_seed(0)
    base = torch.randn(TOKENS, HIDDEN)
    near, mid = base + 0.1 * torch.randn(TOKENS, HIDDEN), base + 0.8 * torch.randn(TOKENS, HIDDEN)
    lib = tmp_path / "lib"
    target = plain(tmp_path, "target", base, "sst2")
    plain(lib, "near", near, "rte")
    plain(lib, "mid", mid, "mrpc")
    plain(lib, "far", -base, "cola")
    assert similar(target, lib, "-k", "2", "-o", tmp_path / "sim") == 0
    record = json.loads((tmp_path / "sim.json").read_text())["targets"][0]
    s = {r["source"]: r["avg_tokens"] for r in record["ranking"]}
    expected = (s["near"] * near + s["mid"] * mid) / (s["near"] + s["mid"])
    path = tmp_path / "sim.init.safetensors"
    assert record["rules"]["weighted_average"]["file"] == str(path)
    cfg = load(["method=prompt_tuning", "model=tiny-bert", "task=sst2", "trainer.progress=false",
                f"method.num_virtual_tokens={TOKENS}", f"run_dir={tmp_path / 'new'}", f"method.init_from={path}"])
    parts = run.build(cfg, examples={"train": sst2_examples(), "eval": sst2_examples()})
    transfer.apply(parts.method, cfg, *transfer.check(cfg, run.run_metadata(cfg)))
    assert torch.allclose(parts.method.prompt, expected, atol=1e-6)
    _, meta = files.read_tensors(path)
    assert [p["weight"] for p in json.loads(meta["similarity"])] == pytest.approx(
        [s["near"] / (s["near"] + s["mid"]), s["mid"] / (s["near"] + s["mid"])])


def deep(*layers: tuple[float, float]) -> dict[str, torch.Tensor]:
    """A folded deep prompt: per layer, keys along ``key`` and values along ``value`` (2-d, then zeros), the same
    vector at every token and head; (1 task, 2 heads, 3 tokens, 4 head dims) each."""
    out = {}
    for i, (key, value) in enumerate(layers):
        for name, angle in (("key", key), ("value", value)):
            t = torch.zeros(1, 2, 3, 4)
            t[..., 0], t[..., 1] = math.cos(angle), math.sin(angle)
            out[f"encoder.{i}.{name}"] = t
    return out


def test_deep_prompts_are_compared_layer_by_layer(tmp_path):
    lib, meta = tmp_path / "lib", dict(tiny_meta(), method="p_tuning_v2")
    target = make_run(tmp_path, "target", deep((0, 0), (0, 0)), ["rte"], meta=meta)
    make_run(lib, "same", deep((0, 0), (0, 0)), ["cb"], meta=meta)
    make_run(lib, "half", deep((0, 0), (math.pi / 2, math.pi / 2)), ["copa"], meta=meta)  # layer 1 orthogonal
    make_run(lib, "none", deep((0, 0), (math.pi, math.pi)), ["wic"], meta=meta)  # layer 1 opposite
    assert similar(target, lib, "-k", "2", "-o", tmp_path / "sim") == 0
    record = json.loads((tmp_path / "sim.json").read_text())
    assert record["deep"] and record["places"] == ["encoder.0", "encoder.1"]
    ranked = record["targets"][0]["ranking"]
    assert [r["source"] for r in ranked] == ["same", "half", "none"]
    for m in ("avg_tokens", "per_token"):
        assert [r[m] for r in ranked] == pytest.approx([1.0, 0.5, 0.0], abs=1e-9)
        assert ranked[1]["places"][m] == pytest.approx({"encoder.0": 1.0, "encoder.1": 0.0}, abs=1e-9)
    # no prompt.safetensors in these hand-made runs: the weighted average says why, the rest still works
    assert "no checkpoint at" in record["targets"][0]["rules"]["weighted_average"]["error"]


def test_key_and_value_are_averaged_within_a_layer(tmp_path):
    lib, meta = tmp_path / "lib", dict(tiny_meta(), method="p_tuning_v2")
    target = make_run(tmp_path, "target", deep((0, 0)), ["rte"], meta=meta)
    make_run(lib, "keys", deep((0, math.pi / 2)), ["cb"], meta=meta)  # keys the same, values orthogonal
    assert similar(target, lib, "-o", tmp_path / "sim") == 0
    (row,) = json.loads((tmp_path / "sim.json").read_text())["targets"][0]["ranking"]
    assert row["avg_tokens"] == pytest.approx(0.5) and row["per_token"] == pytest.approx(0.5)


def test_a_multi_task_source_is_compared_per_task(tmp_path):
    """``mix`` keeps a prompt per task (method.per_task: copies.<t>.prompt), ``shared`` one for both of its tasks;
    the weighted average takes mix's qqp copy, as ``method.init_from_task=qqp`` would."""
    lib = tmp_path / "lib"
    target = plain(tmp_path, "target", pattern((1, 0)), "sst2")
    mnli, qqp, both = pattern((0, 1)), pattern((1, 0.1)), pattern((1, 1))
    make_run(lib, "mix", {"embeds": torch.stack([mnli, qqp])}, ["mnli", "qqp"],
             params={"copies.0.prompt": mnli, "copies.1.prompt": qqp})
    make_run(lib, "shared", {"embeds": torch.stack([both] * 2)}, ["rte", "cb"], params={"prompt": both})
    assert similar(target, lib, "-k", "2", "-o", tmp_path / "sim") == 0
    t = json.loads((tmp_path / "sim.json").read_text())["targets"][0]
    assert [r["source"] for r in t["ranking"]] == ["mix:qqp", "shared", "mix:mnli"]
    assert t["rules"]["best_of_top_k"] == {
        "overrides": [[f"method.init_from={lib / 'mix'}", "method.init_from_task=qqp"], [f"method.init_from={lib / 'shared'}"]],
        "sweep": None}
    assert t["rules"]["mixture"] == "task=[qqp,rte,cb,sst2]"
    s = {r["source"]: r["avg_tokens"] for r in t["ranking"]}
    init, _ = files.read_tensors(tmp_path / "sim.init.safetensors")
    expected = (s["mix:qqp"] * qqp + s["shared"] * both) / (s["mix:qqp"] + s["shared"])
    assert set(init) == {"method.prompt"} and torch.allclose(init["method.prompt"], expected, atol=1e-6)


def test_a_multi_task_target_gets_a_ranking_per_task_and_task_picks_one(tmp_path):
    lib = tmp_path / "lib"
    target = make_run(tmp_path, "target", {"embeds": torch.stack([pattern((1, 0)), pattern((0, 1))])}, ["rte", "cb"])
    plain(lib, "a", pattern((1, 0)), "mnli")
    plain(lib, "b", pattern((0, 1)), "qqp")
    assert similar(target, lib, "-k", "1", "-o", tmp_path / "all") == 0
    record = json.loads((tmp_path / "all.json").read_text())
    assert {t["label"]: t["ranking"][0]["source"] for t in record["targets"]} == {"target:rte": "a", "target:cb": "b"}
    assert similar(target, lib, "--task", "cb", "-k", "1", "-o", tmp_path / "cb") == 0
    (only,) = json.loads((tmp_path / "cb.json").read_text())["targets"]
    assert only["label"] == "target:cb" and only["rules"]["mixture"] == "task=[qqp,cb]"
    with pytest.raises(ConfigError, match="--task 'wic' is not a task of the target .*choose one of: rte, cb"):
        similarity.main(target, [str(lib)], None, "wic", "avg_tokens", 1, tmp_path / "x", Console())


def test_mismatched_backbones_and_shapes_are_refused_naming_both_sides(tmp_path, capsys):
    target = plain(tmp_path, "target", pattern((1, 0)), "sst2")
    plain(tmp_path / "other", "t5", pattern((1, 0)), "rte", meta=dict(tiny_meta(), model="tiny-t5", family="t5"))
    assert similar(target, tmp_path / "other", "-o", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "source t5 is model='tiny-t5'" in err and f"target target is model={tiny_meta()['model']!r}" in err
    longer = torch.zeros(1, TOKENS + 2, HIDDEN)
    make_run(tmp_path / "long", "long", {"embeds": longer}, ["rte"])
    assert similar(target, tmp_path / "long", "-o", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip()
    assert "source long's prompt is embeds (6, 32), target target's is embeds (4, 32)" in err
    assert not (tmp_path / "x.json").exists()


def test_steps_out_and_missing_prompts(tmp_path, capsys):
    lib = tmp_path / "lib"
    target = plain(tmp_path, "target", pattern((1, 0)), "sst2", step=2)
    plain(lib, "early", pattern((1, 0.2)), "rte", step=2)
    plain(lib, "late", pattern((1, 0.2)), "mrpc")  # no snapshot at step 2: skipped, said so
    assert similar(target, lib, "--step", "2", "-o", tmp_path / "sim") == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "late has no snapshot at step 2 (it has: none" in out
    record = json.loads((tmp_path / "sim.json").read_text())
    assert record["point"] == "step 2" and [r["source"] for r in record["targets"][0]["ranking"]] == ["early"]
    assert similar(target, lib, "--step", "3", "-o", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "error: target " in err and "has no snapshot at step 3 (it has: 2;" in err
    assert similar(target, lib, "--step", "2", "-o", lib / "early" / "sim") == 2  # never into a run folder
    assert "never writes run folders" in capsys.readouterr().err
    assert similar(target, tmp_path / "nowhere") == 2
    assert "no such folder" in capsys.readouterr().err


def test_help_documents_the_command():
    out = subprocess.run([sys.executable, "-m", "ptune", "similarity", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    for words in ("cos(mean_i e1_i, mean_j e2_j)", "L x L", "--step", "best of top-k", "weighted average",
                  "task=[", "<out>.json", "<out>.png", "heatmap", "layer by layer", "method.init_from"):
        assert words in out, words
    assert "similarity" in subprocess.run([sys.executable, "-m", "ptune", "--help"], capture_output=True, text=True,
                                          cwd=REPO).stdout


def test_end_to_end_on_trained_runs(tmp_path, capsys):
    """Three tiny runs trained by the CLI with a snapshot at step 1; similarity at that step and at the best. They
    start from one text's tokens (as SPoT's prompts start from common tokens), so their similarities are positive."""
    lib = tmp_path / "sweep"
    for task, where in (("sst2", tmp_path / "target"), ("mnli", lib / "mnli"), ("cb", lib / "cb")):
        assert main(["train", "method=prompt_tuning", "model=tiny-bert", f"task={task}", "trainer.progress=false",
                     "trainer.batch_size=4", f"method.num_virtual_tokens={TOKENS}", f"run_dir={where}",
                     f"data.root={root_for(tasks.get(task), 'train')}", "data.train_limit=8", "data.eval_limit=8",
                     "trainer.max_steps=2", "trainer.eval_every=2", "trainer.snapshot_steps=[1]", "method.init=text",
                     "method.init_text='a great movie'"]) == 0
    before = digest(lib)
    capsys.readouterr()
    assert similar(tmp_path / "target", lib, "--step", "1", "-k", "2", "-o", tmp_path / "sim") == 0
    out = capsys.readouterr().out
    assert "sources for target (step 1)" in out and "best of top-2" in out and "method.init_from=" in out
    record = json.loads((tmp_path / "sim.json").read_text())
    assert {r["source"] for r in record["targets"][0]["ranking"]} == {"mnli", "cb"}
    assert (tmp_path / "sim.png").is_file() and (tmp_path / "sim.init.safetensors").is_file()
    assert similar(tmp_path / "target", str(lib / "*"), "-o", tmp_path / "best") == 0  # a quoted glob, the best
    assert json.loads((tmp_path / "best.json").read_text())["point"] == "best checkpoint"
    cfg = load(["method=prompt_tuning", "model=tiny-bert", "task=sst2", f"method.num_virtual_tokens={TOKENS}",
                "method.init=text", "method.init_text='a great movie'", f"method.init_from={tmp_path / 'sim.init.safetensors'}"])
    transfer.check(cfg, run.run_metadata(cfg))  # the file passes init_from's checks for a run like the target
    assert digest(lib) == before


def test_overrides_survive_hydra_s_grammar_and_heatmap_labels_tell_runs_apart(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ptune.analysis import retrieval

    parser = OverridesParser.create()
    for path in ("/runs/prompt_tuning-rte-t5-s1", "/runs/p-rte-s1-optimizer.lr=0.03", "/runs/a,b", "/r/x~y'z"):
        value = retrieval.hydra_value(path)
        assert parser.parse_override(f"method.init_from={value}").value() == path
    assert retrieval.hydra_value("/runs/plain-s1") == "/runs/plain-s1"
    lib = tmp_path / "lib"
    target = plain(tmp_path, "pt-rte-s1", pattern((1, 0)), "rte")
    plain(lib, "pt-mnli-s1", pattern((1, 0)), "mnli")
    plain(lib, "pt-mnli-s2", pattern((1, 0.5)), "mnli")
    plain(lib, "pt-cb-s1", pattern((0, 1)), "cb")
    targets, library, _ = similarity.load(target, [str(lib)], None, None)
    assert sorted(similarity.heatmap_labels([*targets, *library])) == ["cb", "mnli (s1)", "mnli (s2)", "rte"]
