# POLCA for Kubernetes — developer entry points. `make demo` and `make test` set everything up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONTROL_PLANE_BIN = $(shell tools/build-control-plane.sh 2>/dev/null | tail -1)
CLUSTER_DIR ?= $(HOME)/.cache/polca/cluster

.PHONY: help venv control-plane prometheus checkov gpu-check node-packages image-if-podman lint test \
        test-fast crds demo cluster-up cluster-down bench bench-node bench-operator bench-sim \
        bench-replay bench-soak clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

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

prometheus: ## Install Debian's prometheus package (tests start it on loopback) unless present
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "prometheus missing: run 'make prometheus' as root"; exit 1; fi; \
	  apt-get update && apt-get install -y --no-install-recommends prometheus; }

checkov: ## Install checkov (the chart's static security checks) into its own venv in ~/.cache/polca
	@tools/install-checkov.sh

# A real node (kubelet + containerd) and the image build (podman/buildah, a Debian base made by
# mmdebstrap) use Debian's packages; `make node-packages` installs the missing ones as root.
NODE_PACKAGES := podman buildah runc mmdebstrap containerd containernetworking-plugins iptables \
                 uidmap fuse-overlayfs conntrack ethtool socat catatonit

node-packages: ## Install Debian's podman, buildah, runc, mmdebstrap and containerd unless present
	@missing="$$(for p in $(NODE_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$missing; run 'make node-packages' as root"; exit 1; fi; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; fi

test: venv control-plane prometheus checkov lint image-if-podman ## The one test command: set-up, lint, types, layers, all tests
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" POLCA_CHECKOV="$$(tools/install-checkov.sh)" \
	  $(VENV)/bin/pytest -p no:cacheprovider

# tests/e2e run the image as built: where podman is installed, rebuild it so they test the
# sources at hand (seconds when nothing changed: podman reuses its cached layers). Without
# podman those tests skip and say why; `make e2e` installs everything.
image-if-podman:
	@if command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1; then \
	  out="$$(EXTRAS="$(IMAGE_EXTRAS)" tools/build-image.sh $(IMAGE_REPO):$(IMAGE_TAG) 2>&1)" || { echo "$$out"; exit 1; }; fi

test-fast: venv ## Unit tests only
	$(VENV)/bin/pytest -p no:cacheprovider tests/unit

# Python for gpu-check: the venv, or a GPU machine's own python3 (with pytest, torch, pynvml)
# where no package index is reachable: `make gpu-check GPU_PY=python3`.
GPU_PY ?= $(PY)

gpu-check: $(if $(filter $(PY),$(GPU_PY)),venv) ## Read-only GPU contract tests and a phase probe against the GPU's profile (skips without a GPU)
	PYTHONPATH=.:node-daemon:testbed $(GPU_PY) -m pytest -p no:cacheprovider -q -m gpu \
	  --confcutdir=tests/unit/node/gpu tests/unit/node/gpu/test_gpu_contract.py
	PYTHONPATH=.:node-daemon:testbed $(GPU_PY) -m polca_testbed.gpu_check $(GPU_CHECK_ARGS)

crds: venv ## Render crds/*.yaml (and the chart's copy) from the pydantic models
	$(PY) -m polca.api.crdgen --out crds

# `make demo` knobs; `.venv/bin/python -m polca_testbed.demo --help` explains each.
NODES ?= 8
GPUS ?= 8
PROFILE ?= A100-80GB
SPEEDUP ?= 20
DURATION ?= 180
OVERSUB ?= 0.3
POLICY ?= examples/polca-default.yaml
TRACE ?= $(wildcard ../shared/traces/AzureLLMInferenceTrace_conv.csv)
OUT ?= demo-out

demo: venv control-plane ## POLCA at work on an embedded cluster (NODES GPUS PROFILE SPEEDUP DURATION OVERSUB POLICY TRACE OUT)
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(PY) -m polca_testbed.demo \
	  --nodes $(NODES) --gpus $(GPUS) --profile $(PROFILE) --speedup $(SPEEDUP) \
	  --duration $(DURATION) --oversub $(OVERSUB) --policy "$(POLICY)" --trace "$(TRACE)" --out "$(OUT)"

cluster-up: venv control-plane ## Start a local kube-apiserver + etcd and print its kubeconfig
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(PY) -m polca_testbed.cluster up --dir $(CLUSTER_DIR)

cluster-down: venv ## Stop the cluster started by cluster-up
	$(PY) -m polca_testbed.cluster down --dir $(CLUSTER_DIR)

bench-operator: venv control-plane prometheus ## Operator figures: reaction time, API writes, cost, RSS
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(PY) benchmarks/bench_operator.py

bench-node: venv control-plane ## Node daemon CPU and RSS, production read path (pynvml, no numpy) and fake, 8 GPUs at 0.5 s
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(PY) benchmarks/bench_node.py

bench-sim: venv ## Simulator speed, one core: an hour of a 50-server row at 100 ms; a 1,000-server hall at 1 s (2 h request engine, a week fluid)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 $(PY) benchmarks/bench_sim.py

bench-replay: venv ## Replay speed: a week of a 100-node domain at 15 s, replay and capacity, one core
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 $(PY) benchmarks/bench_replay.py

SOAK_MINUTES ?= 30

bench-soak: venv control-plane ## Soak (not in CI): SOAK_MINUTES of the demo load with random restarts; RSS, threads, fds bounded
	POLCA_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" SOAK_MINUTES=$(SOAK_MINUTES) $(PY) benchmarks/bench_soak.py

clean: ## Remove the venv and build outputs (the binary cache in ~/.cache/polca stays)
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache

# --- container image, kind and Helm (docs/install.md) ----------------------------------------
IMAGE_REPO ?= polca
IMAGE_TAG ?= dev
# The image's extras. `sim`: fake GPUs, which kind and the real-node tests (tests/e2e) use. For
# real GPUs build the runtime image without it: `make image IMAGE_EXTRAS=` (about 140 MB less).
IMAGE_EXTRAS ?= sim
KIND_CLUSTER ?= polca
# The chart values kind-deploy installs; the e2e test (tests/e2e/test_chart_on_node.py) starts from
# the same file on both paths: `make e2e` adds deploy/real-node/values.yaml, `make kind-e2e` only
# the image and no example policy (polca_testbed/e2e_target.py).
KIND_VALUES := deploy/kind/values.yaml
POLCA_NAMESPACE ?= polca-system
# Docker and kind are not needed by `make test`; these targets say so plainly when they are missing.
need = @command -v $(1) >/dev/null 2>&1 || { echo "make $@: '$(1)' is not installed; $(2)" >&2; exit 1; }
need-engine = @docker info >/dev/null 2>&1 || { echo "make $@: no Docker engine answers ('docker info' failed); the image and kind targets need one" >&2; exit 1; }

.PHONY: e2e image kind-up kind-load kind-deploy kind-e2e kind-down helm-lint

image: ## Build the POLCA image: Docker, else podman on a Debian-packages base (tools/build-image.sh)
	@if docker info >/dev/null 2>&1 || command -v podman >/dev/null 2>&1; then \
	  EXTRAS="$(IMAGE_EXTRAS)" tools/build-image.sh $(IMAGE_REPO):$(IMAGE_TAG); else \
	  echo "make $@: no Docker engine answers ('docker info' failed) and podman is not installed (make node-packages)" >&2; exit 1; fi

e2e: venv node-packages image ## A real node here (kubelet, containerd) running the image and the chart (tests/e2e; root)
	POLCA_CONTROL_PLANE_BIN="$$(tools/build-control-plane.sh --node | tail -1)" \
	  $(VENV)/bin/pytest -p no:cacheprovider tests/e2e

kind-up: ## Create a kind cluster with two fake-GPU workers (deploy/kind/cluster.yaml)
	$(call need,docker,kind runs its nodes in Docker)
	$(call need,kind,see https://kind.sigs.k8s.io)
	$(need-engine)
	kind create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml

kind-load: ## Load the image into the kind cluster
	$(call need,kind,see https://kind.sigs.k8s.io)
	$(need-engine)
	kind load docker-image $(IMAGE_REPO):$(IMAGE_TAG) --name $(KIND_CLUSTER)

kind-deploy: ## Install the chart in kind with fake GPUs (deploy/kind/values.yaml)
	$(call need,kind,see https://kind.sigs.k8s.io)
	$(need-engine)
	helm="$$(command -v helm || echo "$$(tools/build-control-plane.sh | tail -1)/helm")"; \
	"$$helm" upgrade --install polca charts/polca --kube-context kind-$(KIND_CLUSTER) \
	  -n $(POLCA_NAMESPACE) --create-namespace -f $(KIND_VALUES) \
	  --set image.repository=$(IMAGE_REPO),image.tag=$(IMAGE_TAG) --wait --timeout 5m

# The e2e chart test of `make e2e` on the kind cluster: after kind-up, image and kind-load, not
# kind-deploy (the test installs and uninstalls its own release). POLCA_E2E_KUBECONFIG makes it
# skip starting the local node.
kind-e2e: venv ## Run the e2e chart test (tests/e2e) on the kind cluster (after kind-up, image, kind-load)
	$(call need,kind,see https://kind.sigs.k8s.io)
	$(need-engine)
	kubeconfig="$$(mktemp)"; trap 'rm -f "$$kubeconfig"' EXIT; \
	kind get kubeconfig --name $(KIND_CLUSTER) > "$$kubeconfig" && \
	POLCA_E2E_KUBECONFIG="$$kubeconfig" POLCA_E2E_IMAGE=$(IMAGE_REPO):$(IMAGE_TAG) \
	  $(VENV)/bin/pytest -p no:cacheprovider tests/e2e/test_chart_on_node.py

kind-down: ## Delete the kind cluster
	$(call need,kind,see https://kind.sigs.k8s.io)
	kind delete cluster --name $(KIND_CLUSTER)

helm-lint: control-plane ## helm lint --strict the chart with its default, kind and all-features values
	@for values in "" $(KIND_VALUES) charts/polca/ci/all-features-values.yaml; do \
	  $(CONTROL_PLANE_BIN)/helm lint --strict charts/polca $${values:+-f $$values} || exit 1; done
