# The two commands: `make train` (the main job) and `make test` (the whole suite).
# Each creates the virtual environment in .venv when it is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two environments in one: `make train` installs only what the main job needs (the
# `train` extra: TensorFlow/Keras, Pillow, matplotlib, fonts), `make test` adds what the
# whole suite needs (the `dev` extra: PyTorch, JAX, Ray, pytest ...).
TRAIN_STAMP := $(VENV)/.stoker-train
DEV_STAMP   := $(VENV)/.stoker-dev

.PHONY: train test lint docs bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(TRAIN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[train]'
	touch $(TRAIN_STAMP)

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP) $(TRAIN_STAMP)

train: $(TRAIN_STAMP)
	$(BIN)/stoker train $(ARGS)

# In a private network namespace: the Ray clusters the tests start see only loopback.
test: $(DEV_STAMP)
	tests/in-private-network $(BIN)/python -m pytest $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks examples

# The API reference, from the docstrings, into site/ (open site/index.html).
docs: $(DEV_STAMP)
	$(BIN)/mkdocs build --strict

bench: $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_augment.py
	$(BIN)/python benchmarks/bench_loaders.py $(ARGS)
	$(BIN)/python benchmarks/bench_store.py   # writes (and removes) a 4 GiB store
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_consumer.py
	$(BIN)/python benchmarks/bench_epochs.py
	$(BIN)/python benchmarks/bench_batch.py
	$(BIN)/python benchmarks/bench_photo.py
	$(BIN)/python benchmarks/bench_autotune.py
	tests/in-private-network $(BIN)/python benchmarks/bench_ray.py

clean:
	rm -rf $(VENV) runs build site *.egg-info src/*.egg-info
