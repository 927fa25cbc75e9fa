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

# uv installs the packages (~50 s; pip takes ~3 min, unpacking torch's CUDA libraries on one core) from
# the sources pip is configured with (scripts/pip_sources.py), choosing like pip the best version across
# them (unsafe-best-match), and compiles them to bytecode; if uv fails, pip does the install.
# The project's own modules are compiled too: where PYTHONDONTWRITEBYTECODE is set (CI), every process
# would compile them again on import.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	{ $(PY) -m pip install -q 'uv>=0.5' && \
	  $(VENV)/bin/uv pip install --python $(PY) -q --compile-bytecode --index-strategy unsafe-best-match \
	    $$($(PY) scripts/pip_sources.py) -r requirements.txt -e '.[test]'; } \
	  || { echo "uv could not install; pip installs instead"; $(PY) -m pip install -q -r requirements.txt -e '.[test]'; }
	$(PY) -m compileall -q fer_core dashboard pages benchmarks
	touch $@

run: install
	$(VENV)/bin/streamlit run dashboard/Home.py

test: install
	$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)
