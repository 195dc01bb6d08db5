"""Markdown for scripts/bench.py: the generated part of docs/benchmarks.md, and the issue's targets.

Only the text between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` is rewritten, so the prose
around it (how to read the numbers, what is slow and why) survives a rerun.
"""

from __future__ import annotations

from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
from bench_common import TWINS as PEFT_NAMES  # noqa: E402


def ms(s: dict) -> str:
    return f"{1000 * s['median']:.0f} ({1000 * s['min']:.0f}–{1000 * s['max']:.0f})"


def sec(s: dict) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})"


def ratio(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


# --- targets ----------------------------------------------------------------------------------------
def targets(res: dict) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    ep = res.get("epochs")
    if ep:
        r = ep["ratios"]
        for text, key, ok in (
            ("epoch: ptune fp32 ≤ 0.55× PEFT dynamic padding", "ptune_fp32/peft_dynamic", lambda v: v <= 0.55),
            ("epoch: ptune fp32 ≥ 4× faster than PEFT padding to max length", "peft_max_length/ptune_fp32",
             lambda v: v >= 4),
            ("epoch: ptune bf16 ≤ 0.35× PEFT's fp32 epoch (dynamic padding)", "ptune_bf16/peft_dynamic",
             lambda v: v <= 0.35),
        ):
            rows.append((text, ratio(r[key]), ok(r[key]["median"])) if key in r else (text, "not run", None))
    ev = res.get("validation")
    if ev:
        rows.append(("SST-2 validation: ptune ≥ 2× PEFT's throughput", ratio(ev["peft_over_ptune_time"]),
                     ev["peft_over_ptune_time"]["median"] >= 2))
    rows += quality_targets(res)
    rows += step_targets(res)
    return rows


def quality_targets(res: dict) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    for m, g in (res.get("gradients") or {}).items():
        rows.append((f"bf16 gradient of {m} within 1% of fp32", f"{100 * g['relative_error']:.2f}%",
                     g["relative_error"] <= 0.01))
    acc = res.get("accuracy")
    if acc:
        rows.append(("bf16 validation accuracy within 0.5 points of fp32 (same one-epoch training)",
                     f"{acc['accuracy_bf16']:.2f} vs {acc['accuracy_fp32']:.2f} ({acc['difference']:+.2f})",
                     abs(acc["difference"]) <= 0.5))
    return rows


def step_targets(res: dict) -> list[tuple[str, str, bool | None]]:
    rows: list[tuple[str, str, bool | None]] = []
    steps = (res.get("steps") or {}).get("fp32")
    for m in ("prompt_tuning", "p_tuning_v2"):
        if steps and m in steps["methods"]:
            r = steps["methods"][m]["ptune_over_peft_step"]
            rows.append((f"fp32 step: ptune {m} ≤ PEFT {PEFT_NAMES[m]}", ratio(r), r["median"] <= 1.0))
    mem = {(x["system"], x["method"]): x for x in res.get("memory", []) if x["precision"] == "fp32"}
    for m in sorted({k[1] for k in mem}):
        a, b = mem.get(("ptune", m)), mem.get(("peft", m))
        if a and b:
            rows.append((f"fp32 training memory: ptune {m} ≤ PEFT", f"{a['training_mb']:.0f} vs {b['training_mb']:.0f} MB",
                         a["training_mb"] <= b["training_mb"]))
    return rows


# --- tables -----------------------------------------------------------------------------------------
def header(res: dict) -> list[str]:
    m, v, a = res["machine"], res["versions"], res["settings"]
    dirty = " (ptune/ has uncommitted changes)" if v.get("ptune_dirty") else ""
    return [
        f"Measured {res['date']} on **{m['cpu']}**, {m['physical_cores']} physical / {m['logical_cores']} logical cores "
        f"({m['cpu_capability']}), {m['memory_gib']} GiB, device `{m['device']}`"
        + (f" ({m['gpu']})" if m.get("gpu") else "") + f", torch threads {m['torch_threads']}.",
        f"Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, "
        f"ptune {v.get('ptune_commit', '?')}{dirty}. Load average before/after: {res['load_before']} / {res['load_after']}.",
        "",
        "```",
        res["command"],
        "```",
        "",
        f"Model `{a['model']}`, batch {a['batch_size']}, {a['num_virtual_tokens']} virtual tokens, "
        f"step rows of exactly {a['max_length']} tokens (no padding), {a['repeats']} timed repeats after "
        f"{a['warmup']} warm-up; epochs over the first {a['epoch_rows']} SST-2 train rows "
        f"({a['epoch_repeats']} interleaved rounds). Cells: median (min–max).",
        "",
    ]


def step_table(precision: str, st: dict, res: dict) -> list[str]:
    mem = {(x["system"], x["method"]): x for x in res.get("memory", []) if x["precision"] == precision}
    lines = [f"### Training step, {precision} (forward of the frozen backbone alone, no grad: {ms(st['forward_s'])} ms)", "",
             "| method | system | step ms | examples/s | tokens/s | step / forward | eval examples/s | peak RSS MB | training MB | ptune / PEFT step |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, e in st["methods"].items():
        for system in ("ptune", "peft"):
            s = e[system]
            x = mem.get((system, m), {})
            name = f"`{m}`" if system == "ptune" else PEFT_NAMES[m]
            last = ratio(e["ptune_over_peft_step"]) if system == "ptune" else ""
            lines.append(
                f"| {name} | {system} | {ms(s['step_s'])} | {s['examples_per_s']:.1f} | {s['tokens_per_s']:.0f} | "
                f"{s['step_over_forward']:.2f} | {s['eval_examples_per_s']:.1f} | {_mb(x.get('peak_rss_mb'))} | "
                f"{_mb(x.get('training_mb'))} | {last} |")
    return lines + [""]


def _mb(x) -> str:
    return "–" if x is None else f"{x:.0f}"


def epoch_table(ep: dict) -> list[str]:
    lines = ["### One epoch, end to end", "",
             "| configuration | seconds | of which setup s | steps | real tokens | padded positions | padding waste |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in ep["configs"].items():
        lines.append(f"| `{name}` | {sec(c['seconds'])} | {c['setup_s']['median']:.1f} | {c['steps']} | {c['tokens']:,} | "
                     f"{c['positions']:,} | {100 * c['padding_waste']:.0f}% |")
    lines += ["", "| ratio (paired per round) | value |", "|---|---:|"]
    lines += [f"| {k} | {ratio(v)} |" for k, v in ep["ratios"].items()]
    return lines + [""]


def validation_table(ev: dict) -> list[str]:
    return [f"### SST-2 validation ({ev['rows']} rows, batch {ev['batch_size']})", "",
            "| system | seconds | examples/s |", "|---|---:|---:|",
            f"| ptune `predict` (length-sorted) | {sec(ev['ptune']['seconds'])} | {ev['ptune']['examples_per_s']:.0f} |",
            f"| PEFT, file order, per-batch padding | {sec(ev['peft']['seconds'])} | {ev['peft']['examples_per_s']:.0f} |",
            "", f"PEFT time / ptune time: {ratio(ev['peft_over_ptune_time'])}.", ""]


def render(res: dict) -> str:
    lines = header(res)
    for precision, st in (res.get("steps") or {}).items():
        lines += step_table(precision, st, res)
    if res.get("epochs"):
        lines += epoch_table(res["epochs"])
    if res.get("validation"):
        lines += validation_table(res["validation"])
    lines += ["### Targets", "", "| target | measured | |", "|---|---:|---|"]
    lines += [f"| {t} | {v} | {yes(ok)} |" for t, v, ok in targets(res)]
    return "\n".join(lines) + "\n"


def write_doc(path: Path, section: str) -> None:
    """Replace the generated section (or create the file around it); written atomically."""
    block = f"{BEGIN}\n{section}{END}"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
