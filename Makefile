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

.PHONY: help install run test lint format clean images k8s kind-up dev bench

help:
	@echo "make run      start Redis, the API, a worker, the notifier and Flower on this machine"
	@echo "              PLUGINS=examples/acme-jobs adds job plugin projects and their queues"
	@echo "make test     lint, then the whole test suite (real Redis, real workers)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make format   apply ruff's fixes and formatting"
	@echo "make images   build offload-api, offload-worker, offload-notifier (TAG=dev)"
	@echo "make bench    the benchmarks with their ratios (bench/README.md); BENCH_ARGS=--quick for a smoke run"
	@echo "make k8s      render deploy/helm/offload into k8s/ and its README's values table (tests fail when stale)"
	@echo "make kind-up  create a kind cluster named offload with KEDA (needs kind, helm, internet)"
	@echo "make dev      skaffold dev on that cluster: build, deploy the chart, port-forward"

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Offload needs Python 3.11 or newer as $(PYTHON) (set PYTHON=...)"; exit 1; }
	@$(PYTHON) -m venv $(TOOLS) || \
		{ echo "python venv is missing: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) uv.lock pyproject.toml libs/core/pyproject.toml services/*/pyproject.toml tools/dev/pyproject.toml clients/python/pyproject.toml
	$(UV) sync --frozen
	@touch $@

install: $(VENV)/.installed

# PLUGINS="dir ..." adds job plugin projects (README, "Write your own job").
run: install
	$(VENV)/bin/python -m offload_dev.run_local $(addprefix --plugin ,$(PLUGINS))

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Without a reachable registry the script builds a local Debian base first (needs root).
images:
	scripts/build-images.sh

# wrk drives the submit benchmark; without it a slower Python load generator stands in.
bench: install
	@command -v wrk >/dev/null 2>&1 || apt-get install -y -qq wrk >/dev/null 2>&1 || \
		echo "wrk is not installed: bench.submit falls back to its Python load generator"
	$(VENV)/bin/python -m bench.run_all $(BENCH_ARGS)

k8s: install
	$(VENV)/bin/python -m offload_dev.render_k8s
	$(VENV)/bin/python -m offload_dev.chart_values_table

# The users' Kubernetes path; these need kind, helm and skaffold on PATH and a registry.
KIND_CLUSTER ?= offload
kind-up:
	kind get clusters | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER)
	helm repo add kedacore https://kedacore.github.io/charts --force-update
	helm upgrade --install keda kedacore/keda --namespace keda --create-namespace --wait

dev:
	skaffold dev --profile kind --port-forward

clean:
	rm -rf $(VENV) $(TOOLS) .run .pytest_cache .mypy_cache .ruff_cache
