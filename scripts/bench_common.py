"""Shared pieces of scripts/bench.py: ptune parts built through ptune's own API, the PEFT twin of each
method on the same weights, the fixed benchmark batches, timers, statistics and memory probes.

Nothing here is ptune code: it only calls ptune's public pieces (``ptune.config.load``, ``ptune.run.build``,
``ptune.tasks.collate``, ``ptune.training``) so the benchmark times the code path ``ptune train`` runs.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SST2 = ("nyu-mll/glue", "sst2")
PEFT_SYSTEM, PTUNE_SYSTEM = "peft", "ptune"


# --- ptune ------------------------------------------------------------------------------------------
def ptune_overrides(args, method: str, precision: str, train_limit: int, extra: tuple = ()) -> list[str]:
    """The `ptune train` overrides of one configuration (the same strings the CLI would get)."""
    prompt = [] if method == "model_tuning" else [f"method.num_virtual_tokens={args.num_virtual_tokens}"]
    return [
        f"method={method}", f"model={args.model}", "task=sst2", f"data.root={args.data_root}",
        f"data.train_limit={train_limit}", *prompt,
        f"model.max_length={args.max_length}", f"trainer.batch_size={args.batch_size}",
        f"trainer.eval_batch_size={args.eval_batch_size}", f"trainer.precision={precision}",
        f"trainer.device={args.device}", f"trainer.num_threads={args.threads}", f"seed={args.seed}",
        *extra,
    ]


def build_parts(args, method: str, precision: str, train_limit: int, extra: tuple = (), eval_limit=None):
    """Compose the config like the CLI does and build the run's parts with ``ptune.run.build``."""
    from ptune import run
    from ptune.config import load

    more = (*extra, f"data.eval_limit={eval_limit}") if eval_limit else extra
    cfg = load(ptune_overrides(args, method, precision, train_limit, more))
    return run.build(cfg)


def ptune_optimizer(parts, total_steps: int):
    """ptune's own optimizer and schedule over the trainable parameters (as ``fit`` builds them)."""
    from ptune.training.optim import build_optimizer, build_scheduler

    params = parts.trainable_parameters()
    # the run's optimizer groups (generator weights at lr / fan-in, the heads at model.head_lr), as fit has them
    opt = build_optimizer(parts.cfg.optimizer, parts.param_groups(), parts.cfg.lr, parts.device)
    sched = build_scheduler(parts.cfg.optimizer, opt, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=parts.device.type == "cuda" and parts.cfg.trainer.precision == "fp16")
    return params, opt, sched, scaler


def ptune_step(parts, state, idx: list[int]) -> float:
    """One optimizer step through ``ptune.training.loop.train_step`` (collate included)."""
    from ptune.training.loop import train_step

    params, opt, sched, scaler = state
    return train_step(parts, opt, sched, scaler, [idx], params)


# --- the fixed benchmark rows -------------------------------------------------------------------------
def full_length_texts(root: str, tokenizer, rows: int, max_length: int) -> list[tuple[str, int]]:
    """``rows`` texts of at least ``max_length`` tokens: consecutive SST-2 train sentences joined, so
    that a (batch, max_length) batch holds only real tokens and no padding (deterministic)."""
    from ptune.tasks import load_rows

    source = load_rows(*SST2, "train", root=root, limit=rows * (max_length // 4 + 8))
    out, parts, n, i = [], [], 0, 0
    while len(out) < rows:
        row = source[i]
        parts.append(row["sentence"].strip())
        n += len(tokenizer(row["sentence"], add_special_tokens=False)["input_ids"])
        if n >= max_length:
            out.append((" ".join(parts), int(row["label"])))
            parts, n = [], 0
        i += 1
    return out


def full_length_split(parts, texts: list[tuple[str, int]]):
    """The rows as a ptune Split, featurized with ptune's own ``featurize`` (truncated to max_length)."""
    from ptune.tasks.collate import featurize

    task = parts.task
    examples = [task.example({"sentence": t, "label": y, "idx": i}) for i, (t, y) in enumerate(texts)]
    m = parts.cfg.model
    return featurize(task, 0, examples, parts.backbone.tokenizer, m.family, m.max_length, m.max_target_length)


def fixed_batches(n_rows: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, i + batch_size)) for i in range(0, n_rows - batch_size + 1, batch_size)]


# --- PEFT -------------------------------------------------------------------------------------------
# each ptune method's PEFT twin in the benchmarks; PEFT has no hypernetwork-generated prompts, so
# structured and hyperprompt are timed against the PEFT method with the same prompt shape (the nearest),
# and model tuning against the plain Hugging Face model with every weight trained (no PEFT at all)
TWINS = {
    "prompt_tuning": "PromptTuningConfig",
    "p_tuning": "PromptEncoderConfig (LSTM or MLP, as method.encoder)",
    "p_tuning_v2": "PrefixTuningConfig(prefix_projection=False)",
    "prefix_tuning": "PrefixTuningConfig(prefix_projection=True)",
    "structured": "PromptTuningConfig (nearest: the same prompt length, no hypernetwork)",
    "hyperprompt": "PrefixTuningConfig(prefix_projection=False) (nearest: per-layer keys/values, no hypernetwork)",
    "model_tuning": "the plain model, every weight trained (no PEFT)",
}


def peft_config(method_cfg, hidden_size: int):
    """PEFT's equivalent of a ptune method config (task type SEQ_CLS); ``None`` for model tuning."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType

    name, p = method_cfg.name, method_cfg.num_virtual_tokens
    if name not in TWINS:
        raise SystemExit(f"bench: no PEFT twin for method {name!r}; known: {', '.join(TWINS)}")
    if name == "model_tuning":
        return None
    if name in ("prompt_tuning", "structured"):
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p)
    if name == "p_tuning":
        lstm = method_cfg.encoder == "lstm"
        hidden = method_cfg.encoder_hidden_size or (hidden_size // 2 if lstm else hidden_size)
        return PromptEncoderConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p, encoder_hidden_size=hidden,
                                   encoder_reparameterization_type="LSTM" if lstm else "MLP",
                                   encoder_num_layers=method_cfg.encoder_num_layers if lstm else 2)
    reparam = bool(getattr(method_cfg, "reparameterize", False))
    return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p, prefix_projection=reparam,
                              encoder_hidden_size=getattr(method_cfg, "prefix_hidden_size", 512))


def peft_model(base, method_cfg):
    """``base`` under the method's PEFT twin (model tuning: ``base`` itself, every weight trainable)."""
    from peft import get_peft_model

    config = peft_config(method_cfg, base.config.hidden_size)
    if config is None:
        base.requires_grad_(True)
        return base
    return get_peft_model(base, config)


def peft_base(model_cfg, num_labels: int = 2, pretrained: bool = True):
    """``BertForSequenceClassification`` for a ptune model config (fp32, SDPA: transformers' defaults)."""
    from transformers import AutoConfig, BertConfig, BertForSequenceClassification

    if model_cfg.family != "bert":
        raise SystemExit(f"bench: the PEFT comparison needs a BERT-family model, not {model_cfg.name!r}")
    over = dict(model_cfg.config_overrides, num_labels=num_labels)
    config = AutoConfig.from_pretrained(model_cfg.hf_id, **over) if model_cfg.hf_id else BertConfig(**over)
    config._attn_implementation = "sdpa"
    if model_cfg.random_init or not pretrained:
        return BertForSequenceClassification(config)
    return BertForSequenceClassification.from_pretrained(model_cfg.hf_id, config=config, attn_implementation="sdpa")


def peft_twin(parts):
    """PEFT's model for ``parts``' method on exactly ptune's frozen weights and head (copied)."""

    base = peft_base(parts.cfg.model, parts.task.num_labels, pretrained=False)
    base.bert.load_state_dict(parts.backbone.model.state_dict())
    head = parts.backbone.heads[parts.task.name].classifier
    base.classifier.load_state_dict(head.state_dict())
    torch.manual_seed(parts.cfg.seed)
    return peft_model(base, parts.cfg.method).to(parts.device)


def peft_optimizer(model, lr: float, total_steps: int, max_grad_norm: float = 1.0, warmup_ratio: float = 0.06):
    """AdamW + linear warm-up/decay over PEFT's trainable parameters (what HF Trainer would set up)."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = get_linear_schedule_with_warmup(opt, int(warmup_ratio * total_steps), total_steps)
    return params, opt, sched, max_grad_norm


def peft_step(model, state, batch: dict, precision: str, device: torch.device) -> float:
    """forward (labels -> loss) + backward + clip + AdamW + schedule, the usual PEFT training step."""
    params, opt, sched, max_norm = state
    model.train()
    with autocast(precision, device):
        loss = model(**to_device(batch, device)).loss
    loss.float().backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def peft_inputs(batch: dict, labels: bool = True) -> dict:
    """PEFT's inputs from a ptune-collated batch: the very same tensors."""
    keys = ("input_ids", "attention_mask", "token_type_ids") + (("labels",) if labels else ())
    return {k: batch[k] for k in keys if k in batch}


def autocast(precision: str, device: torch.device):
    """PEFT under bf16 runs as HF Trainer's ``bf16=True`` does: fp32 weights, autocast."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- timing and statistics --------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def stats(xs: list[float]) -> dict:
    """Median and spread of repeated timings; ``spread`` = (max - min) / median."""
    med = statistics.median(xs)
    return {"median": med, "min": min(xs), "max": max(xs), "n": len(xs),
            "spread": (max(xs) - min(xs)) / med if med else 0.0, "values": [round(x, 5) for x in xs]}


def paired_ratio(a: list[float], b: list[float]) -> dict:
    """Median of per-repeat ratios a_i / b_i: the two were timed back to back, so shared noise cancels."""
    return stats([x / y for x, y in zip(a, b, strict=True)])


# --- memory -----------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def reset_peak(device: torch.device) -> bool:
    """Reset the high-water marks: CUDA's allocator peak, and the kernel's VmHWM (``clear_refs`` 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb(device: torch.device) -> dict:
    out = {"peak_rss_mb": _status_kb("VmHWM") / 1024 if Path("/proc/self/status").exists() else None}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# --- machine and versions ---------------------------------------------------------------------------
def machine(device: torch.device) -> dict:
    import psutil

    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else model
    info = {"cpu": model, "physical_cores": psutil.cpu_count(logical=False),
            "logical_cores": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    import peft
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        git = ["git", "-C", str(ROOT)]
        out["ptune_commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "ptune"], capture_output=True, text=True, timeout=5)
        out["ptune_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def quiet_libraries() -> None:
    """Silence load reports and progress bars so the benchmark's own lines stay readable."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def add_common_args(parser) -> None:
    """Options shared by bench.py and its per-configuration memory processes."""
    default_root = os.environ.get("PTUNE_DATA_DIR") or str(ROOT.parent / "shared" / "data" / "hub")
    a = parser.add_argument
    a("--model", default="minilm", help="a BERT-family config in configs/model (minilm; tiny-bert for smoke runs)")
    a("--batch-size", type=int, default=32)
    a("--max-length", type=int, default=128, help="tokens per row in the step benchmark (no padding)")
    a("--num-virtual-tokens", type=int, default=20)
    a("--eval-batch-size", type=int, default=128, help="batch size of the SST-2 validation passes")
    a("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    a("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a("--data-root", default=default_root, help="hub-layout data folder ($PTUNE_DATA_DIR, else ../shared/data/hub)")
    a("--seed", type=int, default=42)
    a("--memory-steps", type=int, default=3, help="training steps per memory process")
