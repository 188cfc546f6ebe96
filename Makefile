# The interface to this project: `make run`, `make test`, `make bench`, `make lint`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
GOLDEN ?= ../shared/golden
GOLDEN_SFE ?= ../shared/golden-sfe
PORT   ?= 8000

# Locks (`make lock`, from the requirements/*.txt inputs; docs in requirements/README.md): lock.txt is
# everything (this venv, CI), lock-worker.txt the worker images', lock-service.txt the API image's, and
# lock-worker-cpu.txt the CPU worker image's (lock-worker.txt without torch's CUDA build and its packages).
LOCK    := requirements/lock.txt
COMPILE := $(PY) -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
           --no-emit-find-links --no-header $(if $(UPGRADE),--upgrade)
CUDA_ONLY := ^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==

.PHONY: help venv lock run test test-fast bench lint verify-golden download-models dev-bundle doctor clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

$(STAMP): $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# Exact versions, every file checked against its hash; torch is the index's 2.14.1 (on this machine, its disk).
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install everything from requirements/lock.txt (idempotent)

lock: $(STAMP)  ## requirements/*.txt -> the hash-pinned locks (UPGRADE=1: newest allowed; requirements/README.md)
	$(COMPILE) -o requirements/lock.txt requirements/dev.txt
	$(COMPILE) -o requirements/lock-worker.txt requirements/pipeline.txt requirements/service.txt
	$(COMPILE) -o requirements/lock-service.txt requirements/service.txt
	awk '/^[a-z0-9]/ { cuda = $$0 ~ /$(CUDA_ONLY)/ } !cuda' requirements/lock-worker.txt > requirements/lock-worker-cpu.txt

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
