# One-command workflows. Every target that runs Python builds .venv/ first when it is missing (or pyproject.toml
# changed), so `make train` or `make test` works as the first command on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
# extra options of benchmarks/bench_train.py, e.g. make bench-train BENCH_TRAIN_ARGS="--isa avx2 --rounds 3"
BENCH_TRAIN_ARGS ?=
# wall-clock training budget of make bench-quality, in minutes
BUDGET_MIN ?= 10
# extra options of benchmarks/bench_distill.py, e.g. make bench-distill BENCH_DISTILL_ARGS="--teacher <ckpt>"
BENCH_DISTILL_ARGS ?=
# the checkpoint make bench-inpaint scores
CKPT ?=
# Hydra overrides for `make train`, e.g. make train ARGS="schedule=cosine trainer.max_steps=200"
ARGS ?=

.PHONY: help install train test test-slow test-all lint format clean bench bench-train bench-sample bench-gpu bench-quality bench-inpaint bench-distill

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

install:  ## create .venv and install the project (editable) with its dev extra
	rm -f $(STAMP)
	$(MAKE) $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24" "setuptools>=68" wheel
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)  ## train with the default config (embedded MNIST-5k, CPU-sized UNet); ARGS="..." for overrides
	$(PY) train.py $(ARGS)

test: $(STAMP)  ## the default test suite (slow tests excluded)
	$(PY) -m pytest

test-slow: $(STAMP)  ## only the tests marked slow (notebooks, torch.compile)
	$(PY) -m pytest -m slow

test-all: $(STAMP)  ## every test, slow ones included
	$(PY) -m pytest -m "slow or not slow"

bench-sample: $(STAMP)  ## sampler and FID-feature throughput table (DDPM-1000 vs DDIM-100/50/20); DDPM_FID_WEIGHTS for offline
	$(PY) benchmarks/bench_sample.py

bench-train: $(STAMP)  ## training / inference throughput table: ours (Lightning and plain loop) vs diffusers, conv ceiling
	$(PY) benchmarks/bench_train.py $(BENCH_TRAIN_ARGS)

bench-gpu: $(STAMP)  ## the paper's CIFAR-10 model on one GPU: training steps/s, DDPM-1000 / DDIM-50 img/s, 10k-sample FID time
	$(PY) benchmarks/bench_gpu.py

bench-quality: $(STAMP)  ## train the default for BUDGET_MIN minutes on mnist5k and full MNIST; FID and KID (N=1000) beside the data's floor
	BUDGET_MIN=$(BUDGET_MIN) $(PY) benchmarks/bench_quality.py

bench-distill: $(STAMP)  ## bench-quality's MNIST-5k teacher (BUDGET_MIN), distilled: FID / KID of students at 4, 2, 1 calls vs the teacher's samplers
	BUDGET_MIN=$(BUDGET_MIN) $(PY) benchmarks/bench_distill.py $(BENCH_DISTILL_ARGS)

bench-inpaint: $(STAMP)  ## inpainting quality of CKPT=<checkpoint> (centre mask, held-out images): RePaint against two baselines
	@test -n "$(CKPT)" || (echo "error: give the checkpoint: make bench-inpaint CKPT=<run>/checkpoints/last.ckpt" >&2; exit 2)
	$(PY) benchmarks/bench_inpaint.py --ckpt $(CKPT)

bench: bench-train bench-sample  ## every CPU benchmark

lint: $(STAMP)  ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## ruff autofix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove run outputs and caches (keeps .venv)
	rm -rf outputs multirun logs wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
