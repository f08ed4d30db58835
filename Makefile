# Two commands for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv and install into it first (once; again when pyproject.toml changes).
PYTHON      ?= python3
VENV        ?= .venv
# A CPU build of torch is installed FIRST so that nothing pulls the multi-GB CUDA build.
# On a machine without a local CPU wheel: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# On a GPU machine: make demo TORCH=torch  (or install your CUDA torch into .venv beforehand).
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
BIN          = $(VENV)/bin
STAMP        = $(VENV)/.installed

.PHONY: install demo test test-all lint typecheck format bench clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The main job at CPU scale: the diffusion world on real Breakout, smoke preset (~45 s on 2 cores).
demo: $(STAMP)
	$(BIN)/python train.py --env Breakout --world diffusion --preset smoke

## The everyday fast tier: everything but the end-to-end runs (about 2 min on 2 CPU cores).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

## The whole suite, end-to-end runs of the real entry points included (what CI runs).
test-all: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## mypy over the library packages (worldmodels, agents, envs; settings in pyproject.toml).
typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/env_throughput.py
