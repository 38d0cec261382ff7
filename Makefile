# Entry points named in README.md. Everything runs from the repository root.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install lint typecheck test test-unit crds demo cluster-up cluster-down k8s-binaries \
	bench-server bench-trainer bench-operator-scale images deploy-manifests node-binaries node-up \
	node-down test-e2e clean

$(UV):
	hack/install-uv.sh

install: $(UV)  ## .venv with every extra, from uv.lock
	$(UV) sync --frozen --all-extras

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: install
	$(UV) run --frozen mypy

crds: install  ## regenerate crds/ from the API models
	$(PY) -m modelyard_operator.api.crd crds

k8s-binaries:  ## build or fetch pinned Kubernetes binaries into the cache
	hack/k8s-binaries.sh

cluster-up: k8s-binaries  ## local control plane (etcd, apiserver, controllers, kwok nodes)
	hack/cluster.sh up

cluster-down:  ## stops the real node first when one is up
	hack/node.sh down
	hack/cluster.sh down

node-binaries:  ## containerd, CNI plugins, crictl, CoreDNS, local-path, metrics-server
	hack/node-binaries.sh

node-up: cluster-up node-binaries  ## a real node (kubelet, containerd) on this machine: Linux + root
	hack/node.sh up

node-down:
	hack/node.sh down

test-e2e: install  ## tests with real pods (needs `make node-up`)
	$(PY) -m pytest -m node tests/e2e $(PYTEST_ARGS)

test-unit: install k8s-binaries  ## tests that need no cluster (helm and kubectl render the chart)
	$(PY) -m pytest -m "not cluster and not node" $(PYTEST_ARGS)

# The chaos tests restart an API server, so they get a control plane of their own.
CHAOS_CLUSTER := MODELYARD_CLUSTER_DIR=$(CURDIR)/.cluster-chaos MODELYARD_ETCD_PORT=30379 \
	MODELYARD_ETCD_PEER_PORT=30380 MODELYARD_APISERVER_PORT=30443 MODELYARD_KCM_PORT=30257 \
	MODELYARD_SCHEDULER_PORT=30259 MODELYARD_KWOK_PORT=30247

test: lint typecheck k8s-binaries  ## the README's test command: lint, types, every test
	$(PY) -m pytest -m "not chaos" $(PYTEST_ARGS)
	$(CHAOS_CLUSTER) $(PY) -m pytest -m chaos $(PYTEST_ARGS)

bench-operator-scale: install  ## 1,000 ModelDeployments + 200 ModelTrainings (BENCH_ARGS to resize)
	$(PY) bench/operator_scale.py $(BENCH_ARGS)

demo: install  ## the main job
	$(PY) hack/demo_local.py

bench-server: install  ## serving throughput against KServe, a naive server and raw ONNX Runtime
	bench/server/make_venvs.sh
	$(PY) bench/server_throughput.py

bench-trainer: install  ## trainer samples/s against a textbook PyTorch loop
	$(PY) bench/trainer_throughput.py

images:  ## modelyard/{operator,trainer,server}; BASE=local: a debootstrap base, no registry
	hack/images.sh $(if $(BASE),--base $(BASE))

deploy-manifests: k8s-binaries  ## re-render deploy/default/modelyard.yaml from charts/modelyard
	hack/render-deploy.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
