# ptune: `make help` lists the targets. With ../shared beside the checkout (data and a model cache), runs
# are offline from it; without it, data and models come from the Hugging Face hub.
PY       ?= .venv/bin/python
SHARED   ?= ../shared
TORCH    := torch==2.13.0
# the lock holds transformers 5.23.0: the newest version on which peft 0.21.2's prefix tuning runs, so
# every PEFT comparison runs on the locked set (5.24 is tested by `make test-latest`)
LOCK_PINS := transformers==5.23.0
export TOKENIZERS_PARALLELISM = false
ifneq ($(wildcard $(SHARED)/models/hub),)
export HF_HUB_OFFLINE ?= 1
export HF_HUB_CACHE  ?= $(abspath $(SHARED))/models/hub
endif
DATA_ROOT := $(if $(wildcard $(SHARED)/data/hub),data.root=$(SHARED)/data/hub)

.PHONY: help install train sweep-quick test test-latest venv-latest latest-tests test-unit lock where lint typecheck bench bench-quick quality clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# setuptools' notice for any editable install of a package with a package_dir mapping (ours ships configs/ as
# ptune.configs): "folders in your working directory with the same name as your package may take precedence".
# The checkout's own ptune/ is that folder, and it is the code the install points at (config.configs_folder()
# finds ../configs beside it), so the notice says nothing about ptune; it is silenced for this one command.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

install:  ## .venv with the tested versions (constraints.txt): CPU torch 2.13, ptune (editable), dev tools
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(TORCH)
	$(EDITABLE) $(PY) -m pip install -q -c constraints.txt -e ".[dev]"

train:  ## a real run: prompt tuning, MiniLM, SST-2, 300 steps (about 5.5 min on 2 cores, README); offline from ../shared if there
	.venv/bin/ptune train method=prompt_tuning model=minilm task=sst2 $(DATA_ROOT) \
		trainer.max_steps=300 optimizer.lr=0.03 run_dir=outputs/quickstart-pt-sst2-minilm

where:  ## where `make train` takes data and models from
	@echo "data: $(or $(DATA_ROOT),the hub (nyu-mll/glue))"
	@echo "models: HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} HF_HUB_CACHE=$${HF_HUB_CACHE:-the default cache}"

test:  ## every test on the locked versions: unit (tiny random-init models) and integration (real CLI, data, model)
	PTUNE_REQUIRE_PEFT=1 $(PY) -m pytest -q -rs

test-latest: venv-latest latest-tests  ## unit tests in .venv-latest, on the newest versions pyproject.toml allows (torch held at 2.13.0); the integration and torchrun tests run once, in `make test`

venv-latest:  ## .venv-latest from scratch: the newest versions pyproject.toml allows (torch held at 2.13.0)
	rm -rf .venv-latest
	python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q $(TORCH)
	$(EDITABLE) .venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" $(TORCH)

latest-tests:  ## the unit tests in an existing .venv-latest (make venv-latest builds it)
	.venv-latest/bin/python -m pytest -q -rs -m "not integration and not multiprocess"

test-unit:  ## unit tests only (about 12 min on 2 cores)
	$(PY) -m pytest -q -m "not integration"

lock:  ## rebuild constraints.txt: the newest allowed versions in a fresh venv, except LOCK_PINS
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q $(TORCH)
	.venv-lock/bin/python -m pip install -q -e ".[dev]" $(LOCK_PINS)
	{ sed -n '1,2p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

lint:  ## ruff (must be clean)
	$(PY) -m ruff check ptune tests scripts

typecheck:  ## mypy on ptune/ (not yet clean: torch/transformers dynamic attributes)
	$(PY) -m mypy ptune

bench:  ## speed and memory vs PEFT; writes docs/benchmarks.md and docs/benchmarks.json (~40 min on 2 cores)
	$(PY) scripts/bench.py

bench-quick:  ## a smoke run of the benchmark on a tiny model (writes outputs/bench-quick.*)
	$(PY) scripts/bench.py --quick

quality:  ## every method and variant, 150 steps of SST-2 on the real MiniLM with its defaults; fails naming any at the majority class
	$(PY) scripts/quality.py

clean:  ## remove caches (never outputs/)
	rm -rf .pytest_cache .ruff_cache .mypy_cache build *.egg-info
