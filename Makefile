# Set-up is part of every target: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest-xdist workers for `make test` (docs/PERFORMANCE.md, "The test suite"); 0 runs
# the suite in one process
TEST_WORKERS ?= 2

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: demo test test-fast venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch pinned here: on these machines 2.13.0 resolves to a local CPU build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	# compile the CPU training loop now, not inside the first run (no compiler: Python loop)
	$(PY) -m mrlfads.native
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mrlfads demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo_work
