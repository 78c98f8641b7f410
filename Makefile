# aquarium-sweep. The two commands:  make sweep DATASET=...   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= sweep.yaml
DATASET ?=
STORE ?=
EXECUTOR ?= local
# GPU machines get the CUDA build of TensorFlow, others tensorflow-cpu.
TF_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
AQUARIUM_ZIP ?= $(wildcard ../shared/datasets/aquarium-tfcsv.zip)
export AQUARIUM_ZIP
# ImageNet weights for `weights: imagenet` without a network (a folder or s3:// prefix; README)
AQUARIUM_WEIGHTS ?= $(abspath $(wildcard ../shared/weights))
ifneq ($(AQUARIUM_WEIGHTS),)
export AQUARIUM_WEIGHTS
endif

.PHONY: install sweep smoke test test-fast test-cluster cluster-up cluster-down bench lock clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-$(TF_EXTRA): $(BIN)/activate pyproject.toml constraints.txt
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[$(TF_EXTRA),test]'
	touch $@

install: $(VENV)/.installed-$(TF_EXTRA)  ## create .venv and install the locked dependencies

sweep: install  ## the main job: prepare, every variant, aggregate, on this machine (DATASET=zip|url|gdrive)
	$(BIN)/aquarium sweep run --config $(CONFIG) --executor $(EXECUTOR) \
	  $(if $(DATASET),--source '$(DATASET)') $(if $(STORE),--store '$(STORE)')

smoke: CONFIG = smoke.yaml
smoke: sweep  ## the few-minute CPU sweep

test: install  ## the whole test suite (real S3 server, real training, Docker and Chromium when present)
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -ra -m 'not docker and not browser and not realdata and not cluster' $(PYTEST_ARGS)

test-cluster: install  ## only the real-Kubernetes tests: build/reuse v1.37.2, bring a cluster up, test, tear down
	$(BIN)/python -m pytest -ra -m cluster $(PYTEST_ARGS)

cluster-up: install  ## start the test cluster (and an S3 server at 198.18.0.1:9000) and leave it running
	AQK8S_S3_SERVER=$(abspath $(BIN))/moto_server bash tests/cluster/up.sh

cluster-down:  ## stop the test cluster and restore the host
	bash tests/cluster/down.sh

bench: install  ## every benchmark under bench/ (needs AQUARIUM_ZIP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

lock: $(BIN)/activate  ## re-resolve and rewrite constraints.txt
	$(BIN)/pip install -q -e '.[cpu,test]' && $(BIN)/pip freeze | grep -vi '^-e\|^aquarium' > constraints.txt

clean:
	rm -rf $(VENV) store .pytest_cache

# ---------------------------------------------------------------- containers and Kubernetes (Dockerfile, k8s/)
# make image [IMAGE=...] [TF_EXTRA=cpu|gpu] [BASE_IMAGE=...] [CA_BUNDLE=/path/ca.crt] [PIP_INDEX_URL=...]
# make plan | submit-sweep [CONFIG=...] [IMAGE=...] [NAMESPACE=...] [STORE=s3://...] [DATASET=s3://...|https://...]
#   [DETACH=1]
DOCKER ?= docker
IMAGE_TF_EXTRA := $(if $(filter command line environment,$(origin TF_EXTRA)),$(TF_EXTRA),gpu)
IMAGE ?= aquarium-sweep:$(if $(filter cpu,$(IMAGE_TF_EXTRA)),cpu,latest)
BASE_IMAGE ?= python:3.11-slim-bookworm
CA_BUNDLE ?=
PIP_INDEX_URL ?=
NAMESPACE ?=
ENDPOINT ?=
PLAN_DIR ?= build/k8s
KIND_CLUSTER ?= aquarium
K8S_ARGS = --config $(CONFIG) $(if $(STORE),--store '$(STORE)') $(if $(DATASET),--source '$(DATASET)') \
  $(if $(NAMESPACE),--namespace '$(NAMESPACE)') $(if $(ENDPOINT),--endpoint '$(ENDPOINT)') \
  $(if $(filter command line environment,$(origin IMAGE)),--image '$(IMAGE)')

.PHONY: image push plan submit-sweep local stop

image:  ## build the job image (GPU by default; TF_EXTRA=cpu for the CPU build)
	@if [ -n "$(CA_BUNDLE)" ] && [ "$(abspath $(CA_BUNDLE))" != "$(abspath build/ca-bundle.crt)" ]; then \
	  mkdir -p build && cp "$(CA_BUNDLE)" build/ca-bundle.crt; fi
	$(DOCKER) build --network host -t $(IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg TF_EXTRA=$(IMAGE_TF_EXTRA) \
	  $(if $(CA_BUNDLE),--build-arg CA_BUNDLE=build/ca-bundle.crt) \
	  $(if $(PIP_INDEX_URL),--build-arg PIP_INDEX_URL='$(PIP_INDEX_URL)') .

push:  ## push IMAGE to its registry
	$(DOCKER) push $(IMAGE)

plan: install  ## render + validate the sweep's Kubernetes manifests into PLAN_DIR (offline)
	$(BIN)/aquarium sweep plan $(K8S_ARGS) --out $(PLAN_DIR)

submit-sweep: install  ## run the sweep on the current kubectl context and watch it (DETACH=1: in the cluster)
	$(BIN)/aquarium sweep submit $(K8S_ARGS) $(if $(DETACH),--detach)

stop: install  ## delete the sweep's Jobs (results stay in the store)
	$(BIN)/aquarium sweep stop --config $(CONFIG) $(if $(NAMESPACE),--namespace '$(NAMESPACE)')

local: install  ## kind cluster + MinIO + CPU image + the smoke sweep, on this machine (DATASET=zip, optional)
	$(MAKE) image TF_EXTRA=cpu IMAGE=aquarium-sweep:cpu $(if $(CA_BUNDLE),CA_BUNDLE='$(CA_BUNDLE)')
	KIND_CLUSTER=$(KIND_CLUSTER) IMAGE=aquarium-sweep:cpu DATASET='$(DATASET)' AQUARIUM=$(BIN)/aquarium \
	  PYTHON_BIN=$(BIN)/python k8s/local/up.sh
