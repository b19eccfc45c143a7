# One-command workflows. `make install` builds .venv/ from scratch; everything else uses it.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# extra options of benchmarks/bench_train.py, e.g. make bench-train BENCH_TRAIN_ARGS="--isa avx2 --rounds 3"
BENCH_TRAIN_ARGS ?=

.PHONY: help install install-bench train test test-all lint format clean bench bench-train bench-sample bench-gpu

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

install:  ## create .venv and install the project (editable) with its dev extra
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24" "setuptools>=68" wheel
	$(PY) -m pip install -e ".[dev]"

train:  ## train with the default config (embedded MNIST-5k, CPU-sized UNet)
	$(PY) train.py

test:  ## the default test suite (slow tests excluded)
	$(PY) -m pytest

test-all:  ## every test, slow ones included
	$(PY) -m pytest -m "slow or not slow"

bench-sample:  ## sampler and FID-feature throughput table (DDPM-1000 vs DDIM-100/50/20); DDPM_FID_WEIGHTS for offline
	$(PY) benchmarks/bench_sample.py

bench-train:  ## training / inference throughput table: ours (Lightning and plain loop) vs diffusers, conv ceiling
	$(PY) benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)

bench-gpu:  ## the paper's CIFAR-10 model on one GPU: training steps/s, DDPM-1000 / DDIM-50 img/s, 10k-sample FID time
	$(PY) benchmarks/bench_gpu.py

bench: bench-train bench-sample  ## every CPU benchmark

install-bench:  ## add the optional peer library (diffusers) that make bench compares against
	$(PY) -m pip install -e ".[dev,bench]"

lint:  ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:  ## ruff autofix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun logs wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
