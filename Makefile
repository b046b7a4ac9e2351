# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup system demo test bench clean

setup: system $(INSTALLED)

system:
	@bash infra/system-packages.sh

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[cloud,edge,dev]'
	@touch $(INSTALLED)

demo: setup
	$(BIN)/edgelake demo

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/edgelake bench produce --json

clean:
	-$(BIN)/edgelake broker down
	rm -rf .edgelake $(VENV)
