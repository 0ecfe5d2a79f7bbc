# Two commands do all set-up: `make demo` (the main job: HRNet, DDPM pixel classifier and Diff-HRNet trained on one
# labelled Dubai scene, scored on another) and `make test` (the whole suite).
# Both (re)build .venv from pyproject.toml when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast notebooks bench samples clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffhrnet-lab demo --out runs/demo

# Unit tests, then every notebook executed by nbval in the smoke profile (--nbval-lax: only cells
# marked NBVAL_CHECK_OUTPUT are compared with the committed outputs).
test: $(STAMP)
	DHL_PROFILE=smoke MPLBACKEND=agg $(BIN)/python -m pytest tests
	DHL_PROFILE=smoke MPLBACKEND=agg $(BIN)/python -m pytest --nbval-lax -p no:cacheprovider notebooks

# The quick check while working (under 3 minutes on a 2-core CPU): everything but the tests marked
# slow (more than a few seconds each), the notebook runs and the browser tests.
test-fast: $(STAMP)
	DHL_PROFILE=smoke MPLBACKEND=agg $(BIN)/python -m pytest -m "not slow and not notebooks and not browser" tests

# Re-execute the numbered notebooks in the quick profile, keeping their outputs for GitHub readers.
notebooks: $(STAMP)
	cd notebooks && DHL_PROFILE=quick $(abspath $(BIN))/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=1800 0*.ipynb

# Speed, memory and determinism figures (about 15 minutes on a 2-core CPU): results/bench.json.
bench: $(STAMP)
	$(BIN)/diffhrnet-lab bench all --profile quick --json

samples: $(STAMP)
	$(BIN)/diffhrnet-lab samples --out data_samples

clean:
	rm -rf runs results results_* .pytest_cache
