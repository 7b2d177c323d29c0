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

.PHONY: setup lock system-deps demo test test-fast bench bench-gpu schema clean

setup: $(STAMP)

# Every package at the version requirements.lock pins, then the project itself (editable) on top of them.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --requirement requirements.lock
	$(PY) -m pip install --quiet --no-deps --editable .
	@touch $(STAMP)

# requirements.lock pins the whole tree of the base and the extras that `make setup` (test, ray, kubernetes,
# fetch) and the worker image (deploy/Dockerfile: ray, kubernetes, fetch) install, resolved from PyPI for
# Python >= 3.11 on every platform (--universal: the image's Python is 3.12). Run it after changing a pin in
# pyproject.toml; pins the change does not touch stay as they are (add --upgrade to move them all).
LOCK_EXTRAS := --extra test --extra ray --extra kubernetes --extra fetch
UV_VERSION  := 0.13.9
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 $(LOCK_EXTRAS) --output-file requirements.lock

# Debian packages the tests need: PostgreSQL, for the Prefect-on-PostgreSQL test.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else \
			echo "PostgreSQL is not installed and cannot be installed here; its test will be skipped"; \
		fi; \
	fi

demo: setup
	@mkdir -p "$(PREFECT_HOME)" "$(STYLIZE_CACHE)"  # Prefect warns, rather than creating a missing home's parents
	$(VENV)/bin/stylize demo

test: setup system-deps
	@mkdir -p "$(PREFECT_HOME)" "$(STYLIZE_CACHE)"
	$(PY) -m pytest -ra --durations=15

test-fast: setup
	@mkdir -p "$(PREFECT_HOME)" "$(STYLIZE_CACHE)"
	$(PY) -m pytest -ra -m "not slow"

bench: setup
	$(PY) bench/bench_engine.py
	$(PY) bench/bench_throughput.py
	$(PY) bench/bench_memory.py --sizes 512 1024 2048
	$(PY) bench/bench_memory.py --sizes 2048 --memory-limit-gb 4
	$(PY) bench/bench_checkpoint.py --size 512 --every 20
	$(PY) bench/bench_orchestration.py --pairs 20000 --handover 0 30

bench-gpu: setup
	$(PY) bench/bench_gpu.py --size 256 --json bench-gpu-256.json
	$(PY) bench/bench_gpu.py --size 512 --json bench-gpu-512.json

schema: setup
	$(PY) -m flows.manifest > manifests/manifest.schema.json

clean:
	rm -rf $(VENV) $(CACHE) out
