# paddy: the two set-up commands are `make install` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# Python version of the target machine for `make wheelhouse` (a GPU cluster node, say).
WHEEL_PYTHON ?= 3.12
WHEELHOUSE ?= wheelhouse

.PHONY: install data test test-all lint wheelhouse clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e ".[dev]"
	$(MAKE) data

# Fetch the default dataset (Fashion-MNIST) into data/fashion-mnist unless it is already found.
data:
	$(BIN)/python -m paddy.data.download fashion_mnist

test: lint
	$(BIN)/python -m pytest

# Includes the tests marked slow (a full default training run and similar).
test-all:
	$(BIN)/python -m pytest -m ""

lint:
	$(BIN)/ruff check paddy tests scripts hydra_plugins benchmarks

# Wheels of paddy and every dependency except torch/torchvision, for a machine that already has
# torch but cannot reach a package registry:  pip install --no-index --find-links wheelhouse paddy
wheelhouse:
	$(BIN)/python scripts/build_wheelhouse.py --dest $(WHEELHOUSE) --python-version $(WHEEL_PYTHON)

clean:
	rm -rf $(VENV) $(WHEELHOUSE) build dist .pytest_cache
