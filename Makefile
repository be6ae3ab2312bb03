# Two commands for a newcomer: `make run` starts the whole stack, `make test` runs the tests.
# Both create the virtualenv in .venv on first use.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start web + worker (and a local Redis if REDIS_URL is unreachable), as the Procfile says.
run: $(STAMP)
	./scripts/run-local

## Lint, check formatting, type-check and run the test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest
