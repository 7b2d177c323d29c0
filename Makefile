# The README's two commands: `make demo` and `make test`. Everything else is plumbing for them.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CACHE  := $(CURDIR)/.cache

# Offline, quiet Prefect with its home inside the project's ignored cache, never ~/.prefect.
export PREFECT_HOME ?= $(CACHE)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export STYLIZE_CACHE ?= $(CACHE)/stylize

.PHONY: setup demo test test-fast bench schema clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ray]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/stylize demo

test: setup
	$(PY) -m pytest -ra

test-fast: setup
	$(PY) -m pytest -ra -m "not slow"

bench: setup
	$(PY) bench/bench_engine.py

schema: setup
	$(PY) -m flows.manifest > manifests/manifest.schema.json

clean:
	rm -rf $(VENV) $(CACHE) out
