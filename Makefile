# The two commands a new user types: `make run` and `make test`.
# Everything else (virtual environment, install, migrations) happens on the way.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

export BROKER_DEV_MODE ?= true

.PHONY: run test lint venv bench clean

$(STAMP): pyproject.toml sdk/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./sdk
	touch $(STAMP)

venv: $(STAMP)

# The broker, the two demo holders and the demo app (examples/), each its own process.
run: $(STAMP)
	BROKER_DEMO=$${BROKER_DEMO:-true} $(BIN)/broker migrate
	BROKER_DEMO=$${BROKER_DEMO:-true} $(BIN)/python -m examples.run

lint: $(STAMP)
	$(BIN)/ruff check broker tests bench migrations examples sdk
	$(BIN)/mypy broker sdk/broker_sdk

# The browser tests drive Debian's Chromium (never a browser downloaded by Playwright) and
# check every page with axe-core from the npm registry, kept under var/ (not in the repository).
CHROMIUM := /usr/bin/chromium
AXE := var/npm/node_modules/axe-core/axe.min.js

$(CHROMIUM):
	apt-get install -y --no-install-recommends chromium || \
	  { apt-get update && apt-get install -y --no-install-recommends chromium; }

$(AXE):
	npm install --prefix var/npm --no-audit --no-fund axe-core@4

test: $(STAMP) lint $(CHROMIUM) $(AXE)
	BROKER_TEST_DATABASE_URL=$${BROKER_TEST_DATABASE_URL:-$(PG_URL)} $(BIN)/pytest -q

bench: $(STAMP)
	BROKER_TEST_DATABASE_URL=$${BROKER_TEST_DATABASE_URL:-$(PG_URL)} $(BIN)/python bench/catalog.py
	$(BIN)/python bench/charter.py
	BROKER_TEST_DATABASE_URL=$${BROKER_TEST_DATABASE_URL:-$(PG_URL)} $(BIN)/python bench/tokens.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/ops.py
	$(BIN)/python bench/federation.py
	BROKER_TEST_DATABASE_URL=$${BROKER_TEST_DATABASE_URL:-$(PG_URL)} $(BIN)/python bench/audit.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
