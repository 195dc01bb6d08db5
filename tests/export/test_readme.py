"""README.md's "Export to PEFT": its command and PEFT snippet, executed on a tiny run; the snippet's logits
give the probabilities `ptune predict` gives."""

from __future__ import annotations

import torch
import transformers

import ptune
from tests.export.conftest import peft_base, run_readme_export, train


def test_the_readme_command_and_snippet_run_as_written(tmp_path, monkeypatch):
    run_dir = train(tmp_path / "run", "bert", "prompt_tuning")
    run = ptune.load(run_dir)
    tiny = peft_base(run._loaded.parts.backbone)
    asked = []

    def base_model(name, **kwargs):  # the tiny random-init backbone stands in for the hub's MiniLM
        asked.append((name, kwargs))
        return tiny

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", base_model)
    namespace = run_readme_export(run_dir)
    assert asked == [(run.cfg.model.hf_id, {"num_labels": 2})]
    ours = run.predict(["a charming and often affecting journey"])
    probs = namespace["logits"].softmax(-1)[0]
    assert torch.allclose(probs, torch.tensor([ours["score_negative"][0], ours["score_positive"][0]],
                                              dtype=probs.dtype), atol=1e-5)
