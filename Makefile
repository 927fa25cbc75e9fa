# make run  - install into .venv and start the dashboard
# make test - install into .venv and run the test suite (what CI runs)
# make test-fast - the same without the end-to-end checks marked slow
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Three test workers (pytest-xdist) on two cores: while other jobs load the machine, each process gets
# an equal share, so a third worker keeps more of the cores for the tests (measured: see README).
# Each test file runs on one worker, so its module fixtures are built once;
# PARALLEL= runs the suite in one process.
PARALLEL ?= -n 3 --dist loadfile --no-loadscope-reorder

.PHONY: install run test test-fast

install: $(VENV)/.installed

# The project's own modules are compiled once here: where PYTHONDONTWRITEBYTECODE is set (CI), every
# process would compile them again on import (pip compiles only the packages it installs).
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -e '.[test]'
	$(PY) -m compileall -q fer_core dashboard pages benchmarks
	touch $@

run: install
	$(VENV)/bin/streamlit run dashboard/Home.py

test: install
	$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)
