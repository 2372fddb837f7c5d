# One-line entry points. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Telemetry off everywhere, and nothing fetched from model hubs at run time.
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_DEBUG := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup lock system-packages datasets test test-fast run lint bench clean team-up team-down team-backup

setup: $(STAMP)

# Debian packages the project needs (Fashion-MNIST for the embedded dataset, PostgreSQL for `make team-up`).
system-packages:
	@bash scripts/install_system_packages.sh

# Packages the real-tag datasets are built from (OpenMoji and Tabler icons, from npm into data/packages/; docs/datasets.md).
datasets:
	@bash scripts/fetch_datasets.sh

# .venv with the project and the versions pinned in requirements.lock (uv, linked from its cache; pip
# where uv cannot be had). After changing pyproject.toml's dependencies: `make lock` and commit the lock.
$(STAMP): pyproject.toml requirements.lock scripts/install_system_packages.sh scripts/setup_venv.sh
	@bash scripts/install_system_packages.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_venv.sh
	@touch $(STAMP)

lock:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_venv.sh lock

# Two pytest-xdist workers, one test file each at a time (a file's module fixtures stay in one worker):
# on 2 cores the end-to-end tests overlap their waits on servers, ZenML and MLflow. TEST_WORKERS=0: one process.
# Files go out longest first (tests/conftest.py orders them: team stack, then slow, then the rest).
TEST_WORKERS ?= 2
test: setup datasets
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow'

run: setup
	$(BIN)/labelspace setup-stack
	$(BIN)/dvc repro card    # data, training pipeline, analyses, model card; datasets/nuswide/dvc.yaml is repro-ed on its own
	$(BIN)/labelspace report

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The team stack under .team/ (docs/team-server.md): PostgreSQL, SeaweedFS S3, MLflow with basic auth.
# Options through TEAM_ARGS, e.g. make team-up TEAM_ARGS="--mlflow-port 5000 --upgrade-db".
team-up: setup
	$(BIN)/labelspace team up $(TEAM_ARGS)

team-down:
	$(BIN)/labelspace team down $(TEAM_ARGS)

# A backup of the running stack into ~/labelspace-team-backups/DATE-TIME/ (or TEAM_BACKUP=DIR), outside the
# repository since it holds the stack's secrets; docs/team-server.md has the nightly job.
TEAM_BACKUP ?= $(HOME)/labelspace-team-backups/$(shell date +%Y%m%d-%H%M%S)
team-backup:
	$(BIN)/labelspace team backup --out $(TEAM_BACKUP) $(TEAM_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
