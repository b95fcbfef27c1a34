# Two commands do all set-up on a fresh machine (Python 3.10+):
#   make demo   # creates .venv, installs, runs the offline demo
#   make test   # creates .venv, installs, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch (a looser requirement would pull a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: install demo test bench
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/radgenome-hf demo

test: $(VENV)/.installed
	$(PY) -m pytest -q --doctest-modules radgenome_hf tests

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py
