# `make demo` and `make test` are the README's contract: each sets up .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,executorch,openvino]"
	touch $(STAMP)

# Re-runnable: a second `make demo` replaces its own exports (and says so). The second export asks
# for half the dense model's latency measured on the target, not half its parameters.
demo: $(STAMP)
	$(BIN)/edgeprune export --keep 0.5 --force
	$(BIN)/edgeprune export --keep 0.5 --budget latency --force

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (under a minute on 2 cores).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/analysis_speed.py

clean:
	rm -rf $(VENV) runs dist build *.egg-info src/*.egg-info .pytest_cache
