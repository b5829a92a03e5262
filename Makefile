# osbuild-deb developer entry points. `ci/setup` (run by every target that needs
# it) sets up a fresh machine. Builds and tests need root: as a user they run
# through sudo, as root (where sudo may not exist) directly.
VENV ?= .venv
PY = $(VENV)/bin/python
STORE ?= $(CURDIR)/.store
OUTPUT ?= $(CURDIR)/output
SAMPLE ?= samples/debian13-qcow2.json
EXPORT ?= qcow2
PYTEST_ARGS ?=
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo -E)

.PHONY: setup sample samples bench test test-fast lint clean

setup:
	ci/setup

# A pinned manifest is made from its template once and reused, so rebuilds are
# cached; `make samples` refreshes the pins.
samples/%.json: samples/src/%.yaml | setup
	$(AS_ROOT) $(VENV)/bin/osbuild-mpp $< $@

sample: setup $(SAMPLE)
	$(AS_ROOT) $(VENV)/bin/osbuild --store $(STORE) --output-directory $(OUTPUT) --export $(EXPORT) $(SAMPLE)

# Regenerate every pinned sample manifest from its template (needs the archive).
SAMPLE_SOURCES = $(wildcard samples/src/*.yaml)
samples: setup
	for src in $(SAMPLE_SOURCES); do \
		$(AS_ROOT) $(VENV)/bin/osbuild-mpp $$src samples/$$(basename $$src .yaml).json || exit 1; \
	done

# Foreign-architecture samples are built cold too, beside the default one. Each run
# is appended to bench/results.jsonl and rewrites the README's table (commit both);
# BENCH_ARGS="--figure 'make test=1130'" records a figure measured elsewhere.
BENCH_FOREIGN ?= samples/debian13-arm64-qcow2.json samples/debian13-riscv64-qcow2.json
bench: setup $(SAMPLE) $(BENCH_FOREIGN)
	$(AS_ROOT) $(PY) bench/bench.py --manifest $(SAMPLE) --export $(EXPORT) \
		$(if $(BENCH_FOREIGN),--foreign $(BENCH_FOREIGN)) $(BENCH_ARGS)

# The 50 slowest test phases and the time per test file close the output: where the
# suite's time goes, in every CI log (the file table also when tests failed).
TEST_REPORT ?= .test-report.xml
test: setup
	$(AS_ROOT) $(PY) -m pytest -n auto -q --durations=50 --junitxml=$(TEST_REPORT) \
		$(PYTEST_ARGS); status=$$?; $(PY) bench/suite_time.py $(TEST_REPORT); exit $$status

test-fast: setup
	$(AS_ROOT) $(PY) -m pytest -n auto -q -m "not slow" $(PYTEST_ARGS)

# Golden cases (test/cases, one per stage and assembler): build a and b of each,
# compare the tree diff with the golden. STAGES="org.osbuild.hostname ..." picks
# cases, OFFLINE=1 skips those that need the Debian archive, JOBS=1 runs serially,
# CASES_STORE=DIR keeps a store across runs (keyed by the code's fingerprint).
STAGES ?=
OFFLINE ?=
JOBS ?= auto
.PHONY: check-images golden

check-images: setup
	$(AS_ROOT) env CASES="$(STAGES)" CASES_OFFLINE="$(OFFLINE)" MATRIX="$(MATRIX)" \
		$(PY) -m pytest -n $(JOBS) -q test/cases/test_cases.py $(PYTEST_ARGS)

# Refresh manifests (from test/cases/casedefs.py) and goldens, deliberately; review
# `git diff test/cases` before committing.
golden: setup
	$(AS_ROOT) $(PY) tools/gen-golden --manifests $(if $(OFFLINE),--offline) $(STAGES)

# Boot tests (test/vm) alone: build test images into one shared store, boot them
# under qemu (TCG when KVM does not work) and check them from inside. Slow: about
# 8 minutes on 2 cores. OSBUILD_VM_STORE=DIR keeps the store across runs; failed
# boots leave logs and screendumps under OSBUILD_BOOT_ARTIFACTS (or pytest's tmp).
.PHONY: check-vm check-matrix
check-vm: setup
	$(AS_ROOT) env MATRIX="$(MATRIX)" $(PY) -m pytest -n $(JOBS) -q test/vm $(PYTEST_ARGS)

# The distro x architecture matrix (cells in test/matrix.py): each cell's sample
# built, read by image-info and booted, then one table of cell x phase with times.
# MATRIX="debian13-arm64 debian13-riscv64" picks cells (default: all); GOLDEN=1
# rewrites the cells' image-info goldens (test/vm/goldens) for review.
MATRIX ?=
check-matrix: setup
	@report=$$(mktemp -d); \
	$(AS_ROOT) env MATRIX="$(MATRIX)" MATRIX_REPORT=$$report MATRIX_GOLDEN="$(GOLDEN)" \
		$(PY) -m pytest -n $(JOBS) -q test/vm/test_matrix.py $(PYTEST_ARGS); rc=$$?; \
	MATRIX="$(MATRIX)" $(PY) test/matrix.py $$report; rm -rf $$report; exit $$rc

# Stages, sources, assemblers and runners are extensionless Python: name them.
# SCRIPTS (every tool, the Python ones of bench/ and ci/) are type-checked too, each
# alone (to mypy every extensionless file is the module __main__), with the test
# modules they import (casekit, matrix) on mypy's path as on theirs.
SCRIPTS = $(wildcard tools/*) bench/check-images-parallel ci/etc-snapshot ci/stage-gate
EXECUTABLES = $(filter-out %.json,$(wildcard stages/* assemblers/* sources/* runners/* test/data/stages/* test/data/assemblers/*)) $(SCRIPTS)

lint: setup
	$(VENV)/bin/ruff check osbuild verify test bench $(EXECUTABLES)
	$(VENV)/bin/mypy osbuild verify $(wildcard bench/*.py)
	for script in $(SCRIPTS); do MYPYPATH=test/cases:test:bench $(VENV)/bin/mypy $$script || exit 1; done

clean:
	rm -rf $(OUTPUT)
	$(AS_ROOT) $(VENV)/bin/osbuild store prune --all --store $(STORE) 2>/dev/null || true
