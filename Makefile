# sockgate: every target installs what it needs; nothing is installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GATEWAYS ?= 2
REDIS_PORT ?= 6379

.PHONY: help install lint format test run bench loadtest clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when the pinned dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed  ## Create the venv and install Python and Node dependencies

lint: $(VENV)/.installed  ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed  ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install lint  ## Lint, then run the whole test suite against real processes
	$(BIN)/pytest

run: install  ## Start the local cluster: Redis, auth on SQLite (:8000), $(GATEWAYS) gateways (:8001…)
	@GATEWAYS=$(GATEWAYS) REDIS_PORT=$(REDIS_PORT) $(BIN)/python -m deploy.local.cluster

clean:  ## Remove the venv, node_modules and local state
	rm -rf $(VENV) node_modules var .mypy_cache .ruff_cache .pytest_cache test-artifacts
