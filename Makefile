# Every target sets up .venv on first use: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-repeat lint format type bench e2e run clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its dev extra

test: $(STAMP)  ## run the test suite with branch coverage (fails under 90%)
	$(PY) -m pytest --cov --cov-report=term

test-repeat: $(STAMP)  ## the whole suite 10 times, each in a new random order
	for i in 1 2 3 4 5 6 7 8 9 10; do $(PY) -m pytest -q -p randomly -p no:cacheprovider || exit 1; done

lint: $(STAMP)  ## ruff check + format check
	$(PY) -m ruff check indexer_service tests benchmarks e2e
	$(PY) -m ruff format --check indexer_service tests benchmarks e2e

format: $(STAMP)  ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix indexer_service tests benchmarks e2e
	$(PY) -m ruff format indexer_service tests benchmarks e2e

type: $(STAMP)  ## mypy --strict on the package, its tests, the benchmarks and e2e
	$(PY) -m mypy

bench: $(STAMP)  ## run the benchmarks (not part of the tests)
	$(PY) -m benchmarks

e2e: $(STAMP)  ## real opencode (from the npm registry) against a mock LLM, followed live; compares
	$(PY) -m e2e.real_opencode

run: $(STAMP)  ## start the service on the OpenCode storage (the demo if there is none)
	$(VENV)/bin/indexer-service run --demo-if-missing $(ARGS)

clean:  ## remove .venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage build *.egg-info
