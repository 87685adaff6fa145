# Set-up and the main commands. `make demo` and `make test` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNS   := runs

.PHONY: setup demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the local CPU build first: an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,export,serve,formats]"
	touch $@

setup: $(VENV)/.installed

demo: setup  ## train the default model on the bundled FSDD, test on the official split, print the metrics
	$(BIN)/audioclf train datasets/fsdd/manifest.csv --test-fold 0 --out $(RUNS)/fsdd-demo --overwrite

test: setup  ## the whole suite, as CI runs it
	$(BIN)/python -m pytest

test-fast: setup  ## the unit tests alone, without the end-to-end ones marked slow
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(RUNS) .pytest_cache
