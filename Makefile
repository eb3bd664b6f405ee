# Two commands set everything up on a fresh machine:
#   make run    create .venv, install distillab with what a run needs, run the default experiment (offline)
#   make test   the same, plus the test and lint tools, then the linters (make lint) and the whole test suite
#   make lint   ruff (lint + format check) on the code and tests, mypy on src/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: setup run test lint clean

setup: $(STAMP)

# what a run needs: distillab and its dependencies (torch, torchvision, hydra, tensorboard, scikit-learn, torchjd)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# what the tests and linters add: pytest, ruff, mypy, Hydra's launchers and Optuna sweeper, cvxpy
$(DEV): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(DEV)

run: $(STAMP)
	$(PY) -m distillab $(ARGS)

lint: $(DEV)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# the suite on every core (pytest-xdist); make test PYTEST_ARGS="-n 0 -k teacher" runs a part in one process
PYTEST_ARGS ?= -n auto
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache
