# surveillance — developer and CI entry points (GNU make).
#
#   make demo     embedded demo (SQLite + synthetic feed) into ./demo-out
#   make test     full test suite against a real PostgreSQL started by the run
#                 (extra pytest arguments: make test PYTEST_ARGS="tests/test_x.py -k foo")
#   make lint     ruff + mypy
#   make clean    caches and demo output; `make distclean` also removes the venv
#
# Every target creates the virtual environment on first use and reinstalls when
# pyproject.toml changes.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c

VENV   ?= .venv
PYTHON ?= python3
# Installed first, in its own pip call: the pinned CPU build comes from the local
# wheel directory (pip find-links); an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
STAMP := $(VENV)/.installed

LINT_PATHS := surveillance detectors connectors dashboards

.DEFAULT_GOAL := install
.PHONY: install demo test lint clean distclean

install: $(STAMP)

# The venv itself. Debian's system python3 ships venv/ensurepip separately.
$(PY):
	@if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	    if [ "$$(id -u)" -ne 0 ]; then \
	        echo "error: $(PYTHON) cannot create venvs; run: sudo apt-get install -y python3-venv" >&2; \
	        exit 1; \
	    fi; \
	    echo "$(PYTHON) lacks ensurepip: installing python3-venv"; \
	    apt-get update -q; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)

# Dependencies; the stamp is refreshed only when both installs succeed.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install '$(TORCH)'
	$(PIP) install -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/surveillance demo --out demo-out

test: $(STAMP)
	bash scripts/ensure_postgres.sh
	bash scripts/ensure_dcmtk.sh
	bash scripts/ensure_alertmanager.sh
	bash scripts/ensure_render_tools.sh
	SURVEILLANCE_REQUIRE_PG=1 SURVEILLANCE_REQUIRE_KAFKA=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy $(LINT_PATHS)
	$(VENV)/bin/lint-imports

clean:
	rm -rf demo-out .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
