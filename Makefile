# One command each on a fresh clone: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install demo test lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The tests also need the bench extra: tests/test_sasrec.py needs torch (CPU build; offline from
# the local index it adds about 20 s to an existing venv, under a minute with implicit to a fresh
# one). `make demo` does not pay for it.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

demo: install
	$(BIN)/recagent demo

lint: install
	$(BIN)/ruff check agent tests scripts
	$(BIN)/ruff format --check agent tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint $(BENCH_STAMP)
	$(BIN)/pytest -n auto --dist worksteal

bench: $(BENCH_STAMP)
	$(BIN)/python scripts/bench_retrieval.py

clean:
	rm -rf $(VENV) build *.egg-info
