# Two entry points do all set-up on a fresh machine:
#   make demo   runs the main job (the quickstart on built-in synthetic data)
#   make test   runs lint and the whole test suite (make test-fast: without the slow tests)
# Each creates .venv and installs maskkit with its dev and docs extras on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/quickstart

.PHONY: install demo test test-fast lint docs docs-serve bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev,docs]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/quickstart.py --out $(OUT)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest

# The inner loop: everything but the end-to-end, torchrun, mkdocs and benchmark runs.
test-fast: lint
	$(PY) -m pytest -m "not slow"

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed
	$(VENV)/bin/mkdocs serve

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py --device cpu

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache .hypothesis
