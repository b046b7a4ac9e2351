# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup system jars tflite-venv edge-venvs demo test bench clean

setup: system $(INSTALLED) jars

system:
	@bash infra/system-packages.sh

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[cloud,dev]'
	@touch $(INSTALLED)

# The JVM jars (Apache Kafka, delta-spark, hadoop-aws), with Maven from the pinned poms under infra/jars, into the cache (once; a changed pom fetches again).
jars: $(INSTALLED)
	@$(BIN)/edgelake jars fetch

# tflite-runtime 2.14 with numpy<2, beside the main venv: the tests run the int8 model in it too.
tflite-venv:
	@PYTHON=$(PYTHON) bash infra/tflite-runtime-venv.sh

# .venv-edge and .venv-edge-tflite: the edgelake-edge wheel (infra/edge-dist) with one runtime each, and nothing of the cloud side.
edge-venvs:
	@PYTHON=$(PYTHON) bash infra/edge-venv.sh

demo: setup
	$(BIN)/edgelake demo

test: setup tflite-venv edge-venvs
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/edgelake bench all --out bench/results

clean:
	-$(BIN)/edgelake broker down
	rm -rf .edgelake $(VENV) .venv-tflite .venv-edge .venv-edge-tflite
