# Entry points named in README.md. Everything runs from the repository root.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install lint shellcheck typecheck test test-unit test-integration crds grpc-stubs demo \
	demo-local kind-up kind-down cluster-up cluster-down k8s-binaries bench-server bench-trainer \
	bench-operator-scale bench-operator-churn bench-operator-watch-cost gpu-check images prometheus \
	deploy-manifests node-binaries node-up node-down host-packages kind-load-images \
	test-e2e s3-server clean

$(UV):
	hack/install-uv.sh

install: $(UV)  ## .venv with every extra, from uv.lock
	$(UV) sync --frozen --all-extras

# The same commands as the pre-commit hooks (.pre-commit-config.yaml).
lint: install shellcheck  ## ruff (rules, format) and shellcheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

shellcheck:  ## every shell script, with the pinned shellcheck (installed into .tools/)
	hack/shellcheck.sh

typecheck: install
	$(VENV)/bin/mypy

grpc-stubs: install  ## regenerate the server's gRPC Open Inference Protocol message stubs
	$(PY) server_image/gen_grpc_stubs.py

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

host-packages:  ## Debian packages of the real node and the images; starts dockerd (root)
	hack/host-packages.sh

# `make demo` and `make test-e2e` run on the kind cluster of hack/kind/up.sh (two workers).
K8S_BIN = $(shell hack/k8s-binaries.sh --print-bin-dir)
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGES := modelyard/operator:$(VERSION) modelyard/trainer:$(VERSION) modelyard/server:$(VERSION)

test-e2e: install kind-up  ## tests with real pods on the kind cluster (1 control plane, 2 workers)
	$(MAKE) images kind-load-images
	KUBECONFIG=$(CURDIR)/.cluster-kind/kubeconfig $(PY) -m pytest -m node tests/e2e $(PYTEST_ARGS)

kind-load-images:  ## the project's images and busybox into the kind cluster's workers
	MODELYARD_CLUSTER_DIR=$(CURDIR)/.cluster-kind hack/node-images.sh build
	hack/kind/load-images.sh --archive .cluster-kind/node/images/busybox.tar $(IMAGES)

s3-server:  ## the S3-compatible server of the storage tests (versitygw), built into the cache
	hack/s3-server.sh

prometheus:  ## Prometheus and promtool of the monitoring tests, built into the cache
	hack/prometheus.sh

test-unit: install  ## tests that need no cluster and no Go-built tool
	$(PY) -m pytest -m "not cluster and not node and not chart" $(PYTEST_ARGS)

test-integration: install k8s-binaries s3-server prometheus  ## unit, chart, monitoring, kwok control plane, S3; no real pods
	$(PY) -m pytest -m "not chaos and not node" $(PYTEST_ARGS)

# The chaos tests restart an API server, so they get a control plane of their own.
CHAOS_CLUSTER := MODELYARD_CLUSTER_DIR=$(CURDIR)/.cluster-chaos MODELYARD_ETCD_PORT=30379 \
	MODELYARD_ETCD_PEER_PORT=30380 MODELYARD_APISERVER_PORT=30443 MODELYARD_KCM_PORT=30257 \
	MODELYARD_SCHEDULER_PORT=30259 MODELYARD_KWOK_PORT=30247

test: lint typecheck test-integration  ## the README's test command: lint, types, every test
	$(CHAOS_CLUSTER) $(PY) -m pytest -m chaos $(PYTEST_ARGS)
	$(MAKE) test-e2e

bench-operator-scale: install  ## 1,000 ModelDeployments + 200 ModelTrainings (BENCH_ARGS to resize)
	$(PY) bench/operator_scale.py $(BENCH_ARGS)

demo: install kind-up  ## the main job: a model's whole life on the kind cluster (two workers)
	$(MAKE) images kind-load-images
	$(PY) hack/demo.py --kubeconfig .cluster-kind/kubeconfig --kubectl $(K8S_BIN)/kubectl \
		--helm $(K8S_BIN)/helm

demo-local: install  ## the same without Kubernetes: torchrun, the server, an OIP client
	$(PY) hack/demo_local.py

kind-up: host-packages  ## kind: 1 control plane + 2 workers, built here (KUBECONFIG=.cluster-kind/kubeconfig)
	nice -n 19 hack/kind/up.sh

kind-down:  ## delete the kind cluster, stop kind's Docker engine (the caches stay)
	hack/kind/down.sh

bench-operator-churn: install  ## operator RSS over a 10-minute create/update/delete churn
	$(PY) bench/operator_churn.py $(BENCH_ARGS)

bench-operator-watch-cost: install  ## what unrelated Deployments and Jobs cost the operator
	$(PY) bench/operator_watch_cost.py $(BENCH_ARGS)

bench-server: install  ## serving throughput against KServe, a naive server and raw ONNX Runtime
	bench/server/make_venvs.sh
	$(PY) bench/server_throughput.py

bench-trainer: install  ## trainer samples/s against a textbook PyTorch loop
	$(PY) bench/trainer_throughput.py

gpu-check: install  ## GPU vs CPU trainer and server, trainer vs a plain loop; --cpu in BENCH_ARGS
	$(PY) bench/gpu_check.py $(BENCH_ARGS)

# BASE=local (the default here): a debootstrap base image, as no registry is reachable.
BASE ?= local
images: host-packages  ## modelyard/{operator,trainer,server} in the host's Docker
	hack/images.sh $(if $(BASE),--base $(BASE))

deploy-manifests: k8s-binaries  ## re-render deploy/default/modelyard.yaml from charts/modelyard
	hack/render-deploy.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
