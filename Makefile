# One set of commands for developers and CI.
PYTHON ?= python

.PHONY: install lint test test-all bench bench-smoke story

install:
	$(PYTHON) -m pip install -e '.[dev]'

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check chains runner.py tests
	$(PYTHON) -m mypy

# Everyday: everything but the tests that need the real model server, the notebook or a wheel build.
test:
	$(PYTHON) -m pytest -q -m "not slow"

# Everything, as CI runs it.
test-all:
	$(PYTHON) -m pytest -q

story:
	$(PYTHON) runner.py story --topics examples/topics.txt

# Benchmarks (benchmarks/README.md): the full suite (about 17 minutes on 2 cores), and the smoke version that
# only checks that every scenario and contender still runs (under a minute; never judges speed).
bench:
	$(PYTHON) benchmarks/run.py

bench-smoke:
	$(PYTHON) benchmarks/run.py --quick
