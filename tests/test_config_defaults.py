"""One source for every default: a group's YAML extends its schema (a dataclass in ptune/config.py or a method's
module, stored in Hydra's ConfigStore as <group>_schema) and holds only what differs from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ptune.config import RUN_KEYS, SCHEMAS, Config, load_methods
from tests.conftest import REPO

CONFIGS = REPO / "configs"
GROUP_YAMLS = sorted(p for group in (*SCHEMAS, "method") for p in (CONFIGS / group).glob("*.yaml"))


def schema_of(path: Path) -> tuple[str, object]:
    """The schema a group YAML extends, as the entry its defaults list names and the dataclass instance it stands for."""
    group = path.parent.name
    if group == "method":
        return f"/method_{path.stem}_schema@_here_", load_methods()[path.stem](name=path.stem)
    return f"/{group}_schema@_here_", SCHEMAS[group]()


def repeated(settings: dict, default: object) -> list[str]:
    """The keys of ``settings`` whose value is ``default``'s (30 and 30.0 count as the same value)."""
    fields = dataclasses.asdict(default)  # type: ignore[call-overload]
    return [key for key, value in settings.items() if key in fields and value == fields[key]]


def group_settings(path: Path) -> dict[str, tuple[dict, object]]:
    """Where a YAML sets keys -> (those keys, the schema instance they extend); a task YAML nests under its name."""
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    if path.parent.name == "task":
        return {f"{name}.": (spec or {}, SCHEMAS["task"]()) for name, spec in data.items()}
    return {"": (data, schema_of(path)[1])}


@pytest.mark.parametrize("path", GROUP_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_yaml_holds_only_what_differs_from_its_schema(path):
    same = [f"{prefix}{key}" for prefix, (settings, default) in group_settings(path).items()
            for key in repeated(settings, default)]
    assert not same, (f"configs/{path.parent.name}/{path.name} repeats its schema's default for "
                      f"{', '.join(same)}: drop it (the default and its reason live on the dataclass field)")


@pytest.mark.parametrize("path", GROUP_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_yaml_extends_its_schema(path):
    """The schema's defaults reach the composed config only through the YAML's defaults list."""
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    if path.parent.name == "task":
        tasks = [k for k in yaml.safe_load(path.read_text()) or {} if k != "defaults"]
        single = [d for d in defaults if isinstance(d, str) and d.startswith("/task_schema@")]
        if single:  # one task: its schema under its name; a mixture lists tasks (each extends its own)
            assert single == [f"/task_schema@{path.stem}"] and set(tasks) <= {path.stem}, path
        else:
            assert all((CONFIGS / "task" / f"{d}.yaml").is_file() for d in defaults if d != "_self_"), path
        return
    entry, _ = schema_of(path)
    assert defaults[:1] == [entry] and "_self_" in defaults, \
        f"configs/{path.parent.name}/{path.name}: its defaults list starts with {entry}, then _self_"


def test_the_root_config_holds_only_what_differs_from_config():
    data = yaml.safe_load((CONFIGS / "config.yaml").read_text())
    assert "/run_schema@_here_" in data["defaults"]
    default = Config()
    fields = {k: getattr(default, k) for k in RUN_KEYS}
    same = [k for k in RUN_KEYS if k in data and not dataclasses.is_dataclass(fields[k]) and data[k] == fields[k]]
    same += [f"{k}.{key}" for k in RUN_KEYS if dataclasses.is_dataclass(fields[k]) and isinstance(data.get(k), dict)
             for key in repeated(data[k], fields[k])]
    assert not same, f"configs/config.yaml repeats Config's default for {', '.join(same)}: drop it"


def test_the_check_sees_a_repeated_default(tmp_path):
    """The test above could fail: a model YAML that spells out a default is caught, naming the key."""
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "some-model.yaml"
    path.write_text("defaults:\n  - /model_schema@_here_\n  - _self_\n\nname: some-model\nmax_length: 128\n")
    assert [key for _, (settings, default) in group_settings(path).items()
            for key in repeated(settings, default)] == ["max_length"]
    task = tmp_path / "task" / "rte.yaml"
    task.parent.mkdir()
    task.write_text("defaults:\n  - /task_schema@rte\n  - _self_\n\nrte:\n  weight: 1\n  eval_limit: 50\n")
    assert [f"{p}{key}" for p, (settings, default) in group_settings(task).items()
            for key in repeated(settings, default)] == ["rte.weight"]
