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

.PHONY: install sweep smoke test test-fast bench lock clean

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
	$(BIN)/python -m pytest -ra -m 'not docker and not browser and not realdata' $(PYTEST_ARGS)

bench: install  ## every benchmark under bench/ (needs AQUARIUM_ZIP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

lock: $(BIN)/activate  ## re-resolve and rewrite constraints.txt
	$(BIN)/pip install -q -e '.[cpu,test]' && $(BIN)/pip freeze | grep -vi '^-e\|^aquarium' > constraints.txt

clean:
	rm -rf $(VENV) store .pytest_cache
