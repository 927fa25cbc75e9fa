# make run  - install into .venv and start the dashboard
# make test - install into .venv and run the test suite (what CI runs)
# make test-fast - the same without the end-to-end checks marked slow
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Four test workers (pytest-xdist) on two cores: while other jobs load the machine, each process gets
# an equal share, so more workers keep more of the cores for the tests (2 -> 3 workers measured
# 730 -> ~590 s of tests under two busy loops, 3 -> 4: see README).
# Each test file runs on one worker, so its module fixtures are built once;
# PARALLEL= runs the suite in one process.
PARALLEL ?= -n 4 --dist loadfile --no-loadscope-reorder

.PHONY: install run test test-fast

install: $(VENV)/.installed

# --no-compile: no bytecode at install; Python compiles a module when it is first imported (torch alone
# ships thousands of modules the project never imports)
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements.txt -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/streamlit run dashboard/Home.py

test: install
	$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)
