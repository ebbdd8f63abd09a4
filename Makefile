# Keel developer entry points. Works on a fresh clone: every target that needs
# Python depends on `deps`, which builds .venv only when it is missing or stale.
#
# Adding a system-level dependency step (kcat, npm packages, an S3 server):
# write a `deps-system` target and append it to DEPS below; nothing else
# needs to change.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXTRAS := test,bench
ARGS   ?=

# First interpreter on PATH that is Python 3.11 or newer (override: make PYTHON=/path/to/python3).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)

# Prerequisites of everything that runs code; append system steps here.
DEPS := venv

# kcat (Debian) and kafkajs (npm) for the client tests; quiet and idempotent.
deps-system:
	bash tools/install-test-deps.sh

.PHONY: help venv deps deps-system run test lint bench chaos clean distclean

help:
	@echo "make run    - start a broker on 127.0.0.1:9092 with data in ./keel-data (extra flags: ARGS='...')"
	@echo "make test   - ruff, then the whole pytest suite"
	@echo "make lint   - ruff only"
	@echo "make bench  - end-to-end benchmarks"
	@echo "make chaos  - the long chaos run (a cluster under faults; >= 200 faults)"
	@echo "make venv   - create/refresh .venv (done automatically by the targets above)"
	@echo "make clean  - remove caches and build output (keeps .venv and ./keel-data)"
	@echo "make distclean - clean, and remove .venv too"

$(VPY):
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ not found on PATH (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes (or the venv was just created).
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP)

deps: $(DEPS)

run: deps
	$(VENV)/bin/keel serve $(ARGS)

lint: deps
	$(VENV)/bin/ruff check .

test: deps deps-system
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -p no:cacheprovider $(ARGS)

bench: deps
	$(VPY) -m bench $(ARGS)

# The long chaos run: a 3-broker cluster over SeaweedFS behind a fault proxy, >= 200 faults.
CHAOS_ARGS ?= --duration 1800 --faults 200 --brokers 3 --store seaweedfs --report bench/results/chaos.json
chaos: deps
	$(VPY) -m tests.chaos.run $(CHAOS_ARGS) $(ARGS)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .hypothesis .benchmarks build dist *.egg-info

distclean: clean
	rm -rf $(VENV)
