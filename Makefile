# Offload: `make run` starts everything locally, `make test` runs lint and the whole suite.
# Only python3 (3.11+) and make are needed: the first target creates the environment.

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
# Use the system Python, never a downloaded one; trust the system's CA certificates.
export UV_PYTHON_DOWNLOADS := never
export UV_SYSTEM_CERTS := 1
export UV_PYTHON := $(PYTHON)

.PHONY: help install run test test-fast lint format clean

help:
	@echo "make run      start Redis, the API, a worker, the notifier and Flower on this machine"
	@echo "make test     lint, then the whole test suite (real Redis, real workers)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make format   apply ruff's fixes and formatting"

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Offload needs Python 3.11 or newer as $(PYTHON) (set PYTHON=...)"; exit 1; }
	@$(PYTHON) -m venv $(TOOLS) || \
		{ echo "python venv is missing: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) uv.lock pyproject.toml libs/core/pyproject.toml services/*/pyproject.toml tools/dev/pyproject.toml
	$(UV) sync --frozen
	@touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/python -m offload_dev.run_local

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(TOOLS) .run .pytest_cache .mypy_cache .ruff_cache
