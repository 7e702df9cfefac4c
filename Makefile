# chatd: `make run` starts the daemon, `make test` runs every check. Both create
# the virtual environment in .venv and install into it on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint typecheck pytest bench peers browser postgres clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,speed]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/chatd serve $(ARGS)

# Debian's chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL for the PostgreSQL tests: they start a throwaway server from
# its initdb and pg_ctl (tests/pg.py), unless CHATD_TEST_PG names one.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "$$CHATD_TEST_PG" ] || { \
	  echo "installing Debian postgresql for the PostgreSQL tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

lint: $(STAMP)
	$(VENV)/bin/ruff check chatd tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy chatd

pytest: $(STAMP) browser postgres
	$(PY) -m pytest -q $(ARGS)

test: lint typecheck pytest

# The scenarios, then search over 1,000,000 stored messages (bench/search.py:
# a few minutes, so in `make bench` only, never in `make test`), then S1 pinned
# next to the python floor and Node (bench/peers.sh; skipped without ../shared/peers).
bench: $(STAMP)
	$(PY) -m bench $(ARGS)
	$(PY) -m bench.search
	bash bench/peers.sh

# ../shared/peers against this working tree (bench/peers.sh): S1 by default.
peers: $(STAMP)
	bash bench/peers.sh $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts .peers
