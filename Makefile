# `make test` is the README's test command and what .ci/run runs: it installs
# everything the tests need (the Debian prometheus server, the pip extras) and runs them.
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
# Two workers, one test file each at a time (a file's module fixtures, such as the real
# cases' stores, are built once): most tests wait on the servers and processes they start,
# and the suite alone used 1.1 of 2 cores (docs/benchmarks.md, "CI time").
# `make test PYTEST_ARGS=` runs them in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15
# Files holding tests marked `alone` (their detection depends on the CPU they get): they run
# after the others, by themselves. tests/test_skeleton.py checks this list is complete.
ALONE_FILES = tests/test_demo.py
# Servers the tests start themselves (on 127.0.0.1): Prometheus, Alertmanager, and
# headless Chromium with its WebDriver for the UI tests. gcc and python3-dev: pip builds the
# optional C accelerator of the profile snapshots (instrumentation/_snapshot.c) with them;
# without them the install still succeeds, and tests/test_profile_snapshot.py fails under CI.
APT_PACKAGES = prometheus prometheus-alertmanager chromium chromium-driver gcc python3-dev

.PHONY: test deps venv demo bench clean

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

venv: $(VENV)/bin/python

deps: venv
	@missing=""; for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(PIP) install -q -U pip
	# torch is pinned to the CPU build; a bare `torch` would pull a multi-GB CUDA build.
	$(PIP) install -q 'torch==2.13.0' -e '.[test]'

test: deps
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) -m "not alone"
	$(VENV)/bin/python -m pytest -m alone $(ALONE_FILES)

demo: venv
	$(PIP) install -q -e '.[demo]'
	$(VENV)/bin/stagetrace demo

bench: deps
	$(VENV)/bin/python benchmarks/instrumentation.py
	$(VENV)/bin/python benchmarks/collector.py
	$(VENV)/bin/python benchmarks/forensics.py
	$(VENV)/bin/python benchmarks/grafana_backend.py

clean:
	rm -rf $(VENV) build *.egg-info stagetrace-demo instrumentation/_snapshot.*.so
