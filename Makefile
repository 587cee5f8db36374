# One place for the commands a developer and CI run. `make test` is what .ci/run calls.
PYTHON ?= python3
VENV := .venv
MXVENV := .venv-mxnet
BIN := $(VENV)/bin
PLUGINS := -e plugins/pytorch -e plugins/tensorflow -e plugins/mxnet -e plugins/jax -e plugins/xgboost -e plugins/paddle -e plugins/mpi -e plugins/tensorboard
PIP := PIP_DISABLE_PIP_VERSION_CHECK=1 $(BIN)/pip

.PHONY: setup setup-mxnet controlplane browser agent-tools openmpi cluster cluster-kwok example test test-fast lint crds bench-smoke bench clean

# The main environment: the core, the framework plugins, PyTorch, TensorFlow, JAX, XGBoost and mpi4py on CPU, test
# tools. mpi4py's wheel loads the system's libmpi only when imported (`make openmpi`, which the tests need and
# `make example` does not).
$(BIN)/mljob: pyproject.toml requirements/*.txt plugins/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/frameworks.txt -r requirements/test.txt -e . $(PLUGINS)
	touch $@

# MXNet needs numpy<1.24, so it gets its own environment with the core and its plugin.
$(MXVENV)/bin/mljob: pyproject.toml requirements/mxnet.txt plugins/mxnet/pyproject.toml
	$(PYTHON) -m venv $(MXVENV)
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(MXVENV)/bin/pip install -q -r requirements/mxnet.txt -e . -e plugins/mxnet
	touch $@

setup: $(BIN)/mljob
setup-mxnet: $(MXVENV)/bin/mljob

# Kubeflow training-operator's own end-to-end suite as each kubeflow-training wheel ships it (test/e2e), in an
# environment per version (the wheels pin kubernetes<36): tests/kubeflow/suite.py and bench/kubeflow_suite.py run it.
KUBEFLOW_E2E_VERSIONS := 1.9.4 1.8.1
.venv-kubeflow-%/bin/pytest: requirements/kubeflow-e2e.txt
	$(PYTHON) -m venv .venv-kubeflow-$*
	PIP_DISABLE_PIP_VERSION_CHECK=1 .venv-kubeflow-$*/bin/pip install -q -r requirements/kubeflow-e2e.txt kubeflow-training==$*
	touch $@

# Kubeflow's own SDK (`kubeflow`, Trainer v2's client; it pins kubernetes<36 too): its unmodified progress helper
# drives mljob's progress endpoint in tests/operator/test_e2e_progress.py.
.venv-kubeflow-sdk/bin/python: requirements/kubeflow-sdk.txt
	$(PYTHON) -m venv .venv-kubeflow-sdk
	PIP_DISABLE_PIP_VERSION_CHECK=1 .venv-kubeflow-sdk/bin/pip install -q -r requirements/kubeflow-sdk.txt
	touch $@

setup-kubeflow-e2e: $(foreach v,$(KUBEFLOW_E2E_VERSIONS),.venv-kubeflow-$(v)/bin/pytest) .venv-kubeflow-sdk/bin/python

# Debian's Chromium for the web UI's browser tests (tests/operator/test_e2e_ui.py): Playwright drives it through
# executable_path and downloads no browser of its own. Root installs it; anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@chromium --version 2>/dev/null

# The node agent's pod networks need iproute2's `ip` (Debian marks it important, not essential: slim images lack it)
# and, for kube-proxy's ClusterIP rules in the pods' network, nftables' `nft`; nsenter, unshare and setpriv are
# util-linux's, which every Debian has. After `browser` when both are asked for (make -j3 test): two apt-gets at
# once would fail on apt's lock.
agent-tools: | $(filter browser,$(MAKECMDGOALS))
	@{ command -v ip && command -v nft; } >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 nftables \
		>/dev/null; }
	@ip -V && nft --version

# Debian's OpenMPI (mpirun, libmpi, mpicc) and OpenSSH's server for the MPI plugin's example and tests
# (examples/mpi-allreduce): `mljob run` runs every rank through the launcher's own mpirun, and mpi4py loads its
# libmpi; on the node agent's cluster the workers run sshd and the launcher's mpirun reaches them over ssh. About
# 30 s with apt's lists fresh. After `browser` and `agent-tools` when those are asked for too (make -j3 test): two
# apt-gets at once would fail on apt's lock.
openmpi: | $(filter browser agent-tools,$(MAKECMDGOALS))
	@{ command -v mpirun && command -v mpicc && test -x /usr/sbin/sshd; } >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openmpi-bin \
		libopenmpi-dev openssh-server >/dev/null; }
	@mpirun --version | head -1

# The real Kubernetes control plane the operator is tested against (etcd, kube-apiserver, controller-manager,
# scheduler, kubectl, kwok), the placement add-ons (Kueue, scheduler-plugins), Kubeflow's training-operator for
# the head-to-head bench and CoreDNS for the node agent's pods, built from the Go modules pinned in controlplane/
# into controlplane/bin/. About 27 minutes cold on 2 cores beside pip (kube-apiserver alone about 7, Kueue and
# scheduler-plugins about 6, CoreDNS about 2); seconds while versions.env and the wrapper modules are unchanged.
controlplane:
	$(PYTHON) controlplane/build.py

# Start it for a person, so jobs train for real: the control plane, the pods' network, CoreDNS and a node agent that
# runs pods as host processes (root needed for the network namespaces: docs/node-agent.md). Prints the KUBECONFIG
# to export and where each example's overlay is; Ctrl-C stops every process. CLUSTER_ARGS adds to it: "--agents 2",
# "--with kueue --with coscheduling --with volcano-crds" (the placement add-ons). The MXNet example also needs
# `make setup-mxnet`. Without root: `make cluster-kwok`, the control plane with kwok's simulated nodes (no training).
cluster: setup controlplane agent-tools openmpi
	$(BIN)/python -m controlplane --with agent $(CLUSTER_ARGS)

cluster-kwok: setup controlplane
	$(BIN)/python -m controlplane $(CLUSTER_ARGS)

# README's first command: train the PyTorch DDP example (a master and two workers) locally.
example: setup
	$(BIN)/mljob run examples/pytorch-ddp/job.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mljob controlplane plugins/pytorch/mljob_pytorch plugins/tensorflow/mljob_tensorflow plugins/mxnet/mljob_mxnet \
		plugins/jax/mljob_jax plugins/xgboost/mljob_xgboost plugins/paddle/mljob_paddle plugins/mpi/mljob_mpi \
		plugins/tensorboard/mljob_tensorboard
	$(BIN)/lint-imports

crds: setup
	$(BIN)/mljob crd > crds/mljob.io_mljobs.yaml
	$(BIN)/python -m mljob.core.kubeflow.crd crds/kubeflow

# bench/headtohead.py: mljob (on MLJobs, on PyTorchJobs) beside training-operator v1.8.1 and the raw limit (bench/README.md).
bench-smoke: setup controlplane
	$(BIN)/python bench/render.py --smoke
	$(BIN)/python bench/launch.py --smoke
	$(BIN)/python bench/operator.py --smoke
	$(BIN)/python bench/progress.py --smoke
	$(BIN)/python bench/headtohead.py --smoke

bench: setup controlplane
	$(BIN)/python bench/render.py
	$(BIN)/python bench/launch.py
	$(BIN)/python bench/operator.py
	$(BIN)/python bench/progress.py
	$(BIN)/python bench/headtohead.py --json bench/results/headtohead.json

# Everything CI checks: lint, the whole test suite (real training and the operator on the real control plane
# included), a benchmark smoke. The two Python environments and the control plane are set up side by side:
# pip waits on the network, the Go build on the CPU.
test:
	$(MAKE) -j3 setup setup-mxnet setup-kubeflow-e2e controlplane browser agent-tools openmpi
	$(MAKE) lint
	$(BIN)/python -m pytest -p tests.no_skip
	$(MAKE) bench-smoke

# Without the framework end-to-end runs: for a quick loop while editing.
test-fast: setup controlplane browser agent-tools openmpi
	$(BIN)/pytest -m "not frameworks and not slow"

clean:
	rm -rf $(VENV) $(MXVENV) .mypy_cache .ruff_cache .pytest_cache controlplane/bin .controlplane
