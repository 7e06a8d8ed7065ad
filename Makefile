# paddy: the two set-up commands are `make install` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# Python version of the target machine for `make wheelhouse` (a GPU cluster node, say).
WHEEL_PYTHON ?= 3.12
WHEELHOUSE ?= wheelhouse

.PHONY: install data test test-all lint docs docs-serve wheelhouse clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e ".[dev,mlflow]"
	$(MAKE) data

# Fetch the default dataset (Fashion-MNIST) into data/fashion-mnist unless it is already found.
data:
	$(BIN)/python -m paddy.data.download fashion_mnist

test: lint docs
	$(BIN)/python -m pytest

# Includes the tests marked slow (a full default training run and similar).
test-all:
	$(BIN)/python -m pytest -m ""

lint:
	$(BIN)/ruff check paddy tests scripts hydra_plugins benchmarks

# The reference docs (docs/, mkdocs.yml) into site/; --strict: a broken link or anchor fails the build.
docs:
	$(BIN)/mkdocs build --strict --quiet --site-dir site

# The docs at http://127.0.0.1:8000, rebuilt on every edit.
docs-serve:
	$(BIN)/mkdocs serve

# Wheels of paddy and every dependency except torch/torchvision, for a machine that already has
# torch but cannot reach a package registry:  pip install --no-index --find-links wheelhouse paddy
wheelhouse:
	$(BIN)/python scripts/build_wheelhouse.py --dest $(WHEELHOUSE) --python-version $(WHEEL_PYTHON)

clean:
	rm -rf $(VENV) $(WHEELHOUSE) build dist site .pytest_cache
