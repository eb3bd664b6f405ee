# Two commands set everything up on a fresh machine:
#   make run    create .venv, install distillab with its dependencies, run the default experiment (offline)
#   make test   same set-up, then the linters (make lint) and the whole test suite
#   make lint   ruff (lint + format check) on the code and tests, mypy on src/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m distillab $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# the suite on every core (pytest-xdist); make test PYTEST_ARGS="-n 0 -k teacher" runs a part in one process
PYTEST_ARGS ?= -n auto
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache
