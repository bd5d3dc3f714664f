# Every target sets up what it needs, idempotently: a .venv, PyTorch, the package, and for the demo the
# Debian packages that build its corpus.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ncdetect-installed
DEMO_OUT ?= demo_out

.PHONY: venv debian-deps demo demo-quick demo-next-steps test test-fast test-floors fuzz bench bench-full lint docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# No NVIDIA GPU: the CPU wheel that lies on these machines' disk (a bare `torch` pulls a multi-GB CUDA build).
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q torch; \
	else \
		$(BIN)/python -m pip install -q torch==2.13.0; \
	fi
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

debian-deps:
	@scripts/ensure-debian-packages.sh

demo: venv debian-deps
	$(BIN)/ncdetect demo --out $(DEMO_OUT)
	@$(MAKE) --no-print-directory demo-next-steps OUT=$(DEMO_OUT)

demo-quick: venv debian-deps
	$(BIN)/ncdetect demo --quick --out $(DEMO_OUT)-quick
	@$(MAKE) --no-print-directory demo-next-steps OUT=$(DEMO_OUT)-quick

# What to do after a demo: ncdetect lives in .venv/bin, so a new shell needs the activate line first; then
# serve the demo's compact model trained on all the data (seed 0) as a web page and an HTTP API.
demo-next-steps:
	@model=$$(ls -d $(OUT)/compact/full-r1-s0-*/full-r1-s0 2>/dev/null | head -n 1); \
	echo; \
	echo "To use the ncdetect command, run this in your shell:"; \
	echo "  source $(VENV)/bin/activate"; \
	echo "To check your own audio in a browser (http://127.0.0.1:8000/) or over HTTP:"; \
	echo "  ncdetect serve --model $${model:-$(OUT)/compact/full-r1-s0-*/full-r1-s0}"

# Hypothesis profiles (tests/conftest.py): `test` draws the same examples on every run; `fuzz` runs the
# property tests only, with 25x their examples and fresh random seeds (failures kept in .hypothesis/).
test: venv debian-deps
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest

test-fast: venv
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -m "not slow"

fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -m hypothesis --hypothesis-show-statistics

# The dependency floors of pyproject.toml, installed in .venv-floors and tested (.ci/check-floors).
test-floors: venv
	.ci/check-floors

# `make bench` fits in 5 minutes on the project's 2-vCPU machine (benchmarks/RESULTS.md); `make bench-full`
# adds the long rows (largest sizes, slow baselines) without a time budget (benchmarks/RESULTS-full.md).
bench: venv debian-deps
	$(BIN)/python benchmarks/run_all.py

bench-full: venv debian-deps
	$(BIN)/python benchmarks/run_all.py --full

lint: venv
	$(BIN)/ruff check src tests benchmarks

# The documentation site (mkdocs.yml, docs/): the generated option and key tables must match the code, and
# `mkdocs build --strict` fails on a broken link or anchor or a page missing from the navigation.
docs: venv
	$(BIN)/python scripts/cli_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .venv-floors build dist src/*.egg-info .pytest_cache .ruff_cache
