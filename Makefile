# The interface to this project: `make run`, `make test`, `make bench`, `make lint`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GOLDEN ?= ../shared/golden
GOLDEN_SFE ?= ../shared/golden-sfe
PORT   ?= 8000

.PHONY: help venv run test test-fast bench lint verify-golden download-models dev-bundle doctor clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

$(STAMP): requirements/pipeline.txt requirements/service.txt requirements/dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	# torch first, exactly pinned: pip takes it from this machine's disk copy.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements/dev.txt
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install everything (idempotent)

run: $(STAMP)  ## start API + worker with embedded defaults on 127.0.0.1:$(PORT)
	PORT=$(PORT) $(PY) -m api dev

test: $(STAMP)  ## the whole suite; starts PostgreSQL, Redis and S3 itself when none is configured (tests/services)
	$(PY) -m pytest -q -ra --durations=30

test-fast: $(STAMP)  ## unit tests only (no services, no browser, no 1024 models)
	$(PY) -m pytest -q -m "not slow and not services and not browser"

verify-golden: $(STAMP)  ## numerical parity with the reference implementations
	$(PY) -m pipeline verify-golden $(GOLDEN)
	$(PY) -m pipeline verify-golden $(GOLDEN_SFE)

bench: $(STAMP)  ## full-size benchmarks -> docs/BENCHMARKS.md
	$(PY) -m bench

download-models: $(STAMP)  ## fetch the official weights (needs internet) into models/official
	$(PY) -m pipeline download --dir models/official

dev-bundle: $(STAMP)  ## write the tiny random-weight development bundle
	$(PY) -m pipeline make-dev-bundle models/dev

doctor: $(STAMP)  ## are the models real and wired right? (BUNDLE=dir; FAST=1: files, loads, a render)
	$(PY) -m pipeline doctor $(if $(BUNDLE),--bundle $(BUNDLE)) $(if $(FAST),--fast)

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check .

clean:  ## remove the virtual environment and local data
	rm -rf $(VENV) data
