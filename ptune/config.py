"""Typed configuration: one dataclass per Hydra config group, composed and checked once at the edge.

Hydra composes ``configs/`` (shipped as ``ptune.configs``) into a DictConfig, through ``@hydra.main`` for
``ptune train`` and through :func:`compose_config` for everything else; :func:`to_config` turns it into
the dataclasses below with ``OmegaConf.structured`` + ``merge`` (wrong types fail there, naming the key),
then :func:`validate` checks ranges. Method configs are looked up by name in ``METHOD_CONFIGS`` (each
method module registers its own; :func:`load_methods` imports ptune's and every ``ptune.methods`` entry point),
so adding a method never edits this file. The dataclasses hold every default: :func:`register_schemas` stores
them in Hydra's ConfigStore as ``<group>_schema``, which each YAML of ``configs/`` extends, holding only what
differs. Every mistake is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from ptune.errors import ConfigError


@dataclass
class MethodConfig:
    name: str = "prompt_tuning"
    num_virtual_tokens: int = 20
    lr: float = 0.3  # the paper's learning rate; used when optimizer.lr is null
    per_task: bool = False  # mixtures: one prompt per task instead of one shared prompt (methods not task-aware)
    # fan_in: a generator weight of fan-in n trains at lr / n, so lr is how fast the prompt itself moves under
    # Adam, for every method (PromptMethod.param_groups); none: one lr for every parameter (the papers' code)
    lr_scaling: str = "fan_in"
    # SPoT transfer (ptune/methods/transfer.py): start from a source run's method parameters (a run folder, or
    # a prompt.safetensors-format file such as `ptune similarity`'s weighted average); heads are never copied
    init_from: str | None = None
    init_from_task: str | None = None  # a multi-task source: the task whose prompt to take
    init_from_step: int | None = None  # the source's snapshot at that step (trainer.snapshot_steps); null: its best checkpoint


@dataclass
class ModelConfig:
    name: str = "minilm"
    hf_id: str = "sentence-transformers/all-MiniLM-L6-v2"
    family: str = "bert"  # bert | t5
    # tiny random-init models for tests: a dict of config overrides applied to hf_id's config (or to
    # the family's default config when hf_id is empty); no weights are loaded.
    random_init: bool = False
    config_overrides: dict[str, Any] = field(default_factory=dict)
    # a pretrained body whose config_overrides add layers gets them random-init and frozen: refused unless true
    allow_new_layers: bool = False
    tokenizer_id: str | None = None  # defaults to hf_id
    max_length: int = 128
    max_target_length: int = 8
    dropout: float | None = None  # null: the model's own dropout
    attn_implementation: str = "auto"  # auto | eager | sdpa
    prompt_position: str = "start"  # bert only: start (before [CLS], as PEFT and P-Tuning v2) | after_cls
    # bert only: classifier (a trained head on the pooled first token) | mlm (the cloze form: a [MASK] before
    # the final [SEP], scored by the frozen masked-LM head's logits of each label word; P-Tuning's form)
    head: str = "classifier"
    trust_remote_code: bool = False
    # train the backbone's body too (method=model_tuning; or any method, as HyperPrompt's paper does): the
    # body is kept in fp32 (master weights; bf16 through autocast) and the checkpoint holds the whole model.
    # null: true for model_tuning, else false
    trainable: bool | None = None
    lr: float | None = None  # model.trainable: the body's learning rate; null: the run's lr
    # BERT-family task heads' learning rate; null: the run's lr. A linear probe on the frozen pooled output
    # learns at its own rate, whatever the method's (a generator's 1e-3 left it at the majority class)
    head_lr: float | None = None


@dataclass
class TaskConfig:
    """One task of a run, keyed by its name under ``task`` (``task=rte``, ``task=[rte,mrpc]``, ``task=glue``)."""

    weight: float = 1.0  # multiplies the task's data.sampling rate in a mixture
    train_limit: int | None = None  # a cap on this task's training rows; null: data.train_limit
    eval_limit: int | None = None  # null: data.eval_limit
    eval_splits: list[str] | None = None  # null: [data.eval_split]; MNLI in task=glue: matched and mismatched


@dataclass
class DataConfig:
    root: str | None = None  # local hub-layout folder (<root>/nyu-mll/glue/sst2/...); null: $PTUNE_DATA_DIR, else the hub
    train_limit: int | None = None
    eval_limit: int | None = None
    eval_split: str = "validation"
    sampling: str = "proportional"  # mixtures (task=[rte,mrpc], task=glue): proportional | temperature | equal (ptune/tasks/mixture.py)
    temperature: float = 1.0  # sampling=temperature: task i drawn with probability ~ n_i ** (1 / T)
    sampling_cap: int | None = None  # T5's K: rates from min(n_i, K)


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | adafactor
    lr: float | None = None  # null: the method's lr
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "linear"  # linear | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum: int = 1
    eval_every: int = 100
    log_every: int = 10
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only)
    # true: length-grouped shuffled batches, ~2x faster epochs on CPU, but they cost accuracy at high lr (SST-2 at
    # lr 0.3, docs/results.md), so opt-in
    group_by_length: bool = False
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None
    save_every: int | None = None  # training-state checkpoints; null: at each evaluation
    # keep the prompt (prompt + folded .safetensors) at these steps in snapshots/step-<N>/ (SPoT's early prompts)
    snapshot_steps: list[int] = field(default_factory=list)
    progress: bool = True
    log_seconds: float = 30.0  # output not a terminal (nohup, SLURM, `> log`): a plain progress line this often
    monitor: str | None = None  # early stopping and the best checkpoint: a task's main metric or avg; null: the
    # task's main metric (one task), avg (a mixture)


@dataclass
class LoggerConfig:
    """An experiment tracker beside metrics.jsonl (ptune/training/trackers.py; docs/trackers.md)."""

    name: str = "none"  # none | tensorboard | mlflow
    experiment: str | None = None  # mlflow: null: the sweep folder's name in a sweep, else the run folder's
    log_dir: str | None = None  # tensorboard: null: <run_dir>/tensorboard
    # mlflow: null: sqlite:///$PWD/mlflow.db (artifacts in ./mlruns); or http://host:5000, file:...
    tracking_uri: str | None = None


@dataclass
class PaperConfig:
    """Published numbers ``ptune table`` prints beside ours (the reproduction presets fill these)."""

    source: str | None = None  # e.g. "Lester et al. 2021, Table 1"
    scores: dict[str, float] = field(default_factory=dict)  # task name -> the paper's main metric: {rte: 67.9}


@dataclass
class Config:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: dict[str, TaskConfig] = field(default_factory=dict)  # task name -> its settings, in task id order
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 42
    output_dir: str = "outputs"
    run_dir: str | None = None  # null: <output_dir>/<method>-<task>-<model>-s<seed>
    resume: bool = True  # rerunning into a run folder with saved state continues it

    @property
    def lr(self) -> float:
        return self.optimizer.lr if self.optimizer.lr is not None else self.method.lr

    @property
    def task_names(self) -> list[str]:
        return list(self.task)

    @property
    def task_label(self) -> str:
        """The run's task in names: ``rte``, a named mixture (``glue``), else ``rte+mrpc``."""
        from ptune.tasks import mixture_name

        return mixture_name(self.task_names)

    def run_name(self) -> str:
        return f"{self.method.name}-{self.task_label}-{self.model.name}-s{self.seed}"

    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join(self.output_dir, self.run_name())


# keys that do not change what a run computes (where it runs and writes, how it reports): never in a run folder's
# name, never a reason to split a table row, free to change on resume (keys match by prefix)
RUN_ONLY = ("run_dir", "output_dir", "resume", "hydra", "logger", "data.root", "trainer.progress",
            "trainer.log_every", "trainer.log_seconds", "trainer.num_threads", "trainer.device", "trainer.save_every",
            "trainer.snapshot_steps", "trainer.eval_batch_size")

# name -> dataclass of that method's config: each method module registers its own (ptune.methods.register), and
# load_methods() imports the modules that do so. config.py never imports a method by name (methods sit above it)
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}
METHOD_ENTRY_POINTS = "ptune.methods"  # the entry-point group a package adds its methods through (docs/methods.md)
BUILTIN_METHODS = "ptune.methods"  # ptune's own package of methods (it finds its modules itself)
_methods_loaded = False


def load_methods() -> dict[str, type[MethodConfig]]:
    """Import every method module once: ptune's own and each installed package's entry point in the group
    ``ptune.methods`` (``[project.entry-points."ptune.methods"] my_method = "my_pkg.my_method"``), whose modules
    register with ``@ptune.methods.register``. A method that brings no YAML in ``configs/method/`` is offered to
    Hydra through the ConfigStore (``method=<name>`` composes its dataclass's defaults). Returns METHOD_CONFIGS."""
    global _methods_loaded
    if _methods_loaded:
        return METHOD_CONFIGS
    import importlib
    from importlib.metadata import entry_points

    importlib.import_module(BUILTIN_METHODS)
    for ep in sorted(entry_points(group=METHOD_ENTRY_POINTS), key=lambda e: e.name):
        if ep.value == BUILTIN_METHODS:
            continue
        try:
            ep.load()
        except Exception as err:  # a broken plugin names itself, in one line
            raise ConfigError(f"method plugin {ep.name!r} ({ep.value}) failed to import: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    _methods_loaded = True
    register_schemas()
    return METHOD_CONFIGS


# each group's schema, stored in Hydra's ConfigStore as <group>_schema (a top-level name, so `ptune train --help`
# lists no schema among the groups): a group's YAML extends it
# (``defaults: [/model_schema@_here_, _self_]``) and holds only what differs, so a default lives in the dataclass
SCHEMAS: dict[str, type] = {"model": ModelConfig, "task": TaskConfig, "optimizer": OptimizerConfig,
                            "trainer": TrainerConfig, "logger": LoggerConfig}
RUN_KEYS = ("seed", "output_dir", "run_dir", "resume", "data", "paper")  # Config's own keys: configs/config.yaml's


def register_schemas() -> None:
    """Offer every schema to Hydra before it composes (load_methods calls this, and so before any composing):
    ``<group>_schema`` for model, task, optimizer, trainer and logger, ``run_schema`` for the root config's own keys
    (seed, output_dir, run_dir, resume, data, paper), ``method_<name>_schema`` for each registered method. A method
    that brings no YAML in ``configs/method/`` is also offered as ``method/<name>`` (its dataclass's defaults)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(name=f"{group}_schema", node=schema)
    store.store(name="run_schema", node=OmegaConf.masked_copy(OmegaConf.structured(Config), list(RUN_KEYS)))
    with_yaml = {p.stem for p in (configs_folder() / "method").glob("*.yaml")}
    for name, schema in METHOD_CONFIGS.items():
        node = OmegaConf.structured(schema(name=name))
        store.store(name=f"method_{name}_schema", node=node)
        if name not in with_yaml:
            store.store(group="method", name=name, node=node)

CHOICES = {
    "model.family": ("bert", "t5"),
    "model.attn_implementation": ("auto", "eager", "sdpa"),
    "model.prompt_position": ("after_cls", "start"),
    "model.head": ("classifier", "mlm"),
    "optimizer.name": ("adamw", "adafactor"),
    "optimizer.scheduler": ("linear", "constant"),
    "trainer.precision": ("fp32", "bf16", "fp16"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "method.lr_scaling": ("fan_in", "none"),
}

# (key, predicate, what must hold): ranges checked before anything is loaded
RANGES: list[tuple[str, Any, str]] = [
    ("method.num_virtual_tokens", lambda v: v >= 1, "must be >= 1"),
    ("model.lr", lambda v: v is None or v > 0, "must be > 0"),
    ("model.head_lr", lambda v: v is None or v > 0, "must be > 0"),
    ("method.lr", lambda v: v > 0, "must be > 0"),
    ("optimizer.lr", lambda v: v is None or v > 0, "must be > 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("optimizer.eps", lambda v: v > 0, "must be > 0"),
    ("optimizer.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    ("seed", lambda v: 0 <= v < 2**63, "must be in [0, 2**63) (a 64-bit seed)"),
    ("optimizer.warmup_steps", lambda v: v >= 0, "must be >= 0"),
    ("optimizer.warmup_ratio", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("optimizer.max_grad_norm", lambda v: v >= 0, "must be >= 0 (0 disables clipping)"),
    ("trainer.max_steps", lambda v: v >= 1, "must be >= 1"),
    ("trainer.batch_size", lambda v: v >= 1, "must be >= 1"),
    ("trainer.eval_batch_size", lambda v: v >= 1, "must be >= 1"),
    ("trainer.grad_accum", lambda v: v >= 1, "must be >= 1"),
    ("trainer.eval_every", lambda v: v >= 1, "must be >= 1"),
    ("trainer.log_every", lambda v: v >= 1, "must be >= 1"),
    ("trainer.log_seconds", lambda v: v > 0, "must be > 0"),
    ("trainer.patience", lambda v: v >= 0, "must be >= 0"),
    ("model.max_length", lambda v: v >= 8, "must be >= 8"),
    ("model.dropout", lambda v: v is None or 0 <= v < 1, "must be in [0, 1)"),
    ("data.train_limit", lambda v: v is None or v >= 1, "must be >= 1"),
    ("data.eval_limit", lambda v: v is None or v >= 1, "must be >= 1"),
]


def lookup(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> Config:
    """Range and choice checks with one-line errors; extra checks live on method configs (``check``)."""
    for key, choices in CHOICES.items():
        value = lookup(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")
    trains_body = getattr(cfg.method, "trains_body", False)  # model_tuning: the body is what trains
    if cfg.model.trainable is None:
        cfg.model.trainable = trains_body
    elif trains_body and not cfg.model.trainable:
        raise ConfigError(f"method={cfg.method.name} trains the backbone; model.trainable=false contradicts it "
                          "(drop it, or choose a prompt method)")
    if cfg.model.lr is not None and not cfg.model.trainable:
        raise ConfigError(f"model.lr={cfg.model.lr} sets the body's learning rate, but the body is frozen; "
                          "add model.trainable=true or drop model.lr")
    for key, ok, rule in RANGES:
        if trains_body and key == "method.num_virtual_tokens":
            continue
        try:
            value = lookup(cfg, key)
        except AttributeError:
            continue
        if not ok(value):
            raise ConfigError(f"{key}={value!r} {rule}")
    bad = [n for n in cfg.trainer.snapshot_steps if n < 1]
    if bad:
        raise ConfigError(f"trainer.snapshot_steps={cfg.trainer.snapshot_steps}: {bad[0]} is not a step (steps count from 1)")
    check_tasks(cfg)
    check_bert_only(cfg)
    check = getattr(cfg.method, "check", None)
    if check is not None:
        check()
    return cfg


def check_tasks(cfg: Config) -> None:
    from ptune.tasks import TASKS
    from ptune.tasks.mixture import SAMPLINGS

    if not cfg.task:
        raise ConfigError("no task: choose one with task=<name>, several with task=[rte,mrpc], or task=glue")
    unknown_tasks = [n for n in cfg.task if n not in TASKS]
    if unknown_tasks:
        raise ConfigError(f"unknown task {', '.join(map(repr, unknown_tasks))}; choose from: {', '.join(TASKS)}")
    if cfg.data.sampling not in SAMPLINGS:
        raise ConfigError(f"data.sampling={cfg.data.sampling!r} is not valid; choose one of: {', '.join(SAMPLINGS)}")
    if cfg.data.temperature <= 0:
        raise ConfigError(f"data.temperature={cfg.data.temperature} must be > 0")
    for name, spec in cfg.task.items():
        if spec.weight <= 0:
            raise ConfigError(f"task.{name}.weight={spec.weight} must be > 0")
        for key in ("train_limit", "eval_limit"):
            value = getattr(spec, key)
            if value is not None and value < 1:
                raise ConfigError(f"task.{name}.{key}={value} must be >= 1")
    monitors = ["avg", *cfg.task]
    if cfg.trainer.monitor is not None and cfg.trainer.monitor not in monitors:
        raise ConfigError(f"trainer.monitor={cfg.trainer.monitor!r} is not valid; choose one of: {', '.join(monitors)}")


def check_bert_only(cfg: Config) -> None:
    """The cloze head and split prompts are BERT-family placements; the cloze head scores label words."""
    from ptune.tasks import TASKS

    split = getattr(cfg.method, "split", None)
    if cfg.model.family == "t5" and (cfg.model.head == "mlm" or split is not None):
        key = "model.head=mlm" if cfg.model.head == "mlm" else f"method.split={split}"
        raise ConfigError(f"{key} is for BERT-family models; {cfg.model.name} is a T5 model, which already scores "
                          "verbalizers with its decoder and takes prompts before the input")
    if cfg.model.head == "mlm":
        bad = [f"{n} ({TASKS[n].head})" for n in cfg.task if TASKS[n].head != "classification"]
        if bad:
            raise ConfigError(f"model.head=mlm scores label words, so it needs classification tasks; not: "
                              f"{', '.join(bad)} (use model.head=classifier)")


# --- composing ------------------------------------------------------------------------------------
PRIMARY = "config"  # Hydra's primary config, configs/config.yaml (cli.py's @hydra.main names it too)
GROUPS = ("method", "model", "task", "optimizer", "trainer", "logger")
PLUGINS = ("joblib", "submitit_local", "submitit_slurm", "optuna")
INSTALL_HINT = {"hydra/launcher": " (the joblib and submitit launchers come with pip install -e '.[sweep]' in the ptune checkout)",
                "hydra/sweeper": " (the optuna sweeper comes with pip install -e '.[sweep]' in the ptune checkout)"}


def configs_folder() -> Path:
    folder = Path(__file__).resolve().parent.parent / "configs"
    if not (folder / f"{PRIMARY}.yaml").is_file():  # installed wheel: configs ship as the package ptune.configs (data)
        from importlib.resources import files

        folder = Path(str(files("ptune.configs")))
    return folder


def group_choices(group: str) -> list[str]:
    found = {p.stem for p in (configs_folder() / group).glob("*.yaml")}
    return sorted(found | set(load_methods())) if group == "method" else sorted(found)


def compose_config(overrides: list[str], *, hydra: bool = False) -> DictConfig:
    """Compose with Hydra (``hydra=True`` keeps the ``hydra`` node), every error as one line."""
    from hydra.core.global_hydra import GlobalHydra

    check_key_value(overrides)
    load_methods()  # plugins' methods reach Hydra through the ConfigStore before it composes
    try:
        if GlobalHydra.instance().is_initialized():  # inside `ptune train` (a Hydra app): compose there
            return compose(config_name=PRIMARY, overrides=overrides, return_hydra_config=hydra)
        with initialize_config_module(config_module="ptune.configs", version_base=None):
            return compose(config_name=PRIMARY, overrides=overrides, return_hydra_config=hydra)
    except MissingConfigException as err:
        raise missing_option(err) from None
    except (HydraException, OmegaConfBaseException) as err:
        raise hydra_error(err) from None


def check_key_value(overrides: list[str]) -> None:
    """Every argument is key=value, a list of tasks names each task once, and a group other than task takes one
    option per run."""
    for o in overrides:
        if "=" not in o and not o.startswith("~"):
            raise ConfigError(f"argument {o!r} is not key=value (e.g. task=rte, trainer.max_steps=300)")
        key, _, value = o.partition("=")
        tasks = re.fullmatch(r"\[(.*)\]", value.strip()) if key.lstrip("+~") == "task" else None
        if tasks:
            names = [n.strip() for n in tasks.group(1).split(",") if n.strip()]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"task={value} names {', '.join(twice)} more than once; a mixture holds each task "
                                  f"once (task.<name>.weight= weighs one up)")
        group = re.match(rf"^\+*({'|'.join(g for g in GROUPS if g != 'task')})=\[", o)
        if group:  # Hydra would quietly keep the last option of the list
            values = o.split("=", 1)[1].strip("[]")
            raise ConfigError(f"{o}: one {group.group(1)} per run; for one job per value use "
                              f"ptune train -m {group.group(1)}={values}")


def check_unique(overrides: list[str]) -> None:
    """A command line gives each key once: Hydra (and OmegaConf's dotlist) would silently keep the last. Checked at
    the edges where a person types overrides: every ptune command and ptune.train."""
    seen: dict[str, str] = {}
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key in seen:
            raise ConfigError(f"{key} is given twice ({key}={seen[key]} and {key}={value}); give it once")
        seen[key] = value


def missing_option(err: MissingConfigException) -> ConfigError:
    """Hydra's "Could not find 'task/nope'" and its list of options -> ``unknown task 'nope'; choose ...``."""
    missing = err.missing_cfg_file or ""
    listed = re.search(r"Could not load '([\w/]+)/(\w+)'", str(err))  # an option inside a list: task=[rte,nope]
    if listed and listed.group(1) in GROUPS:
        group, name = listed.groups()
        return ConfigError(f"unknown {group} {name!r}; choose one of: {', '.join(group_choices(group))}")
    if "/" in missing and err.options is not None:
        group, name = missing.rsplit("/", 1)
        hint = INSTALL_HINT.get(group, "") if name in PLUGINS else ""
        return ConfigError(f"unknown {group} {name!r}; choose one of: {', '.join(err.options)}{hint}")
    return ConfigError(str(err).splitlines()[0])


def hydra_error(err: Exception) -> ConfigError:
    cause = err if isinstance(err, ValidationError) else err.__cause__
    if isinstance(cause, ValidationError) and cause.full_key:  # a YAML's schema types its keys as Hydra composes
        first = str(cause).splitlines()[0]
        return ConfigError(f"{cause.full_key}={cause.value!r} has the wrong type: {first}")
    text = str(err)
    bad = re.search(r"Could not override '([^']+)'", text)
    if bad:
        group = bad.group(1).split(".")[0]
        lister = "ptune train --cfg hydra" if group == "hydra" else "ptune describe"
        return ConfigError(f"unknown key {bad.group(1)!r}; `{lister}` lists the keys of {group!r}")
    ambiguous = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if ambiguous:
        return ConfigError(f"{ambiguous.group(1)} sweeps several values: add -m to run one job per value "
                           "(ptune train -m ...), or quote it to mean one string")
    return ConfigError(" ".join(line.strip() for line in text.splitlines() if line.strip()))


def to_config(raw: DictConfig) -> Config:
    """DictConfig -> typed Config; a wrong type fails naming the key, the value and the expected type."""
    load_methods()
    raw = OmegaConf.masked_copy(raw, [str(k) for k in raw if k != "hydra"]) if "hydra" in raw else raw
    # plain values: a composed node carries its schema's type (<group>_schema), which would let a key added with
    # +model.foo=1 pass the merge below unnoticed
    raw = OmegaConf.create(OmegaConf.to_container(raw))
    task = raw.get("task")
    if isinstance(task, DictConfig) and isinstance(task.get("name"), str):  # a run folder from before mixtures
        raw = OmegaConf.merge(OmegaConf.masked_copy(raw, [str(k) for k in raw if k != "task"]),
                              {"task": {task.name: {}}})
    method = raw.get("method")
    if isinstance(method, DictConfig) and "name" in method and "lr_scaling" not in method:
        # a run saved before method.lr_scaling existed trained every parameter at one lr: say so, so that a
        # resume is refused as a change of settings rather than silently training differently
        raw = OmegaConf.merge(raw, {"method": {"lr_scaling": "none"}})
    name = raw.get("method", {}).get("name", "prompt_tuning")
    if name not in METHOD_CONFIGS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHOD_CONFIGS))}")
    schema = OmegaConf.structured(Config)
    schema.method = OmegaConf.structured(METHOD_CONFIGS[name])
    try:
        merged = OmegaConf.merge(schema, raw)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        value = _lookup(raw, key)
        first = str(err).splitlines()[0]
        if "not in struct" in first or "Key '" in first:
            raise ConfigError(f"unknown key {key!r} ({first})") from None
        raise ConfigError(f"{key}={value!r} has the wrong type: {first}") from None
    assert isinstance(cfg, Config)
    return validate(cfg)


def flatten(tree: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are values (a config's dotted keys, a tracker's params)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}{sep}", sep))
        else:
            out[f"{prefix}{k}"] = v
    return out


def saved_task_label(raw: DictConfig) -> str:
    """The task name of a saved (untyped) config as in its folder name: ``rte``, ``glue``, ``rte+mrpc``;
    run folders from before mixtures hold ``task.name``."""
    from ptune.tasks import mixture_name

    task = OmegaConf.select(raw, "task")
    if task is None:
        return "?"
    if isinstance(OmegaConf.select(raw, "task.name"), str):
        return str(task.name)
    return mixture_name([str(k) for k in task])


def _lookup(raw: DictConfig, key: str):
    try:
        return OmegaConf.select(raw, key)
    except OmegaConfBaseException:
        return None


def load(overrides: list[str]) -> Config:
    """``key=value`` overrides -> a validated Config (what ``ptune describe`` prints)."""
    return to_config(compose_config(overrides))
