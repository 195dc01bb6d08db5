# ptune: `make help` lists the targets. Offline here: ../shared holds the data and models.
PY      ?= .venv/bin/python
SHARED  ?= ../shared
export HF_HUB_OFFLINE  ?= 1
export HF_HUB_CACHE    ?= $(abspath $(SHARED))/models/hub
export TOKENIZERS_PARALLELISM = false

.PHONY: help install train sweep-quick test test-unit lint typecheck bench bench-quick clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv with the CPU torch wheel, ptune (editable) and its dev tools
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"

train:  ## a real offline run: prompt tuning, MiniLM, SST-2, 300 steps (4-8 min on 2 cores)
	.venv/bin/ptune train method=prompt_tuning model=minilm task=sst2 data.root=$(SHARED)/data/hub \
		trainer.max_steps=300 optimizer.lr=0.03 run_dir=outputs/quickstart-pt-sst2-minilm

sweep-quick:  ## a 2x2 grid (methods x seeds) on a tiny random model, then its table and plot (under a minute)
	.venv/bin/ptune train -m model=tiny-bert method=prompt_tuning,p_tuning_v2 task=rte seed=1,2 \
		data.root=$(SHARED)/data/hub data.train_limit=64 data.eval_limit=64 trainer.max_steps=20 \
		trainer.eval_every=5 trainer.progress=false hydra.sweep.dir=multirun/quick
	.venv/bin/ptune table multirun/quick
	.venv/bin/ptune plot multirun/quick

test:  ## every test: unit (tiny random-init models) and integration (real CLI, data and model)
	$(PY) -m pytest -q

test-unit:  ## unit tests only (seconds)
	$(PY) -m pytest -q -m "not integration"

lint:  ## ruff (must be clean)
	$(PY) -m ruff check ptune tests scripts

typecheck:  ## mypy on ptune/ (not yet clean: torch/transformers dynamic attributes)
	$(PY) -m mypy ptune

bench:  ## speed and memory vs PEFT; writes docs/benchmarks.md and docs/benchmarks.json (~40 min on 2 cores)
	$(PY) scripts/bench.py

bench-quick:  ## a smoke run of the benchmark on a tiny model (writes outputs/bench-quick.*)
	$(PY) scripts/bench.py --quick

clean:  ## remove caches (never outputs/)
	rm -rf .pytest_cache .ruff_cache .mypy_cache build *.egg-info
