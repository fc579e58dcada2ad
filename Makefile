# One set of commands for developers and CI.
PYTHON ?= python

.PHONY: install install-newest lock lint test test-all bench bench-smoke story

# The locked set (constraints.txt), as CI installs it.
install:
	$(PYTHON) -m pip install -c constraints.txt -e '.[dev]'

# The newest releases that pyproject.toml's bounds allow (CI checks that they stay green too).
install-newest:
	$(PYTHON) -m pip install -U -e '.[dev]'

# Refresh the lock after changing dependencies (uv resolves; pip installs from the result).
lock:
	$(PYTHON) -m pip install -q uv
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -q -o constraints.txt

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check chains runner.py tests
	$(PYTHON) -m mypy

# The suite runs on PYTEST_WORKERS processes (pytest-xdist), a test file to each at a time (a file's Ray, servers and
# fixtures stay in one process). 2 fits CI's 2 cores; more on a bigger machine, 0 for one process (a debugger).
# The tests marked `alone` (limits judged on a test server's clock) then run by themselves.
PYTEST_WORKERS ?= 2
PYTEST = $(PYTHON) -m pytest -q --durations=15
SPREAD = -n $(PYTEST_WORKERS) --dist loadfile

# Everyday: everything but the tests that need the real model server, the notebook or a wheel build.
# The slowest tests are listed at the end: where CI's minutes go.
test:
	$(PYTEST) $(SPREAD) -m "not slow and not alone"
	$(PYTEST) -m "alone and not slow"

# Everything, as CI runs it.
test-all:
	$(PYTEST) $(SPREAD) -m "not alone"
	$(PYTEST) -m alone

story:
	$(PYTHON) runner.py story --topics examples/topics.txt

# Benchmarks (benchmarks/README.md): the full suite (about 30 minutes on 2 cores), and the smoke version that
# only checks that every scenario and contender still runs (under a minute; never judges speed).
bench:
	$(PYTHON) benchmarks/run.py

bench-smoke:
	$(PYTHON) benchmarks/run.py --quick
