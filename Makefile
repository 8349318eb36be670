# `make demo` and `make test` each create .venv when missing, install pinned versions, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-fast install clean

$(VENV)/.base: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) -e '.[test,convert,beam]'
	touch $@

install: $(VENV)/.base

demo: $(VENV)/.base
	$(PY) launch/run.py

test: $(VENV)/.test
	$(PY) -m pytest -q tests

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs
