# make run  - install into .venv and start the dashboard
# make test - install into .venv and run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install run test

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/streamlit run dashboard/Home.py

test: install
	$(PY) -m pytest
