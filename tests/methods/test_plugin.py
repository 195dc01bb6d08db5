"""A method from another package (issue 26): a module outside ptune that registers through the entry-point group
``ptune.methods`` composes with ``method=<name>``, trains, checkpoints, evaluates and is described, without any
ptune file naming it; a second registration of a taken name fails in one line."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

import ptune
from ptune import config, methods, tasks
from ptune.errors import ConfigError
from tests.tasks.conftest import root_for

TOY = '''
from dataclasses import dataclass

import torch
from torch import nn

from ptune.config import MethodConfig
from ptune.methods import register
from ptune.methods.base import Prompt, PromptMethod


@dataclass
class ToyConfig(MethodConfig):
    name: str = "toy_prompt"
    num_virtual_tokens: int = 3
    lr: float = 0.1
    scale: float = 0.5  # a setting of the plugin's own


@register("toy_prompt", ToyConfig)
class ToyPrompt(PromptMethod):
    """Soft tokens as a scaled parameter (prompt tuning with an output scale)."""

    def __init__(self, cfg, dims, label_words, tasks=None):
        super().__init__(cfg, dims, label_words, tasks)
        self.tokens = nn.Parameter(torch.randn(cfg.num_virtual_tokens, dims.hidden_size))

    def forward(self, task_ids):
        return Prompt(embeds=(self.cfg.scale * self.tokens).unsqueeze(0).expand(len(task_ids), -1, -1))
'''


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    (tmp_path / "toy_method_pkg.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="toy_prompt", value="toy_method_pkg", group=config.METHOD_ENTRY_POINTS)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == config.METHOD_ENTRY_POINTS else real(**kw))
    monkeypatch.setattr(config, "_methods_loaded", False)
    yield "toy_prompt"
    for registry in (methods.METHODS, config.METHOD_CONFIGS):
        registry.pop("toy_prompt", None)
    ConfigStore.instance().repo.get("method", {}).pop("toy_prompt.yaml", None)
    ConfigStore.instance().repo.pop("method_toy_prompt_schema.yaml", None)
    sys.modules.pop("toy_method_pkg", None)


def test_a_plugin_method_composes_trains_checkpoints_and_is_described(toy_plugin, tmp_path):
    assert "toy_prompt" in config.group_choices("method")
    cfg = config.load(["method=toy_prompt", "method.scale=0.25"])
    assert type(cfg.method).__name__ == "ToyConfig" and cfg.method.scale == 0.25 and cfg.lr == 0.1

    root = str(root_for(tasks.get("sst2"), "train"))
    results = ptune.train({"method": "toy_prompt", "model": "tiny-bert", "task": "sst2", "data.root": root,
                           "trainer.max_steps": 2, "trainer.eval_every": 2, "data.train_limit": 16,
                           "data.eval_limit": 8, "trainer.progress": False, "run_dir": str(tmp_path / "run")})
    run_dir = Path(results["run_dir"])
    assert results["steps"] == 2 and (run_dir / "prompt.safetensors").is_file()
    assert json.loads((run_dir / "results.json").read_text())["best"] == results["best"]
    assert "toy_prompt" in (run_dir / "config.yaml").read_text()

    run = ptune.load(run_dir)  # the saved prompt loads back into the plugin's method and predicts
    frame = run.predict(["a charming and often affecting journey"])
    assert len(frame) == 1 and frame["prediction"][0] in ("negative", "positive")

    from ptune.describe import summary

    described = summary(config.load(["method=toy_prompt", "model=tiny-bert"]))
    hidden = config.load(["model=tiny-bert"]).model.config_overrides.get("hidden_size")
    assert described["method"] == "toy_prompt" and described["method_params"] == 3 * hidden


def test_a_name_registered_twice_is_one_line(toy_plugin):
    config.load_methods()

    with pytest.raises(ConfigError, match="registered twice") as err:
        @methods.register("prompt_tuning", config.METHOD_CONFIGS["prompt_tuning"])
        class Impostor(methods.PromptMethod):
            pass
    assert "\n" not in str(err.value)


def test_a_broken_plugin_names_itself(tmp_path, monkeypatch):
    (tmp_path / "broken_method_pkg.py").write_text("raise ImportError('needs some_missing_library')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="broken", value="broken_method_pkg", group=config.METHOD_ENTRY_POINTS)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [ep])
    monkeypatch.setattr(config, "_methods_loaded", False)
    with pytest.raises(ConfigError, match="method plugin 'broken'.*some_missing_library"):
        config.load_methods()
