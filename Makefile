# Two entry points: `make run` (main job, default config) and `make test` (test suite); `make check` lints.
# All create .venv on first use; the stamp file makes re-runs skip the install.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test test-fast test-slow check bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	@# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python scripts/pipeline.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow and not integration" $(ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow $(ARGS)

# ruff lint, ruff format check, and the layering table of scripts/check_layers.py
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python scripts/check_layers.py

bench: $(STAMP)
	$(VENV)/bin/python scripts/bench_spd.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
