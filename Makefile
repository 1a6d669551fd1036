# POLCA for Kubernetes — developer entry points. `make demo` and `make test` set everything up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONTROL_PLANE_BIN = $(shell tools/build-control-plane.sh 2>/dev/null | tail -1)
CLUSTER_DIR ?= $(HOME)/.cache/polca/cluster

.PHONY: help venv control-plane lint test test-fast crds demo cluster-up cluster-down \
        bench bench-node bench-operator bench-sim clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the project with its test extra

control-plane: ## Build (or find in ~/.cache/polca) kube-apiserver, etcd, kubectl and helm
	@tools/build-control-plane.sh

lint: venv ## ruff, mypy --strict and the import-linter layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy polca operator/polca_operator node-daemon/polca_node testbed/polca_testbed tests benchmarks
	$(VENV)/bin/lint-imports

test: venv control-plane lint ## The one test command: set-up, lint, types, layers, all tests
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(VENV)/bin/pytest -p no:cacheprovider

test-fast: venv ## Unit tests only
	$(VENV)/bin/pytest -p no:cacheprovider tests/unit

crds: venv ## Render crds/*.yaml (and the chart's copy) from the pydantic models
	$(PY) -m polca.api.crdgen --out crds

demo: venv control-plane ## POLCA at work on an embedded cluster
	@echo "make demo is not built yet (issue 7). It will start an embedded kube-apiserver,"
	@echo "the operator and simulated GPU nodes, replay a request trace and show a power"
	@echo "domain held under its budget. Until then: 'make cluster-up' starts the control plane."
	@exit 2

cluster-up: venv control-plane ## Start a local kube-apiserver + etcd and print its kubeconfig
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(PY) -m polca_testbed.cluster up --dir $(CLUSTER_DIR)

cluster-down: venv ## Stop the cluster started by cluster-up
	$(PY) -m polca_testbed.cluster down --dir $(CLUSTER_DIR)

clean: ## Remove the venv and build outputs (the binary cache in ~/.cache/polca stays)
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
