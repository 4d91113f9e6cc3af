# Two commands on a fresh machine with Python 3.11:  make demo  (whole workflow on the embedded synthetic data)
#                                                    make test  (the test suite)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin

.PHONY: setup demo benchmark test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The demo's many small training jobs run one thread each, side by side: torch's CPU training scales sublinearly
# (two 1-thread jobs do about 1.8x the work of one 2-thread job), and the demo has 16 independent training jobs.
demo: setup
	$(BIN)/snakemake all --cores $(CORES) --set-threads autoencoder=1 pretrain=1

# About two hours on 2 cores (README, "The benchmark configuration"): larger synthetic sets, four runs, a
# label-efficiency grid.
benchmark: setup
	$(BIN)/snakemake all --cores $(CORES) --set-threads autoencoder=1 pretrain=1 --configfile config/benchmark.yaml

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check -l 120 Snakefile rules
	$(BIN)/ruff check workflow tests benchmarks
	$(BIN)/ruff format --check workflow tests benchmarks

clean:
	rm -rf results .snakemake
