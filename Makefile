# Two set-up commands that work on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pin torch first: an unpinned torch in a fresh venv would pull several GB of CUDA wheels.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.domainlock-installed
DEMO   ?= runs/demo
export DOMAINLOCK_DATA ?= $(CURDIR)/.dl-data

.PHONY: demo test test-all lint setup data clean-demo readme

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

data: $(STAMP)
	$(PY) -m domainlock data build mnist uci-digits syn mnistm

## The main job on the embedded default data: build domains, train the owner's model, evaluate it.
demo: data
	bash scripts/demo.sh $(DEMO)

test: $(STAMP)
	$(PY) -m ruff check $(wildcard src tests scripts benchmarks)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(PY) -m ruff check $(wildcard src tests scripts benchmarks)

readme: $(STAMP)
	$(PY) scripts/readme_results.py
