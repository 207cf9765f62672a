# Two commands for a newcomer:  make run  (results/table2.csv on the tiny preset)  and  make test.
VENV ?= .venv
PYTHON ?= python3
# CPU wheel here; on a GPU node set TORCH_SPEC to the CUDA build you want before `make setup`.
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: setup run test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .
	touch $@

run: setup
	$(BIN)/snakemake -c$(CORES) results/table2.csv

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf results/* .snakemake
