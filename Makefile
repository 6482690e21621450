# The two commands: `make train` (the main job) and `make test` (the whole suite).
# Each creates the virtual environment in .venv when it is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stoker-installed

.PHONY: train test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/stoker train $(ARGS)

# In a private network namespace: the Ray clusters the tests start see only loopback.
test: $(STAMP)
	tests/in-private-network $(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_augment.py
	$(BIN)/python benchmarks/bench_loaders.py $(ARGS)
	$(BIN)/python benchmarks/bench_store.py   # writes (and removes) a 4 GiB store
	$(BIN)/python benchmarks/bench_memory.py
	tests/in-private-network $(BIN)/python benchmarks/bench_ray.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
