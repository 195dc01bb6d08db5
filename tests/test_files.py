"""ptune/files.py: atomic writes keep the user's umask, and a failed write (a full disk) leaves nothing
half-written behind and says so in one line; a failed training-state save leaves no state.tmp/."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from ptune import files
from ptune.errors import CheckpointError
from ptune.training import checkpoint as ckpt


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        files.atomic_write_json(tmp_path / "results.json", {"a": 1})
        files.atomic_save_tensors(tmp_path / "prompt.safetensors", {"x": torch.zeros(2)})
        files.atomic_write_bytes(tmp_path / "sub" / "p.csv", b"a\n")
    finally:
        os.umask(old)
    for name in ("results.json", "prompt.safetensors", "sub/p.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("write", [
    lambda p: files.atomic_write_json(p / "results.json", {"a": 1}),
    lambda p: files.atomic_save_tensors(p / "results.json", {"x": torch.zeros(2)}),
])
def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch, write):
    (tmp_path / "results.json").write_text("old\n")
    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(CheckpointError) as err:
        write(tmp_path)
    assert "results.json" in str(err.value) and "No space left" in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / "results.json").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_a_failed_state_save_leaves_no_partial_folder(tmp_path, monkeypatch):
    params = {"method.prompt": torch.ones(3)}
    opt = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    ckpt.save_state(tmp_path / "state", params, opt, {"step": 1})
    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        ckpt.save_state(tmp_path / "state", {"method.prompt": torch.zeros(3)}, opt, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]  # no state.tmp/, no state.old/
    saved, _, progress, _ = ckpt.load_state(tmp_path / "state")
    assert progress["step"] == 1 and torch.equal(saved["method.prompt"], torch.ones(3))


@pytest.mark.parametrize("content", ['{"progress": {"step": 1}}', '[]', '{"optimizer": {}, "progress": {}, "rng": {}}'])
def test_a_state_json_without_its_keys_is_the_documented_line(tmp_path, content):
    opt = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    ckpt.save_state(tmp_path / "state", {"method.prompt": torch.ones(3)}, opt, {"step": 1})
    (tmp_path / "state" / "state.json").write_text(content)
    with pytest.raises(CheckpointError, match="is unreadable.*delete it to start over") as err:
        ckpt.load_state(tmp_path / "state")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700)])
def test_dir_mode_is_what_mkdir_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert files.dir_mode() == mode
        (tmp_path / "made").mkdir()
        assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == mode
    finally:
        os.umask(old)
