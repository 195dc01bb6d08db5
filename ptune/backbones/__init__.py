"""Backbone loading: hub id (or the local hub cache), or a random-init config for tests; always frozen."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from ptune.backbones import attention, bert
from ptune.backbones.base import Backbone, Output
from ptune.backbones.bert import BertBackbone
from ptune.backbones.t5 import T5Backbone
from ptune.config import ModelConfig
from ptune.errors import ConfigError, ModelError, unknown
from ptune.tasks.base import Task

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_CONFIGS = {"bert": BertConfig, "t5": T5Config}
DROPOUT_KEYS = {"bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"), "t5": ("dropout_rate",)}


def attn_implementation(cfg: ModelConfig, device: torch.device, precision: str) -> str:
    """``auto``: eager for bf16 on CPU (its SDPA backward was slower here, docs/benchmarks.md), else SDPA."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    return "eager" if device.type == "cpu" and precision != "fp32" else "sdpa"


def _not_found(cfg: ModelConfig, err: Exception) -> ModelError:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface/hub"
    offline = os.environ.get("HF_HUB_OFFLINE", "0")
    return ModelError(
        f"model {cfg.hf_id!r} could not be loaded (HF_HUB_OFFLINE={offline}, HF_HUB_CACHE={cache}): "
        f"{str(err).splitlines()[0]}; put it in that cache or choose another model=..."
    )


def _model_config(cfg: ModelConfig):
    overrides: dict = dict(cfg.config_overrides)
    if cfg.dropout is not None:
        overrides.update({k: cfg.dropout for k in DROPOUT_KEYS[cfg.family]})
    if cfg.hf_id:
        config = AutoConfig.from_pretrained(cfg.hf_id, trust_remote_code=cfg.trust_remote_code, **overrides)
    else:
        config = DEFAULT_CONFIGS[cfg.family](**overrides)
    return config


T5_TYPES = ("t5", "mt5", "umt5")
LAYER_KEYS = ("num_hidden_layers", "num_layers", "num_decoder_layers")
# the special tokens each family's backbone builds its inputs with (RoBERTa's <s> and </s> are its cls and sep)
FAMILY_TOKENS = {"bert": ("cls_token", "sep_token", "pad_token"), "t5": ("eos_token", "pad_token")}


def check_tokenizer(cfg: ModelConfig, config, tokenizer) -> None:
    """The tokenizer must fit the model: every id it makes has a row in the embedding table, and it has the
    special tokens the family's inputs are built from (a BERT tokenizer has no </s> for T5; T5's has no [CLS])."""
    name = cfg.tokenizer_id or cfg.hf_id
    vocab = getattr(config, "vocab_size", None)
    if vocab and len(tokenizer) > vocab:
        raise ModelError(f"tokenizer {name!r} has {len(tokenizer)} tokens but model {cfg.hf_id or cfg.name!r} embeds "
                         f"{vocab}: ids past {vocab - 1} have no embedding row; use the model's own tokenizer "
                         "(model.tokenizer_id=null)")
    missing = [t for t in FAMILY_TOKENS[cfg.family] if getattr(tokenizer, t, None) is None]
    if missing:
        raise ModelError(f"tokenizer {name!r} ({type(tokenizer).__name__}) has no {', '.join(missing)}, which "
                         f"model.family={cfg.family} builds its inputs with; use the model's own tokenizer "
                         "(model.tokenizer_id=null)")


def check_new_layers(cfg: ModelConfig) -> None:
    """config_overrides that add layers to a pretrained body leave them random-init and frozen: refused unless
    ``model.allow_new_layers=true``. (Fewer layers than the checkpoint keep its first ones, a choice users make.)"""
    if cfg.random_init or not cfg.hf_id or cfg.allow_new_layers:
        return
    asked = {k: v for k, v in cfg.config_overrides.items() if k in LAYER_KEYS}
    if not asked:
        return
    own = AutoConfig.from_pretrained(cfg.hf_id, trust_remote_code=cfg.trust_remote_code)
    for key, value in asked.items():
        have = getattr(own, key, None)
        if isinstance(have, int) and isinstance(value, int) and value > have:
            raise ConfigError(f"model.config_overrides.{key}={value} adds {value - have} layer(s) to {cfg.hf_id}'s "
                              f"{have} pretrained ones; they would be random-init and frozen. Use <= {have}, "
                              "model.random_init=true, or model.allow_new_layers=true")


def preflight(cfg: ModelConfig, places: str, prompt_length: int) -> None:
    """Checks that need only the model's config and tokenizer (no weights): the family matches the checkpoint,
    no layers are added to a pretrained body, the tokenizer fits the model, and the longest input plus the
    prompt fits the position table. ``places``: the method's ``places``."""
    try:
        config = _model_config(cfg)
    except OSError as err:
        raise _not_found(cfg, err) from None
    kind = getattr(config, "model_type", "?")
    is_t5 = kind in T5_TYPES
    name = cfg.hf_id or cfg.name
    if cfg.family == "bert" and is_t5:
        raise ModelError(f"model.family=bert but {name} is a {kind!r} model; use model.family=t5")
    if cfg.family == "t5" and not is_t5:
        raise ModelError(f"model.family=t5 but {name} is a {kind!r} model; use model.family=bert")
    if cfg.family == "bert" and getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"model.family=bert but {name} is a {kind!r} encoder-decoder model, which ptune does not "
                         "place prompts in; choose a BERT-family or T5 model")
    check_new_layers(cfg)
    if cfg.hf_id or cfg.tokenizer_id:
        check_tokenizer(cfg, config, load_tokenizer(cfg))
    if is_t5:
        return  # relative position buckets: no position table to overflow
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        return
    if kind in ("roberta", "xlm-roberta", "camembert"):
        limit -= config.pad_token_id + 1  # RoBERTa's positions start after the padding index
    extra = prompt_length if places == "input" else (
        prompt_length if places == "prefix" and kind in bert.PAST_SHIFTS_POSITIONS else 0)
    if cfg.max_length + extra > limit:
        what = (f" + {extra} virtual tokens" if places == "input" else
                f" + a {extra}-token prefix (it shifts {kind}'s position ids)") if extra else ""
        fix = f"model.max_length<={limit - extra}" + (" or a shorter prompt" if extra else "")
        raise ConfigError(f"model.max_length={cfg.max_length}{what} needs {cfg.max_length + extra} positions, but "
                          f"{cfg.hf_id or cfg.name} has {limit}; use {fix}")


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    return AutoTokenizer.from_pretrained(name)


def load_tokenizer(cfg: ModelConfig):
    """The model's tokenizer (``model.tokenizer_id``, else its hub id), read once per process: preflight checks
    it before the weights load and the backbone then uses the same object (ptune never changes a tokenizer)."""
    try:
        return _tokenizer(cfg.tokenizer_id or cfg.hf_id)
    except OSError as err:
        raise _not_found(cfg, err) from None


def sizes(cfg: ModelConfig) -> dict:
    """The model's type and sizes from its config alone (no weights), named as a PEFT adapter's config names
    them: token_dim (hidden size), num_layers (T5: the encoder's), num_attention_heads, plus head_dim."""
    try:
        config = _model_config(cfg)
    except OSError as err:
        raise _not_found(cfg, err) from None
    t5 = cfg.family == "t5"
    hidden = config.d_model if t5 else config.hidden_size
    heads = config.num_heads if t5 else config.num_attention_heads
    return {"model_type": config.model_type, "token_dim": hidden, "num_attention_heads": heads,
            "num_layers": config.num_layers if t5 else config.num_hidden_layers,
            "head_dim": config.d_kv if t5 else hidden // heads}


def _load_model(cfg: ModelConfig, dtype: torch.dtype, attn: str):
    config = _model_config(cfg)
    cloze = cfg.family == "bert" and cfg.head == "mlm"
    cls = T5ForConditionalGeneration if cfg.family == "t5" else AutoModelForMaskedLM if cloze else AutoModel
    if cfg.random_init:
        torch.manual_seed(0)  # a tiny random backbone is the same in every process
        if cfg.family == "bert" and not cloze:
            config.add_pooling_layer = True
        model = cls(config) if cls is T5ForConditionalGeneration else cls.from_config(config)
        model.set_attn_implementation(attn)
        return model.to(dtype)
    # safetensors only: a pickled .bin checkpoint can run code when loaded, so it is refused
    kwargs = {"dtype": dtype, "attn_implementation": attn, "trust_remote_code": cfg.trust_remote_code,
              "use_safetensors": True}
    if cfg.family == "bert" and not cloze:
        kwargs["add_pooling_layer"] = True
    if not cloze:
        return cls.from_pretrained(cfg.hf_id, config=config, **kwargs)
    model, info = cls.from_pretrained(cfg.hf_id, config=config, output_loading_info=True, **kwargs)
    head = sorted(k for k in info["missing_keys"] if not k.startswith(model.base_model_prefix + "."))
    if head:
        raise ModelError(f"model {cfg.hf_id!r} has no masked-LM head (its checkpoint lacks {', '.join(head[:2])}, ...), "
                         "which model.head=mlm scores with; use model.head=classifier or a model with an MLM head")
    return model


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or a sharded checkpoint's index


def announce_download(cfg: ModelConfig, say=lambda line: print(line, file=sys.stderr)) -> bool:
    """Say in one line that the weights are about to come over the network (transformers' progress bars are
    off, so a first download of a large model would otherwise be minutes of silence); True when it said so.
    Nothing is said offline, for a local folder, a random-init model or weights already in the hub cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    if cfg.random_init or not cfg.hf_id or constants.HF_HUB_OFFLINE or Path(cfg.hf_id).is_dir():
        return False
    if any(isinstance(try_to_load_from_cache(cfg.hf_id, name), str) for name in WEIGHT_FILES):
        return False
    say(f"ptune: downloading {cfg.hf_id} from the Hugging Face hub into {constants.HF_HUB_CACHE} (once; its own "
        "timeouts bound each request; HF_HUB_OFFLINE=1 uses the local cache only)")
    return True


def load(
    cfg: ModelConfig, tasks: list[Task], precision: str = "fp32", device: torch.device | None = None
) -> Backbone:
    """Load, freeze and place the backbone; the frozen body is stored in the run's precision. With
    ``model.trainable`` the body trains and keeps fp32 master weights (the loop runs it under autocast)."""
    if cfg.family not in BUILDERS:
        raise unknown("model family", cfg.family, BUILDERS)
    device = device or torch.device("cpu")
    hf_logging.disable_progress_bar()  # ptune prints its own progress
    attn = attention.implementation(attn_implementation(cfg, device, precision))  # deep prompts' entry
    tokenizer = load_tokenizer(cfg)
    announce_download(cfg)
    try:
        model = _load_model(cfg, torch.float32 if cfg.trainable else DTYPES[precision], attn)
    except OSError as err:
        raise _not_found(cfg, err) from None
    backbone = BUILDERS[cfg.family](model, tokenizer, tasks, cfg)
    if cfg.trainable:
        backbone.model.requires_grad_(True)
    return backbone.to(device)


def skeleton(cfg: ModelConfig, tasks: list[Task]) -> tuple[Backbone, int]:
    """The backbone's shapes without its weights, for ``ptune describe``: the body is built from its config on
    the meta device (nothing allocated, no weights read); only the word embeddings are real (random), for
    methods that initialise from them. Returns the backbone and the body's parameter count."""
    if cfg.family not in BUILDERS:
        raise unknown("model family", cfg.family, BUILDERS)
    tokenizer = load_tokenizer(cfg)
    try:
        config = _model_config(cfg)
    except OSError as err:
        raise _not_found(cfg, err) from None
    cloze = cfg.family == "bert" and cfg.head == "mlm"
    if cfg.family == "bert" and not cloze:
        config.add_pooling_layer = True
    with torch.device("meta"):
        model = (T5ForConditionalGeneration(config) if cfg.family == "t5" else
                 (AutoModelForMaskedLM if cloze else AutoModel).from_config(config))
    body = sum(p.numel() for p in model.parameters())  # before the swap below unties T5's lm_head
    emb = model.get_input_embeddings()
    emb.weight = torch.nn.Parameter(torch.randn(emb.weight.shape) * 0.02)
    backbone = BUILDERS[cfg.family](model, tokenizer, tasks, cfg)
    if cfg.trainable:
        backbone.model.requires_grad_(True)
    return backbone, body


BUILDERS: dict[str, Callable[..., Backbone]] = {
    "bert": lambda model, tok, tasks, cfg: BertBackbone(
        model, tok, {t.name: (t.head, t.num_labels) for t in tasks}, cfg.prompt_position,
        {t.name: t.label_words for t in tasks} if cfg.head == "mlm" else None,
    ),
    "t5": lambda model, tok, tasks, cfg: T5Backbone(model, tok),
}

__all__ = ["Backbone", "Output", "load", "skeleton", "sizes", "attn_implementation"]
