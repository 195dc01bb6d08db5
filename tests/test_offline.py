"""Where models and data come from: a shared folder found by itself, a hub that does not answer, a choice the
user made (ptune/offline.py)."""

from __future__ import annotations

import pytest

from ptune import offline

HUB_VARS = ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "PTUNE_DATA_DIR", "PTUNE_SHARED")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in HUB_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(offline, "shared_folder", offline.shared_folder)
    return monkeypatch


def make_shared(root):
    (root / "models" / "hub").mkdir(parents=True)
    (root / "data" / "hub").mkdir(parents=True)
    return root


def test_a_shared_folder_makes_the_run_offline_and_says_so(clean_env, tmp_path):
    import os

    shared = make_shared(tmp_path / "elsewhere")
    clean_env.setenv("PTUNE_SHARED", str(shared))
    said = []
    assert offline.settle(said.append) == "shared"
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_HUB_CACHE"] == str(shared / "models" / "hub")
    assert os.environ["PTUNE_DATA_DIR"] == str(shared / "data" / "hub")
    assert len(said) == 1 and "offline" in said[0] and str(shared) in said[0] and "HF_HUB_OFFLINE=0" in said[0]


def test_a_shared_folder_beside_the_working_directory_is_found(clean_env, tmp_path):
    shared = make_shared(tmp_path / "shared")
    (tmp_path / "checkout").mkdir()
    clean_env.chdir(tmp_path / "checkout")
    assert offline.shared_folder() in (shared, offline.shared_folder())  # beside the cwd (or beside ptune's checkout)
    clean_env.setenv("PTUNE_SHARED", str(tmp_path / "nothing-here"))
    assert offline.shared_folder() is None


def test_an_unreachable_hub_goes_offline_in_one_line(clean_env, tmp_path):
    import os

    clean_env.setenv("PTUNE_SHARED", str(tmp_path / "none"))
    clean_env.setattr(offline, "hub_reachable", lambda timeout=offline.PROBE_SECONDS: False)
    said = []
    assert offline.settle(said.append) == "offline"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert len(said) == 1 and "did not answer in 3 s" in said[0] and "HF_HUB_OFFLINE=1" in said[0]


def test_a_reachable_hub_and_a_user_choice_are_left_alone(clean_env, tmp_path):
    import os

    clean_env.setenv("PTUNE_SHARED", str(tmp_path / "none"))
    clean_env.setattr(offline, "hub_reachable", lambda timeout=offline.PROBE_SECONDS: True)
    assert offline.settle(lambda line: pytest.fail(line)) == "online" and "HF_HUB_OFFLINE" not in os.environ
    clean_env.setenv("HF_HUB_OFFLINE", "0")
    make_shared(tmp_path / "shared-too")
    clean_env.setenv("PTUNE_SHARED", str(tmp_path / "shared-too"))
    assert offline.settle(lambda line: pytest.fail(line)) == "set" and os.environ["HF_HUB_OFFLINE"] == "0"


def test_the_probe_asks_with_its_timeout_and_counts_only_an_answer(monkeypatch):
    import io
    import urllib.error
    import urllib.request

    asked = []

    def no_answer(request, timeout):
        asked.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", no_answer)
    assert offline.hub_reachable(timeout=0.5) is False and asked == [0.5]

    def refused(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 429, "Too Many Requests", {}, io.BytesIO())

    monkeypatch.setattr(urllib.request, "urlopen", refused)
    assert offline.hub_reachable() is True  # an HTTP error is still the hub answering


def test_a_model_download_is_announced_once_and_only_when_it_happens(monkeypatch, tmp_path):
    """The weights of a model not in the cache come over the network after one line saying so; a cached model,
    an offline run, a local folder and a random-init model say nothing."""
    import huggingface_hub
    from huggingface_hub import constants

    from ptune.backbones import announce_download
    from ptune.config import ModelConfig

    cached: dict[str, str] = {}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: cached.get(f"{repo}/{name}"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    said: list[str] = []
    cfg = ModelConfig(name="big", hf_id="org/big-model", family="t5")
    assert announce_download(cfg, said.append)
    assert len(said) == 1 and "org/big-model" in said[0] and "HF_HUB_OFFLINE=1" in said[0]
    cached["org/big-model/model.safetensors.index.json"] = "/cache/index.json"  # a sharded checkpoint, cached
    assert not announce_download(cfg, said.append)
    assert not announce_download(ModelConfig(name="local", hf_id=str(tmp_path), family="bert"), said.append)
    assert not announce_download(ModelConfig(name="tiny", hf_id=None, family="bert", random_init=True), said.append)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not announce_download(ModelConfig(name="other", hf_id="org/other", family="bert"), said.append)
    assert len(said) == 1
