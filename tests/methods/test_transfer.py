"""SPoT transfer (method.init_from): the initial parameters equal the source's, heads are not copied, a
multi-task source gives the chosen task's prompt, mismatches fail in one line, the source is never written."""

from __future__ import annotations

import hashlib

import pytest
import torch

from ptune import files, run, tasks
from ptune.cli import main
from ptune.config import load
from ptune.errors import ConfigError
from ptune.methods import transfer
from ptune.training.loop import fit
from tests.conftest import FIXTURE_DATA, sst2_examples
from tests.tasks.conftest import root_for


def overrides(method, where, *extra):
    return [f"method={method}", "model=tiny-bert", "task=sst2", "trainer.progress=false", "trainer.batch_size=4",
            "method.num_virtual_tokens=4", f"run_dir={where}", *extra]


def trained(method, where, *extra, steps=3):
    cfg = load(overrides(method, where, f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", *extra))
    ex = sst2_examples()
    parts = run.build(cfg, examples={"train": ex, "eval": ex})
    fit(parts)
    return parts


def target(method, where, source, *extra):
    cfg = load(overrides(method, where, f"method.init_from={source}", *extra))
    ex = sst2_examples()
    parts = run.build(cfg, examples={"train": ex, "eval": ex})
    transfer.apply(parts.method, cfg, *transfer.check(cfg, run.run_metadata(cfg)))
    return parts


def digest(folder) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("method,extra", [("prompt_tuning", ()), ("p_tuning_v2", ()), ("p_tuning", ("method.encoder=mlp",)),
                                          ("structured", ()), ("hyperprompt", ()), ("prefix_tuning", ())])
def test_the_initial_parameters_are_the_source_s_and_heads_are_not_copied(method, extra, tmp_path):
    source = trained(method, tmp_path / "src", *extra)
    saved, _ = files.read_tensors(tmp_path / "src" / "prompt.safetensors")
    new = target(method, tmp_path / "dst", tmp_path / "src", *extra)
    for name, p in new.method.named_parameters():
        assert torch.equal(p, saved[f"method.{name}"]), name
    fresh_head = run.build(load(overrides(method, tmp_path / "x", *extra)),
                           examples={"train": sst2_examples(), "eval": sst2_examples()}).backbone.heads
    for (n, a), b in zip(new.backbone.heads.named_parameters(), fresh_head.parameters(), strict=True):
        assert torch.equal(a, b), n  # the head starts as in any run, not from the source's
    assert any(not torch.equal(a, b) for a, b in zip(source.backbone.heads.parameters(),
                                                     new.backbone.heads.parameters(), strict=True))


def test_a_run_from_a_source_trains_and_never_writes_the_source(tmp_path):
    trained("prompt_tuning", tmp_path / "src", "trainer.snapshot_steps=[2]")
    before = digest(tmp_path / "src")
    assert (tmp_path / "src" / "snapshots" / "step-2" / "folded.safetensors").is_file()
    assert main(["train", *overrides("prompt_tuning", tmp_path / "dst", f"method.init_from={tmp_path / 'src'}",
                                     "method.init_from_step=2", f"data.root={root_for(tasks.get('sst2'))}",
                                     "data.train_limit=16", "data.eval_limit=16", "trainer.max_steps=2",
                                     "trainer.eval_every=2")]) == 0
    assert digest(tmp_path / "src") == before


def test_a_multi_task_source_gives_the_chosen_task_s_prompt(tmp_path):
    mix = ["task=[mnli,qqp]", f"data.root={FIXTURE_DATA}", "data.train_limit=12", "data.eval_limit=6",
           "trainer.max_steps=4", "trainer.eval_every=4", "data.sampling=equal"]
    for method, extra in (("prompt_tuning", ["method.per_task=true"]), ("structured", [])):
        src = tmp_path / method
        cfg = load([f"method={method}", "model=tiny-bert", "trainer.progress=false", "trainer.batch_size=4",
                    "method.num_virtual_tokens=4", f"run_dir={src}", *mix, *extra])
        parts = run.build(cfg)
        fit(parts)
        folded, _ = files.read_tensors(src / "folded.safetensors")
        with pytest.raises(ConfigError, match="method.init_from_task"):
            target(method, tmp_path / "x", src)
        with pytest.raises(ConfigError, match="'rte' is not a task of .*mnli, qqp"):
            target(method, tmp_path / "x", src, "method.init_from_task=rte")
        new = target(method, tmp_path / f"{method}-dst", src, "method.init_from_task=qqp")
        new.method.eval()
        with torch.no_grad():
            got = new.method(torch.zeros(1, dtype=torch.long)).embeds[0]
        assert torch.allclose(got, folded["embeds"][1], atol=1e-6)  # qqp is task id 1 of the source
        assert not torch.allclose(got, folded["embeds"][0], atol=1e-4)


def test_mismatches_fail_in_one_line_naming_both_sides(tmp_path):
    trained("prompt_tuning", tmp_path / "src")
    src = tmp_path / "src"
    cases = {("p_tuning_v2",): "holds method='prompt_tuning', this run has method='p_tuning_v2'",
             ("prompt_tuning", "method.num_virtual_tokens=7"): r"prompt has shape \(4, 32\) there, \(7, 32\) here",
             ("prompt_tuning", "method.init_from_step=5"): "has no snapshot at that step",
             ("prompt_tuning", f"method.init_from={tmp_path / 'nowhere'}"): "no run folder or prompt file there"}
    for (method, *extra), message in cases.items():
        with pytest.raises(ConfigError, match=message):
            target(method, tmp_path / "x", src, *extra)
    with pytest.raises(ConfigError, match="holds model='.*', this run has model="):
        cfg = load(["method=prompt_tuning", "model=tiny-t5", "method.num_virtual_tokens=4", f"method.init_from={src}"])
        transfer.check(cfg, run.run_metadata(cfg))
