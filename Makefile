# `make test` is the README's test command and what .ci/run runs: it installs
# everything the tests need (the Debian prometheus server, the pip extras) and runs them.
PY ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: test deps venv demo bench clean

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

venv: $(VENV)/bin/python

deps: venv
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; fi; }
	$(PIP) install -q -U pip
	# torch is pinned to the CPU build; a bare `torch` would pull a multi-GB CUDA build.
	$(PIP) install -q 'torch==2.13.0' -e '.[test]'

test: deps
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(PIP) install -q -e '.[demo]'
	$(VENV)/bin/stagetrace demo

bench: deps
	$(VENV)/bin/python benchmarks/instrumentation.py
	$(VENV)/bin/python benchmarks/collector.py
	$(VENV)/bin/python benchmarks/forensics.py
	$(VENV)/bin/python benchmarks/grafana_backend.py

clean:
	rm -rf $(VENV) build *.egg-info stagetrace-demo
