# sockgate: every target installs what it needs; nothing is installed by hand.
SHELL := /bin/bash
# The venv's interpreter: Debian's CPython 3.11 where it is installed with its venv module, any
# python3 otherwise. Debian builds it with PGO and LTO, as the python:3.11 image the Dockerfile
# ships is built; a default pyenv build is neither, and the gateway spent 5–14 % more CPU per
# connect on one (loadtests/benchmark_history.md, round 9). `make clean install` to switch.
PYTHON ?= $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null \
	&& echo /usr/bin/python3.11 || echo python3)
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
	$(BIN)/pip install --quiet -e '.[dev,load]'
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
	rm -rf $(VENV) node_modules loadtests/node_baseline/node_modules var .mypy_cache .ruff_cache .pytest_cache test-artifacts

.PHONY: certs
certs: deploy/certs/tls.crt  ## Self-signed TLS pair for the compose load balancer (deploy/certs/)

# For local use only (CN and SAN localhost); production mounts real ones in the same place.
deploy/certs/tls.crt:
	@mkdir -p deploy/certs
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes \
		-days 365 -subj "/CN=localhost" \
		-addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
		-keyout deploy/certs/tls.key -out $@
	chmod 600 deploy/certs/tls.key

# Load tests and benchmarks: Locust, matplotlib and py-spy come with the `load` extra; the
# Node baseline server and load generator have their own pinned package-lock.json.
NODE_BASELINE := loadtests/node_baseline
$(NODE_BASELINE)/node_modules/.installed: $(NODE_BASELINE)/package.json $(NODE_BASELINE)/package-lock.json
	cd $(NODE_BASELINE) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

SCENARIO ?= storm
LOADTEST_ARGS ?=
BENCH_ARGS ?=

loadtest: $(VENV)/.installed  ## Bounded headless Locust run (SCENARIO=storm|broadcast|token_churn|login_storm) on a loopback cluster; reports in var/loadtest/
	SOCKGATE_LOADTEST=1 $(BIN)/python -m loadtests.loadtest --scenario $(SCENARIO) $(LOADTEST_ARGS)

bench: $(VENV)/.installed $(NODE_BASELINE)/node_modules/.installed  ## Auth and gateway benchmarks beside the Node baseline; rewrites docs/benchmarks.md
	SOCKGATE_LOADTEST=1 $(BIN)/python -m loadtests.bench $(BENCH_ARGS)
