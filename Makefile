# Every target sets itself up on a fresh Debian 12 machine (scripts/setup.sh is idempotent and fast).
.PHONY: setup run test bench lint

VENV := .venv
CONFIG ?=

setup:
	bash scripts/setup.sh

# `make run` starts the demo; `make run CONFIG=pg_doorman.yaml` runs with that config.
run:
	bash scripts/run.sh $(CONFIG)

test:
	bash scripts/test.sh

bench: setup
	$(VENV)/bin/python bench/run.py

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
