# Two entry points that work on a fresh machine with python3 (>= 3.10):
#   make demo   set up .venv with duet[train] and run the whole pipeline on bundled real data
#   make test   set up .venv with duet[dev,tf] and run the test suite
# Each installs only what it needs (README, "Install": what each weighs).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TRAIN_STAMP := $(VENV)/.duet-train
DEV_STAMP   := $(VENV)/.duet-dev
# pip prints one warning per package for unused local index paths on some
# machines; hide only those lines, keep every real error.
QUIET_PIP := grep -v "^WARNING: Location '.*' is ignored" || true

.PHONY: setup setup-dev demo test test-fast lint clean help

help:
	@echo "make demo   set up .venv and run the whole pipeline on bundled real data (about 70 s on 2 CPU cores once set up)"
	@echo "make test   set up .venv with the test tools, check lint, layers and types, run the test suite"
	@echo "make test-fast  the unit tier only (no training, no servers): under a minute"
	@echo "make lint   ruff, import-linter (the layers of docs/architecture.md) and mypy"
	@echo "make clean  remove .venv and demo/ (never touches your data or runs/)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip 2>&1 | ($(QUIET_PIP))

# The demo needs duet[train] (PyTorch, timm, scikit-learn's digits): no
# TensorFlow, no test tools.
$(TRAIN_STAMP): pyproject.toml | $(VENV)/bin/python
	@echo "installing duet[train] into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install -q -e ".[train]" 2>&1 | ($(QUIET_PIP))
	@$(BIN)/python -c "import duet, torch, timm; print('duet', duet.__version__, '| torch', torch.__version__, '| timm', timm.__version__)"
	@touch $(TRAIN_STAMP)

# The tests add the dev tools and TensorFlow; tensorflow-serving-api only for
# its protobuf messages, without its "tensorflow" requirement (tensorflow-cpu
# provides the same module).
$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	@echo "installing duet[dev,tf,dp] into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install -q -e ".[dev,tf,dp]" 2>&1 | ($(QUIET_PIP))
	@$(BIN)/python -m pip install -q --no-deps "tensorflow-serving-api>=2.16" 2>&1 | ($(QUIET_PIP))
	@$(BIN)/python -c "import duet, torch, timm; print('duet', duet.__version__, '| torch', torch.__version__, '| timm', timm.__version__)"
	@touch $(DEV_STAMP) $(TRAIN_STAMP)

setup: $(TRAIN_STAMP)

setup-dev: $(DEV_STAMP)

demo: setup
	$(BIN)/duet demo --dir demo

# The architecture's rules (import-linter: layers, no cycles), lint and format (ruff)
# and types (mypy), then the tests. `make test-fast` runs the unit tier only.
lint: setup-dev
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

test-fast: setup-dev
	$(BIN)/python -m pytest -m "not e2e"

clean:
	rm -rf $(VENV) demo
