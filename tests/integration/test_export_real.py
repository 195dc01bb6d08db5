"""ptune export on the real MiniLM: a short prompt-tuning run, exported with README.md's command and loaded
with its PEFT snippet (PEFT's own loader, the hub checkpoint from ../shared), gives ptune's logits."""

from __future__ import annotations

import pytest
import torch

import ptune
from tests.backbones.test_peft_equivalence import inputs
from tests.conftest import SHARED, SHARED_DATA
from tests.export.conftest import P, run_readme_export

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SHARED / "models" / "hub").is_dir() or not SHARED_DATA.is_dir(),
                       reason="needs ../shared (models and data)"),
]


def test_prompt_tuning_on_minilm_exports_to_peft_with_equal_logits(tmp_path):
    run_dir = str(tmp_path / "run")
    ptune.train(["method=prompt_tuning", "model=minilm", "task=sst2", f"method.num_virtual_tokens={P}",
                 f"data.root={SHARED_DATA}", "data.train_limit=16", "data.eval_limit=8", "trainer.max_steps=2",
                 "trainer.eval_every=2", "trainer.batch_size=4", "trainer.progress=false", f"run_dir={run_dir}"])
    namespace = run_readme_export(run_dir)
    model, parts = namespace["model"], ptune.load(run_dir)._loaded.parts
    ids, mask = inputs()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits
        parts.method.eval(), parts.backbone.eval()
        batch = {"task": "sst2", "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        ours = parts.backbone(batch, parts.method(torch.zeros(4, dtype=torch.long))).scores
    assert (ours - ref).abs().max() < 1e-5
