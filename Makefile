# The two commands of the README: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean bench bench-queries crash

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/protobase demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check protobase tests
	$(BIN)/ruff format --check protobase tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format protobase tests
	$(BIN)/ruff check --fix protobase tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

bench: | $(BIN)/python
	$(BIN)/pip install -e '.[bench]'
	$(BIN)/python bench/embedded.py
	$(BIN)/python bench/queries.py

bench-queries: | $(BIN)/python
	$(BIN)/python bench/queries.py

# More SIGKILL crash runs than `make test` does: make crash N=500
N ?= 500
crash: $(STAMP)
	PROTOBASE_CRASH_RUNS=$(N) $(BIN)/python -m pytest -q tests/file_storage/test_crash.py
