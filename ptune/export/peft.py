"""``ptune export run=DIR format=peft [out=DIR] [task=NAME]``: a run as Hugging Face PEFT adapters.

    model = PeftModel.from_pretrained(base, "outputs/<run>-peft")     # PEFT's own loader, nothing of ptune's

The adapters come from the run's folded form (``folded.safetensors``: every encoder and hypernetwork
evaluated away, ``PromptMethod.export``), so no model weights are read. The format is peft 0.21.2's, read
from its source (``peft/config.py``, ``utils/save_and_load.py``, ``peft_model.py``) and checked by
loading every export with ``PeftModel.from_pretrained`` (tests/export/test_peft.py):

* ``adapter_config.json``: written by PEFT's own config class (``PeftConfig.from_peft_type(...)
  .save_pretrained``: sorted keys, its defaults and version), with ``inference_mode`` true, as
  ``PeftModel.save_pretrained`` leaves it. The method's PEFT twin and its own fields come from the method
  class (``PromptMethod.peft_type``, ``peft_fields``).
* ``adapter_model.safetensors``, one tensor ``prompt_embeddings``:
  - PROMPT_TUNING and P_TUNING: the P x d prompt, repeated ``num_transformer_submodules`` times (T5: 2;
    PEFT's encoder reads the first P rows). P-Tuning is stored as its encoder's output, as PEFT itself
    saves it: loaded for inference, PEFT builds no encoder.
  - PREFIX_TUNING: the flat P x (layers*2*d) prefix (``methods.base.flat_from_kv``), which PEFT reads
    as ``view(B, P, 2L, H, D).permute(2, 0, 3, 1, 4)``; ``prefix_projection`` is recorded, but the MLP is
    folded away, as in PEFT's inference mode.
  - BERT family: the task's head as ``base_model.classifier.weight`` / ``.bias``, the keys under which
    ``PeftModelForSequenceClassification`` saves its ``classifier`` (``modules_to_save``).
* ``README.md``: a model card (base model, task, method, metrics, ptune version, the training command).
* ``ptune/``: a copy of the run folder (config, checkpoints, training state), so the run can resume.

A run of several tasks gives one adapter per task, ``out/<task>/``; ``task=NAME`` exports one. Where PEFT
has no equivalent the export stops in one line before anything is written: per-layer prompts on T5 (PEFT's
T5 prefix tuning reaches only the decoder, through a cache; T5's encoder drops one), a trained backbone
body (model_tuning, ``model.trainable``), soft tokens after [CLS] or after the input, the cloze head, span
and multiple-choice heads, BERT-family models whose ``ForSequenceClassification`` head is not a linear
layer on the pooled output (all but BERT's), and prefixes where the installed PEFT cannot run them.
The adapter is written into a temporary folder that is renamed to ``out`` at the end.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from ptune import backbones, files, run_folder, tasks
from ptune.config import Config
from ptune.errors import CheckpointError, ConfigError
from ptune.methods import METHODS
from ptune.methods.base import flat_from_kv
from ptune.methods.transfer import ADAPTER_WEIGHTS, TASK_TYPES

CARD = "README.md"
CHECKPOINT = "ptune"  # the run folder's copy inside the export
HEADS = ("classification", "regression")  # what BertForSequenceClassification computes (num_labels 1: regression)


def export(run_dir: str | Path, out: str | Path | None = None, task: str | None = None) -> dict:
    """Write ``run_dir`` as PEFT adapters to ``out`` (default ``<run_dir>-peft``); returns what was written."""
    run_dir = Path(run_dir)
    peft = require_peft()
    folder = run_folder.open(run_dir)
    cfg = folder.config
    if task is not None and task not in cfg.task_names:
        raise ConfigError(f"task={task!r} is not a task of {run_dir}; choose one of: {', '.join(cfg.task_names)}")
    out = Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}-peft")
    if out.exists():
        raise ConfigError(f"out={out} already exists; choose another out= or remove it")
    chosen = [task] if task else cfg.task_names
    adapters = plan(cfg, folder, chosen)
    one = len(chosen) == 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, files.dir_mode())  # the renamed folder keeps the user's umask, not mkdtemp's 0700
    try:
        for name, (config, tensors) in adapters.items():
            where = tmp if one else tmp / name
            peft.PeftConfig.from_peft_type(**config).save_pretrained(str(where))
            save_file(tensors, str(where / ADAPTER_WEIGHTS), metadata={"format": "pt"})  # PEFT's own metadata
            (where / CARD).write_text(card(cfg, folder, name, config, out if one else out / name,
                                               out / CHECKPOINT))
        if not one:
            (tmp / CARD).write_text(index(cfg, run_dir, chosen))
        shutil.copytree(run_dir, tmp / CHECKPOINT, ignore=shutil.ignore_patterns(run_folder.LOCK))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "peft_type": next(iter(adapters.values()))[0]["peft_type"],
            "adapters": {n: str(out if one else out / n) for n in adapters}, "checkpoint": str(out / CHECKPOINT)}


def require_peft():
    try:
        import peft
    except ModuleNotFoundError:
        raise ConfigError("ptune export format=peft needs the peft package: pip install 'ptune[peft]'") from None
    return peft


def plan(cfg: Config, folder: run_folder.RunFolder, chosen: list[str]) -> dict[str, tuple[dict, dict[str, Tensor]]]:
    """Each chosen task's PEFT config and tensors, after every check (nothing is written here)."""
    cls, m, run_dir, folded = METHODS[cfg.method.name], cfg.model, folder.path, folder.folded

    def refuse(why: str, instead: str = f"use ptune's own folded checkpoint, {folded} (ptune predict run={run_dir})"):
        raise ConfigError(f"no PEFT export of {run_dir}: {why}; {instead}")

    if cls.peft_type is None:
        refuse(f"PEFT has no equivalent of method={cfg.method.name} (it places no prompt, and a PEFT prompt-learning "
               "adapter holds only a prompt)", f"the run folder is the model: ptune predict run={run_dir}")
    if m.trainable:
        refuse("model.trainable=true trained the backbone's body too, which a PEFT prompt adapter does not carry",
               f"the run folder holds it: ptune predict run={run_dir}")
    if not folded.is_file():
        raise CheckpointError(f"{run_dir} has no {run_folder.FOLDED} (every saved prompt writes one); train it first")
    tensors, meta = files.read_tensors(folded)
    layers = sum(1 for k in tensors if k.startswith("encoder.") and k.endswith(".key"))
    deep = any(k.startswith(("encoder.", "decoder.")) for k in tensors)
    sizes = backbones.sizes(m)
    if deep and m.family == "t5":
        refuse("PEFT has no per-layer prompts for T5's encoder, and its T5 prefix tuning feeds the decoder only, "
               "through a cache (T5's encoder drops one), so no PEFT adapter gives this run's logits")
    if m.family == "bert":
        check_bert(cfg, sizes, tensors, meta, deep, refuse)
        if deep and layers != sizes["num_layers"]:
            refuse(f"this run prompts {layers} of {m.name}'s {sizes['num_layers']} layers; PEFT's prefix tuning "
                   "prompts every layer")
    heads = files.read_tensors(folder.prompt)[0] if m.family == "bert" else {}
    peft_type = "PREFIX_TUNING" if deep else cls.peft_type
    subs = 2 if m.family == "t5" else 1  # PEFT's num_transformer_submodules: 2 for seq2seq models
    config = {"peft_type": peft_type, "task_type": TASK_TYPES[m.family], "num_virtual_tokens":
              cfg.method.num_virtual_tokens, "token_dim": sizes["token_dim"], "num_transformer_submodules": subs,
              "num_layers": sizes["num_layers"], "num_attention_heads": sizes["num_attention_heads"],
              "base_model_name_or_path": m.hf_id or None, "inference_mode": True,
              **(cls.peft_fields(cfg.method, sizes["token_dim"]) if peft_type == cls.peft_type else {})}
    if config.get("prompt_tuning_init") == "TEXT":
        config["tokenizer_name_or_path"] = m.tokenizer_id or m.hf_id
    if m.family == "bert":
        config["modules_to_save"] = ["classifier", "score"]  # what PeftModelForSequenceClassification adds
    out = {}
    for name in chosen:
        t = cfg.task_names.index(name)
        if deep:
            kv = [(tensors[f"encoder.{i}.key"][t], tensors[f"encoder.{i}.value"][t]) for i in range(layers)]
            prompt = flat_from_kv(kv)
        else:
            prompt = tensors["embeds"][t].repeat(subs, 1)
        weights = {"prompt_embeddings": prompt}
        for key in ("weight", "bias"):
            if f"head.{name}.classifier.{key}" in heads:
                weights[f"base_model.classifier.{key}"] = heads[f"head.{name}.classifier.{key}"]
        out[name] = (config, {k: v.detach().float().contiguous() for k, v in weights.items()})
    return out


def check_bert(cfg: Config, sizes: dict, tensors: dict[str, Tensor], meta: dict, deep: bool, refuse) -> None:
    """What PEFT's sequence classification can hold of a BERT-family run."""
    m = cfg.model
    if m.head == "mlm":
        refuse("model.head=mlm scores label words with the masked-LM head, and PEFT's SEQ_CLS adapter scores with "
               "a classifier")
    if "embeds" in tensors and m.prompt_position != "start":
        refuse(f"model.prompt_position={m.prompt_position} keeps [CLS] first, and PEFT puts soft tokens before it")
    split = meta.get("split")
    if "embeds" in tensors and split is not None and int(split) < tensors["embeds"].shape[1]:
        refuse(f"method.split={split} puts soft tokens after the input, and PEFT puts them all before it")
    bad = [t for t in cfg.task_names if tasks.get(t).head not in HEADS]
    if bad:
        refuse(f"PEFT's SEQ_CLS has no {tasks.get(bad[0]).head} head (task {bad[0]}), only a classifier on the pooled "
               "output")
    if sizes["model_type"] != "bert":
        refuse(f"{m.name} is a {sizes['model_type']!r} model, whose ForSequenceClassification head is not ptune's "
               "linear layer on the pooled output (only BERT's is)")
    why = None if not deep else prefix_refused(sizes["model_type"])
    if why:
        refuse(why)


def prefix_refused(model_type: str) -> str | None:
    """Why the installed PEFT cannot run prefix tuning on this model type, or None. PEFT's sequence
    classification hands the prefix over as ``past_key_values`` and raises where neither the model's forward
    nor its backbone's takes that argument (``PeftModelForSequenceClassification._prefix_tuning_forward``);
    transformers 5.24 renamed it."""
    import peft
    import transformers
    from transformers.models.auto import modeling_auto

    names = [n for n in (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(model_type),
                         modeling_auto.MODEL_MAPPING_NAMES.get(model_type)) if isinstance(n, str)]
    if any(takes_past(getattr(transformers, n)) for n in names if hasattr(transformers, n)):
        return None
    return (f"peft {peft.__version__} runs prefix tuning through a past_key_values argument, which transformers "
            f"{transformers.__version__}'s {' and '.join(names) or model_type} lacks")


def takes_past(model_class) -> bool:
    return "past_key_values" in inspect.signature(model_class.forward).parameters


# --- model card -----------------------------------------------------------------------------------------
def card(cfg: Config, folder: run_folder.RunFolder, task: str, config: dict, where: Path, checkpoint: Path) -> str:
    results = folder.results or {}
    m, spec = cfg.model, tasks.get(task)
    base = m.hf_id or m.name
    labels = 1 if spec.head == "regression" else spec.num_labels
    if m.family == "bert":
        load = (f"from transformers import AutoModelForSequenceClassification\n\n"
                f"base = AutoModelForSequenceClassification.from_pretrained({base!r}, num_labels={labels})")
    else:
        load = f"from transformers import AutoModelForSeq2SeqLM\n\nbase = AutoModelForSeq2SeqLM.from_pretrained({base!r})"
    env = results.get("environment", {})
    rows = [("base model", f"`{base}`" + (" (random-init test model: not the hub's weights)" if m.random_init else "")),
            ("task", f"{task} ({spec.head}, {labels} output{'s' * (labels > 1)})" if m.family == "bert" else task),
            ("method", f"ptune `{cfg.method.name}` as PEFT `{config['peft_type']}` ({config['task_type']}, "
                       f"{config['num_virtual_tokens']} virtual tokens)"),
            ("metrics", metrics_line(results, task, len(cfg.task_names) > 1)),
            ("ptune", f"{ptune_version()}" + (f" (git {env['git_commit'][:12]})" if env.get("git_commit") else "")),
            ("trained with", f"`{env['argv']}`" if env.get("argv") else f"(unknown: the run has no {run_folder.RESULTS})")]
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    return f"""---
base_model: {base}
library_name: peft
tags: [ptune, {config['peft_type'].lower()}]
---
# {cfg.method.name} on {task} ({m.name}), exported by ptune

{table}

## Load with PEFT

```python
from peft import PeftModel
{load}
model = PeftModel.from_pretrained(base, {str(where)!r})
```

`prompt_embeddings` holds the trained prompt with ptune's encoders and hypernetworks folded away, so load it for
inference (PEFT's default, `is_trainable=False`). The ptune run itself (config, checkpoints, training state) is
kept in `{checkpoint}`: `ptune predict run={checkpoint}`, or continue training with
`ptune train run_dir={checkpoint} resume=true trainer.max_steps=<more>` and its other settings.
"""


def index(cfg: Config, run_dir: Path, chosen: list[str]) -> str:
    lines = "\n".join(f"- [`{t}/`]({t}/README.md)" for t in chosen)
    return (f"# {cfg.method.name} on {'+'.join(chosen)} ({cfg.model.name}), exported by ptune\n\n"
            f"One PEFT adapter per task (each with its model card):\n\n{lines}\n\n"
            f"The ptune run itself, {run_dir.name}, is in `{CHECKPOINT}/`.\n")


def metrics_line(results: dict, task: str, mixture: bool) -> str:
    best = results.get("best") or {}
    scores = (best.get("tasks") or {}).get(task, {}) if mixture else best
    shown = {k: v for k, v in scores.items() if k not in ("step", "epoch", "train_loss", "elapsed_s", "best")
             and "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not shown:
        return "(none recorded)"
    return ", ".join(f"{k} {v:.2f}" for k, v in shown.items()) + f" (best, step {best.get('step')})"


def ptune_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ptune")
    except PackageNotFoundError:
        return "(not installed)"

