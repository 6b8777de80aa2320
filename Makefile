# Two entry points that work on a fresh machine with python3 (>= 3.10):
#   make demo   set up .venv and run the whole pipeline on bundled real data
#   make test   set up .venv and run the test suite
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.duet-installed
# pip prints one warning per package for unused local index paths on some
# machines; hide only those lines, keep every real error.
QUIET_PIP := grep -v "^WARNING: Location '.*' is ignored" || true

.PHONY: setup demo test clean help

help:
	@echo "make demo   set up .venv and run the whole pipeline on bundled real data (~3 min on 2 cores)"
	@echo "make test   set up .venv and run the test suite"
	@echo "make clean  remove .venv and demo/ (never touches your data or runs/)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing duet and its dependencies into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install -q --upgrade pip 2>&1 | ($(QUIET_PIP))
	@$(BIN)/python -m pip install -q -e ".[dev,tf]" 2>&1 | ($(QUIET_PIP))
	@$(BIN)/python -c "import duet, torch, timm; print('duet', duet.__version__, '| torch', torch.__version__, '| timm', timm.__version__)"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/duet demo --dir demo

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo
