"""ptune's command line: a dispatcher in front of the commands; ``train`` is a Hydra app (``@hydra.main``).

    ptune train method=p_tuning_v2 model=minilm task=sst2 trainer.max_steps=300
    ptune train -m method=prompt_tuning,p_tuning_v2 task=rte,stsb seed=1,2,3    # a grid, one job each
    ptune eval run=outputs/<run>
    ptune describe method=prompt_tuning task=rte     # the resolved config, parameter counts; no weights read
    ptune table multirun/<sweep>                     # mean ± std over seeds, Markdown and CSV
    ptune plot multirun/<sweep>                      # learning curves, PNG
    ptune similarity outputs/<target> multirun/<sources>   # SPoT: rank source prompts for a target

Config loading lives in :mod:`ptune.config`, the job Hydra runs in :mod:`ptune.sweep`. User mistakes
(unknown names, wrong types, bad ranges, missing data or models, broken checkpoints) print one line and
exit 2; internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from ptune import sweep
from ptune.config import PRIMARY, check_unique, load, load_methods
from ptune.errors import ConfigError, PtuneError

USAGE = """ptune <command> ...     (ptune --version)

commands:
  train      train a method on a task:   ptune train method=p_tuning_v2 task=rte model=minilm
             a grid, one job per value:  ptune train -m method=prompt_tuning,p_tuning_v2 task=rte,stsb seed=1,2,3
             a preset grid:              ptune train +sweep=methods_x_glue_small
             (a Hydra app: ptune train --help, --cfg job, --info, hydra/launcher=joblib|submitit_slurm,
             hydra/sweeper=optuna)
  eval       re-score a saved run:        ptune eval run=outputs/<run> [data.root=...]
  predict    a saved run's predictions (label, per-class scores) for a .jsonl/.csv/.parquet file, or for a
             task's split (test splits are unlabelled):   ptune predict run=outputs/<run> input=rows.jsonl
             [out=preds.csv] [task=<one of a mixture's>] | ptune predict run=outputs/<run> data.eval_split=test
             several runs of one backbone, rows naming their task:  ptune predict run=[A,B] input=rows.jsonl
  serve      many runs of one backbone behind an HTTP JSON API (POST /predict: rows of any of their tasks,
             mixed in one batch; GET /runs, /health, /docs; needs the serve extra): ptune serve RUN_OR_SWEEP_DIR...
             [host=127.0.0.1] [port=8000] [max_batch=32] [max_wait_ms=5]   (docs/serve.md)
  export     a saved run as Hugging Face PEFT adapters (PeftModel.from_pretrained loads them), with a model
             card and the run beside them:   ptune export run=outputs/<run> format=peft [out=DIR] [task=NAME]
  describe   the resolved config, then the method's trainable parameters (share of the backbone) and
             what it injects where; no weights are read:  ptune describe method=hyperprompt model=t5-base
  table      sweep or run folders -> methods x tasks, mean ± std over seeds (n), paper numbers beside
             ours; prints it, writes Markdown and CSV:   ptune table multirun/<sweep> [-o results/table]
             [--per-task: a mixture's tasks in the task columns]
  runs       every run under some folders, a line each: status (running, finished, stopped early,
             interrupted, failed), step, best metric, age, settings that differ from the defaults:
             ptune runs [outputs multirun/<sweep> ...] [--json]
  plot       sweep or run folders -> learning curves (validation metric, training loss; a band for
             the seed spread) as a PNG:                  ptune plot multirun/<sweep> [-o curves.png]
  similarity SPoT's retrieval: rank source runs' prompts for a target run's by both of the paper's cosine
             metrics; the best-of-top-k, weighted-average and mixture transfers, a JSON file and a heatmap:
             ptune similarity outputs/<target> multirun/<sources> [--step N] [-k 3] [-o similarity]

groups (choose with group=name): method, model, task, optimizer, trainer; any value can be
overridden with a dotted key, e.g. trainer.max_steps=300 optimizer.lr=0.1 data.root=../shared/data/hub
"""


# --- train: Hydra parses the rest of the line -----------------------------------------------------
@hydra.main(config_path="pkg://ptune.configs", config_name=PRIMARY, version_base=None)
def hydra_train(raw: DictConfig) -> float:
    return sweep.job(raw)


def cmd_train(args: list[str]) -> int:
    flags = hydra_flags(args)
    if flags.multirun and (flags.cfg or flags.info):
        raise ConfigError("--cfg and --info show one job's config: drop -m (a preset's grid is kept)")
    multirun = False
    if not (flags.help or flags.hydra_help or flags.shell_completion or flags.config_path or flags.config_dir
            or flags.config_name):
        multirun = sweep.check(flags.overrides, flags.multirun)
    load_methods()  # the schemas the YAMLs extend (and plugins' methods) reach Hydra's ConfigStore before it composes
    argv, sys.argv = sys.argv, ["ptune train", *hydra_argv(flags)]
    try:
        hydra_train()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        sys.argv = argv
    done = sweep.SweepRecord.last if multirun else None
    return int(any(j.get("status") == "failed" for j in (done or {}).get("jobs", [])))


SWITCHES = {"help": "--help", "hydra_help": "--hydra-help", "resolve": "--resolve", "run": "--run",
            "multirun": "--multirun", "shell_completion": "--shell-completion"}
VALUED = {"cfg": "--cfg", "package": "--package", "info": "--info", "config_path": "--config-path",
          "config_name": "--config-name", "config_dir": "--config-dir", "experimental_rerun": "--experimental-rerun"}


def hydra_parser() -> argparse.ArgumentParser:
    """The flags @hydra.main accepts (Hydra 1.3's command line; its parser is private, so ptune spells them out and
    tests/test_cli.py checks that they still match the installed Hydra's)."""
    parser = argparse.ArgumentParser(add_help=False, prog="ptune train")
    parser.add_argument("overrides", nargs="*")
    for name, flag in SWITCHES.items():
        short = {"help": ["-h"], "run": ["-r"], "multirun": ["-m"], "shell_completion": ["-sc"]}.get(name, [])
        parser.add_argument(flag, *short, dest=name, action="store_true")
    short = {"cfg": ["-c"], "package": ["-p"], "info": ["-i"], "config_path": ["-cp"], "config_name": ["-cn"],
             "config_dir": ["-cd"]}
    for name, flag in VALUED.items():
        if name == "cfg":
            parser.add_argument(flag, *short[name], dest=name, choices=["job", "hydra", "all"])
        elif name == "info":
            parser.add_argument(flag, *short[name], dest=name, nargs="?", const="all",
                                choices=["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"])
        else:
            parser.add_argument(flag, *short.get(name, []), dest=name)
    return parser


def hydra_flags(args: list[str]) -> argparse.Namespace:
    """Hydra's own flags, parsed as @hydra.main parses them; flags may come between overrides."""
    flags, unknown = hydra_parser().parse_known_intermixed_args(args)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for ptune train; see ptune train --help")
    return flags


def hydra_argv(flags: argparse.Namespace) -> list[str]:
    """The same command line with the flags first, the order Hydra's argparse needs."""
    out = [flag for name, flag in SWITCHES.items() if getattr(flags, name, False)]
    for name, flag in VALUED.items():
        if getattr(flags, name, None) is not None:
            out += [flag, str(getattr(flags, name))]
    return out + list(flags.overrides)


# --- plain commands -------------------------------------------------------------------------------
def cmd_eval(overrides: list[str]) -> int:
    """Re-score a run's saved prompt on every task of the run (``task=<one of them>`` for one; ptune/evaluate.py)."""
    from ptune import evaluate

    check_unique(overrides)  # run= or any key given twice is refused, not silently the last
    given = {k: o.split("=", 1)[1] for o in overrides for k in ("run", "task") if o.startswith(f"{k}=")}
    if "run" not in given:
        raise ConfigError("ptune eval needs run=<run folder>, e.g. ptune eval run=outputs/prompt_tuning-sst2-minilm-s42")
    rest = [o for o in overrides if not o.startswith(("run=", "task="))]
    print(json.dumps(evaluate.command(Path(given["run"]), given.get("task"), rest, Console(stderr=True))))
    return 0


def cmd_predict(overrides: list[str]) -> int:
    """Predictions of a run's saved prompt for rows of a file or of a task's split (ptune/predict.py)."""
    from ptune import predict

    check_unique(overrides)  # run=, input= or any key given twice is refused, not silently the last
    given = {k: o.split("=", 1)[1] for o in overrides for k in ("run", "input", "out", "task") if o.startswith(f"{k}=")}
    if "run" not in given:
        raise ConfigError("ptune predict needs run=<run folder>, e.g. ptune predict run=outputs/<run> input=rows.jsonl")
    rest = [o for o in overrides if not o.startswith(("run=", "input=", "out=", "task="))]
    paths = several_runs(given["run"])
    if paths:
        from ptune import pool

        if "task" in given:
            raise ConfigError("task= picks a task of one run; with several runs each row names its task in a 'task' "
                              "column")
        print(json.dumps(pool.command(paths, given.get("input"), given.get("out"), rest, Console(stderr=True))))
        return 0
    done = predict.command(Path(given["run"]), given.get("input"), given.get("out"), given.get("task"), rest,
                           Console(stderr=True))
    print(json.dumps(done))
    return 0


def several_runs(run: str) -> list[str] | None:
    """``run=[A,B,...]``, or a folder holding runs (a sweep): the run or sweep folders; None: one run folder."""
    from ptune import run_folder

    if run.startswith("[") and run.endswith("]"):
        return [p.strip() for p in run[1:-1].split(",") if p.strip()]
    folder = Path(run)
    if folder.is_dir() and not run_folder.is_run(folder) and next(run_folder.find(folder), None) is not None:
        return [run]
    return None


def cmd_export(args: list[str]) -> int:
    """A run in another library's format (ptune/export/): ``run=DIR format=peft [out=DIR] [task=NAME]``."""
    from ptune.api import EXPORT_FORMATS, export

    keys = ("run", "format", "out", "task")
    check_unique(args)
    bad = [a for a in args if a.split("=", 1)[0] not in keys or "=" not in a]
    if bad:
        raise ConfigError(f"ptune export takes {', '.join(k + '=' for k in keys)}; {bad[0]!r} is not one of them")
    given = dict(a.split("=", 1) for a in args)
    if "run" not in given:
        raise ConfigError("ptune export needs run=<run folder>, e.g. ptune export run=outputs/<run> format=peft")
    if "format" not in given:
        raise ConfigError(f"ptune export needs format=<{'|'.join(EXPORT_FORMATS)}>, e.g. ptune export run=... format=peft")
    print(json.dumps(export(given["run"], given["format"], given.get("out"), given.get("task"))))
    return 0


def cmd_serve(args: list[str]) -> int:
    """Many runs over one frozen backbone behind an HTTP API (ptune/serve.py)."""
    from ptune import serve

    return serve.command(args)


def cmd_describe(overrides: list[str]) -> int:
    """The resolved config, then (as YAML comments) the method's parameter counts and injection sites."""
    from ptune import describe

    check_unique(overrides)
    cfg = load(overrides)
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
    try:
        print(describe.comment(describe.summary(cfg)), end="")
    except PtuneError as err:  # the config above is still useful; the counts it exists for are missing: exit 2
        print(f"ptune: error: no parameter counts: they need the model's config and tokenizer ({err})",
              file=sys.stderr)
        return 2
    return 0


def folders_parser(command: str, what: str, out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"ptune {command}", description=what)
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders, run folders, or folders above them")
    parser.add_argument("--out", "-o", type=Path, default=None, help=out)
    return parser


def cmd_table(args: list[str]) -> int:
    from ptune.analysis import table

    parser = folders_parser("table", "Aggregate results.json files: methods x tasks, mean ± std over seeds.",
                            "where to write <out>.md and <out>.csv (default: <folder>/table for one folder, "
                            "else ./table)")
    parser.add_argument("--per-task", action="store_true",
                        help="a mixture run's tasks fill the task columns (a row per method and mixture) instead of "
                             "one column holding the mixture's average")
    flags = parser.parse_args(args)
    return table.main(flags.folders, flags.out, Console(width=None if sys.stdout.isatty() else 200), flags.per_task)


def cmd_plot(args: list[str]) -> int:
    from ptune.analysis import plot

    parser = folders_parser("plot", "Learning curves from metrics.jsonl: one panel per task, one line per method.",
                            "the PNG to write (default: <folder>/curves.png for one folder, else ./curves.png)")
    parser.add_argument("--against", metavar="KEY",
                        help="instead of curves: each run's best score against this config key's value "
                             "(lr: the run's learning rate), one line per method variant")
    flags = parser.parse_args(args)
    return plot.main(flags.folders, flags.out, Console(), flags.against)


def cmd_runs(args: list[str]) -> int:
    from ptune.analysis import listing

    parser = argparse.ArgumentParser(prog="ptune runs", description="Every run under some folders, one line each.")
    parser.add_argument("folders", nargs="*", type=Path,
                        help="run or sweep folders, or folders above them (default: ./outputs and ./multirun)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line, for scripts")
    flags = parser.parse_args(args)
    folders = flags.folders or [p for p in (Path("outputs"), Path("multirun")) if p.is_dir()]
    if not folders:
        raise ConfigError("no run folders: ./outputs and ./multirun do not exist; give folders: ptune runs DIR ...")
    return listing.main(folders, flags.json, Console(width=None if sys.stdout.isatty() else 200))


SIMILARITY = """SPoT's task similarity and source retrieval (Vu et al. 2022, "SPoT: Better Frozen Model
Adaptation through Soft Prompt Transfer", ACL).

Each run's folded prompt (folded.safetensors: each task's plain prompt) is its task's embedding, read at the best
checkpoint or, with --step N, at snapshots/step-N/ (trainer.snapshot_steps=[N] keeps it; the paper's early
prompts). Each source is scored for the target with both of the paper's metrics:
  cosine of the average tokens   cos(mean_i e1_i, mean_j e2_j)
  per-token average cosine       the mean over all L x L token pairs of cos(e1_i, e2_j)
Deep prompts (per-layer keys and values) are compared layer by layer (keys and values) with the same metrics,
then averaged over the layers. A run of several tasks gives one prompt per task (labelled run:task; --task picks
the target's); one prompt shared by a mixture's tasks is one entry. Runs on another backbone or with another
prompt shape are refused. Source folders are only read.

The retrieval rules, on the top k sources by --metric:
  best of top-k           the method.init_from= overrides, one target run from each (keep the best on validation)
  top-k weighted average  weights proportional to similarity, written as <out>.init.safetensors (a multi-task
                          target: <out>.<task>.init.safetensors), a prompt file method.init_from reads: each of
                          the target run's method parameters, the weighted sum of what method.init_from=<source>
                          would give it
  top-k mixture           a task=[<the k source tasks>,<target>] override for the source run to train first

Output: a table per target task in the terminal; <out>.json (every score: the ranking with both metrics, each
layer's scores for deep prompts, the full entry-by-entry matrix, the rules); <out>.png (a task-by-task heatmap
of both metrics, values in the cells, the target in bold).

  ptune similarity outputs/rte-run multirun/glue-sources
  ptune similarity outputs/rte-run 'multirun/glue/*-s1' --step 500 -k 3 -o results/rte-sources
"""


def cmd_similarity(args: list[str]) -> int:
    from ptune.analysis import similarity

    parser = argparse.ArgumentParser(prog="ptune similarity", description=SIMILARITY,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="the target task's run folder")
    parser.add_argument("sources", nargs="+",
                        help="the source library: run folders, sweep folders or folders above them, or globs")
    parser.add_argument("--step", type=int, default=None,
                        help="compare the prompts at snapshots/step-N/ (default: each run's best checkpoint)")
    parser.add_argument("--task", default=None, help="a multi-task target: the task to find sources for "
                                                     "(default: each of its tasks)")
    parser.add_argument("--metric", choices=sorted(similarity.METRICS), default="avg_tokens",
                        help="the metric that ranks sources for the rules (default: avg_tokens); both are shown")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=3, help="how many sources the rules take "
                                                                                "(default: 3)")
    parser.add_argument("--out", "-o", type=Path, default=None,
                        help="where to write <out>.json, <out>.png and <out>.init.safetensors "
                             "(default: ./similarity-<target>); never inside a run folder")
    flags = parser.parse_args(args)
    if flags.k < 1 or (flags.step is not None and flags.step < 1):
        raise ConfigError(f"ptune similarity: {'-k' if flags.k < 1 else '--step'} must be at least 1")
    return similarity.main(flags.target, flags.sources, flags.step, flags.task, flags.metric, flags.k, flags.out,
                           Console(width=None if sys.stdout.isatty() else 200))


LOADS_MODELS = ("train", "eval", "predict", "describe", "export", "serve")  # the commands that may reach the hub
COMMANDS = {"runs": cmd_runs, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "serve": cmd_serve,
            "export": cmd_export, "describe": cmd_describe, "table": cmd_table, "plot": cmd_plot, "similarity": cmd_similarity}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"ptune {version('ptune')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("ptune (not installed: no version)")
        return 0
    if argv[0] not in COMMANDS:
        print(f"ptune: error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if argv[0] in LOADS_MODELS and not any(a in ("-h", "--help", "--cfg", "--info") for a in argv[1:]):
        from ptune import offline

        offline.settle()  # before anything imports huggingface_hub
    try:
        return COMMANDS[argv[0]](argv[1:])
    except PtuneError as err:
        print(f"ptune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while loading (training saves its state and stops on its own signal handler)
        print(f"ptune: interrupted (ptune {argv[0]}); nothing was written after the last saved state", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
