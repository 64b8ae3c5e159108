# Every target works on a fresh clone: the environment is created on demand.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH_CPU := torch==2.13.0

.PHONY: install test test-fast lint demo docs bench gpu-check slurm-up slurm-down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A bare torch range would pull a multi-GB CUDA build; take the CPU wheel unless torch is already there.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check modexp tests benchmarks scripts
	$(BIN)/ruff format --check modexp tests benchmarks scripts

# The demo study: creates .venv first when missing (make install), then about 11 minutes on 2 CPU cores.
demo: $(STAMP)
	$(BIN)/modexp sweep

# docs/configuration.md from the typed schemas and conf/ (tests/test_docs.py checks it is up to date).
docs: $(STAMP)
	$(BIN)/python -m modexp.configdoc docs/configuration.md

bench: $(STAMP)
	$(BIN)/modexp bench --quick --out runs/bench

# One GPU: CUDA tests, bench with MFU, a two-budget gpu sweep; one report in runs/gpu-check/report.md (<= 8 min).
gpu-check: $(STAMP)
	@WANDB_MODE=disabled $(BIN)/python scripts/gpu_check.py --out runs/gpu-check

# Installs packages and rewrites /etc/slurm as root: it says so and asks first (YES=1 to skip the question).
slurm-up:
	SLURM_UP_YES=$(YES) bash scripts/slurm-up.sh

slurm-down:
	bash scripts/slurm-down.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
