# osbuild-deb developer entry points. Run `sudo ci/setup` once on a fresh machine.
VENV ?= .venv
PY = $(VENV)/bin/python
STORE ?= $(CURDIR)/.store
OUTPUT ?= $(CURDIR)/output
SAMPLE ?= samples/default.json
EXPORT ?= assembler
PYTEST_ARGS ?=

.PHONY: setup sample test test-fast lint clean

setup:
	ci/setup

sample: setup
	$(VENV)/bin/osbuild --store $(STORE) --output-directory $(OUTPUT) --export $(EXPORT) $(SAMPLE)

test: setup
	$(PY) -m pytest -n auto -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -n auto -q -m "not slow" $(PYTEST_ARGS)

# Stages, sources, assemblers and runners are extensionless Python: name them.
EXECUTABLES = $(filter-out %.json,$(wildcard stages/* assemblers/* sources/* runners/*))

lint: setup
	$(VENV)/bin/ruff check osbuild test $(EXECUTABLES)
	$(VENV)/bin/mypy osbuild

clean:
	rm -rf $(OUTPUT)
	$(VENV)/bin/osbuild store prune --all --store $(STORE) 2>/dev/null || true
