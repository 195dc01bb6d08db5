"""Resume semantics (docs/reliability.md, "Resuming"): keys that change a run's meaning are refused before
anything is written, keys that may change are applied and recorded, a finished run is left untouched,
one process per run folder, and an unwritable run_dir fails before the model loads."""

from __future__ import annotations

import hashlib
import json
import multiprocessing

import pytest
from omegaconf import OmegaConf

from ptune import backbones, run_folder
from ptune.cli import main
from tests.conftest import SHARED_DATA

BASE = ["train", "model=tiny-bert", "method=prompt_tuning", "task=sst2", f"data.root={SHARED_DATA}",
        "data.train_limit=32", "data.eval_limit=16", "trainer.batch_size=8", "trainer.progress=false",
        "method.num_virtual_tokens=4", "trainer.eval_every=2"]


def digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != run_folder.LOCK}


def train(run_dir, *extra) -> int:
    keys = {e.split("=", 1)[0] for e in extra}  # each key once on the command line: extra wins
    return main([o for o in BASE if o.split("=", 1)[0] not in keys] + [f"run_dir={run_dir}", *extra])


@pytest.fixture()
def half(tmp_path):
    """A run stopped at step 2 of 4 (max_steps=2, then resumed with 4 is a continuation)."""
    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_steps=2") == 0
    return run_dir


@pytest.mark.parametrize("override,key", [("optimizer.lr=0.01", "optimizer.lr"),
                                          ("method.num_virtual_tokens=6", "method.num_virtual_tokens"),
                                          ("trainer.batch_size=4", "trainer.batch_size"),
                                          ("trainer.patience=3", "trainer.patience")])
def test_a_key_that_changes_the_run_is_refused_before_anything_is_written(half, override, key, capsys, monkeypatch):
    before = digest(half)
    monkeypatch.setattr(backbones, "load", lambda *a, **k: pytest.fail("the model must not load"))
    assert train(half, "trainer.max_steps=4", override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and "resuming would change the run" in err[0]
    assert digest(half) == before
    monkeypatch.undo()
    assert main(["eval", f"run={half}"]) == 0  # the folder still evaluates


def test_max_steps_may_grow_on_resume_and_is_recorded(half, capsys):
    assert train(half, "trainer.max_steps=4") == 0
    assert OmegaConf.load(half / "config.yaml").trainer.max_steps == 4
    results = json.loads((half / "results.json").read_text())
    said = capsys.readouterr()
    assert results["steps"] == 4 and "resuming" in said.out + said.err


def test_a_finished_run_is_left_untouched_and_says_so(half, capsys):
    before = digest(half)
    assert train(half, "trainer.max_steps=2") == 0
    said = capsys.readouterr()
    assert digest(half) == before and "already finished (2 steps, max_steps); left untouched" in " ".join(said.err.split())


def test_an_early_stopped_run_is_left_untouched(half, capsys):
    results = json.loads((half / "results.json").read_text())
    (half / "results.json").write_text(json.dumps(dict(results, stopped="early_stopping")))  # as early stopping writes it
    before = digest(half)
    assert train(half, "trainer.max_steps=50") == 0
    said = " ".join(capsys.readouterr().err.split())
    assert digest(half) == before and "already finished (2 steps, early_stopping); left untouched" in said


def _hold(run_dir, ready, release):
    with run_folder.lock(run_dir):
        ready.set()
        release.wait(60)


def test_a_second_process_on_the_same_run_folder_refuses_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(run_dir, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        assert train(run_dir, "trainer.max_steps=2") == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"ptune: error: run folder {run_dir} is in use by another ptune process (pid {holder.pid}); "
                       "wait for it or choose another run_dir=")
        assert not (run_dir / "config.yaml").exists()
    finally:
        release.set()
        holder.join(30)
    assert train(run_dir, "trainer.max_steps=2") == 0  # the lock dies with its holder


def test_an_unwritable_run_dir_fails_in_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(backbones, "load", lambda *a, **k: pytest.fail("the model must not load"))
    assert train(blocker / "run", "trainer.max_steps=2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ptune: error: run_dir={blocker / 'run'} cannot be written") and "\n" not in err


def test_a_run_saved_before_lr_scaling_resumes_only_as_it_trained(half, capsys):
    """A folder from before method.lr_scaling (one lr for every parameter, the head in the method's optimizer
    group): the saved config reads as lr_scaling=none, so the new default is refused as a change of settings;
    asked for explicitly, its optimizer state of other groups is refused in one line. It still evaluates."""
    from ptune.training import checkpoint as ckpt

    cfg = OmegaConf.load(half / "config.yaml")
    del cfg.method["lr_scaling"]
    OmegaConf.save(cfg, half / "config.yaml")
    state_dir = ckpt.latest_state_dir(half / "state")
    params, opt_state, progress, _ = ckpt.load_state(state_dir)
    assert len(opt_state["param_groups"]) == 2  # the prompt and the head, since issue 24
    capsys.readouterr()
    assert train(half, "trainer.max_steps=4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.lr_scaling='none' -> 'fan_in'" in err[0]
    first, second = opt_state["param_groups"]
    one_group = dict(opt_state, param_groups=[dict(first, params=first["params"] + second["params"])])
    ckpt.save_state(state_dir, params, one_group, progress)  # as an older ptune saved it: one group
    assert train(half, "trainer.max_steps=4", "method.lr_scaling=none") == 2
    err = capsys.readouterr().err  # found once the optimizer exists, after the model loaded: one error line
    errors = [line for line in err.splitlines() if line.startswith("ptune: error:")]
    assert len(errors) == 1 and "other parameter groups" in errors[0] and "another ptune version" in errors[0]
    assert "Traceback" not in err
    assert main(["eval", f"run={half}"]) == 0
