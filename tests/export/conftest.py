"""Tiny trained runs and their PEFT twins, shared by the export and import tests."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

import ptune
from ptune import tasks

P = 4
RUN = "outputs/prompt_tuning-sst2-minilm-s42-trainer.max_steps=300"  # the run README.md's "Export to PEFT" exports


def readme_export() -> tuple[list[str], str]:
    """README.md's "Export to PEFT" section: its ``ptune export`` command (as arguments) and its PEFT snippet."""
    from tests.conftest import REPO

    section = REPO.joinpath("README.md").read_text().split("### Export to PEFT\n", 1)[1].split("\n### ", 1)[0]
    command = re.search(r"```bash\n(ptune export [^#\n]*)", section).group(1).split()
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    return command, snippet


def run_readme_export(run_dir: str) -> dict:
    """The README's command and snippet on ``run_dir`` (for its path); returns the snippet's namespace."""
    from ptune.cli import main

    command, snippet = readme_export()
    assert f"run={RUN}" in command and f"{RUN}-peft" in snippet
    out = f"{run_dir}-peft"
    assert main([a.replace(RUN, run_dir) for a in command[1:]]) == 0
    assert Path(out, "adapter_config.json").is_file()
    namespace: dict = {}
    exec(compile(snippet.replace(f"{RUN}-peft", out), "README.md", "exec"), namespace)
    return namespace


def overrides(where, family: str, method: str, *extra: str, task: str = "sst2", steps: int = 2) -> list[str]:
    from tests.tasks.conftest import root_for

    base = [f"method={method}", f"model=tiny-{family}", f"task={task}", f"method.num_virtual_tokens={P}",
            f"data.root={root_for(tasks.get('sst2'), 'train')}", "data.train_limit=16", "data.eval_limit=8",
            f"trainer.max_steps={steps}", "trainer.eval_every=2", "trainer.batch_size=4", "trainer.progress=false",
            f"run_dir={where}"]
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(extra)  # each key once: extra wins


def train(where, family: str, method: str, *extra: str, task: str = "sst2") -> str:
    """A two-step tiny run; returns its folder."""
    ptune.train(overrides(where, family, method, *extra, task=task))
    return str(where)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained runs by (family, method, extra overrides, task), each trained once per module."""
    made: dict = {}
    base = tmp_path_factory.mktemp("runs")

    def get(family: str, method: str, *extra: str, task: str = "sst2") -> str:
        key = (family, method, extra, task)
        if key not in made:
            made[key] = train(base / f"run{len(made)}", family, method, *extra, task=task)
        return made[key]

    return get


T5_LABELS = torch.tensor([[1465, 1], [2841, 1], [1465, 1], [2841, 1]])


def peft_base(bb, num_labels: int = 2):
    """The frozen backbone as the model a PEFT user loads: BertForSequenceClassification (its classifier
    random, for the adapter to replace) or T5ForConditionalGeneration, on transformers' own attention."""
    if bb.family == "t5":
        model = copy.deepcopy(bb.model)
        model.set_attn_implementation("sdpa")
        return model
    config = copy.deepcopy(bb.model.config)
    config._attn_implementation = "sdpa"
    config.num_labels = num_labels
    torch.manual_seed(123)
    hf = BertForSequenceClassification(config)
    hf.bert.load_state_dict(bb.model.state_dict())
    return hf


def peft_logits(model, family: str, ids, mask):
    with torch.no_grad():
        if family == "t5":
            return model(input_ids=ids, attention_mask=mask, labels=T5_LABELS).logits
        return model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits


def ptune_logits(parts, task: str, ids, mask):
    """The run's logits for task ``task``: BERT's head, or T5's decoder on the same labels as PEFT's."""
    parts.method.eval(), parts.backbone.eval()
    bb = parts.backbone
    with torch.no_grad():
        prompt = parts.method(torch.full((len(ids),), parts.cfg.task_names.index(task)))
        if bb.family == "t5":
            enc, emask = bb.encode({"input_ids": ids, "attention_mask": mask}, prompt)
            return bb.decode(enc, emask, T5_LABELS, prompt, len(ids))
        batch = {"task": task, "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        return bb(batch, prompt).scores
