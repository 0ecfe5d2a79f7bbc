# Two commands do all set-up: `make demo` (the main job) and `make test` (the whole suite).
# Both (re)build .venv from pyproject.toml when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test samples clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffhrnet-lab demo --out runs/demo

test: $(STAMP)
	DHL_PROFILE=smoke MPLBACKEND=agg $(BIN)/python -m pytest

samples: $(STAMP)
	$(BIN)/diffhrnet-lab samples --out data_samples

clean:
	rm -rf runs results .pytest_cache
