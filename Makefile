# One command each on a fresh clone: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench clean

install: $(STAMP)

# The bench extra too: tests/test_sasrec.py needs torch (CPU build; offline from the local index
# it adds about 20 s to an existing venv, under a minute with implicit to a fresh one).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

demo: install
	$(BIN)/recagent demo

lint: install
	$(BIN)/ruff check agent tests scripts
	$(BIN)/ruff format --check agent tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -n auto --dist worksteal

bench: install
	$(BIN)/python scripts/bench_retrieval.py

clean:
	rm -rf $(VENV) build *.egg-info
