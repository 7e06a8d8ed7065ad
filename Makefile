# paddy: the two set-up commands are `make install` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# Python version of the target machine for `make wheelhouse` (a GPU cluster node, say).
WHEEL_PYTHON ?= 3.12
WHEELHOUSE ?= wheelhouse

.PHONY: install data test test-all lint docs docs-serve wheelhouse gpu-wheels gpu-check clean

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

# The reference docs (docs/, mkdocs.yml) into site/; --strict: a broken link or anchor fails the build
# (not with --quiet: MkDocs 1.6 then drops the warnings that --strict counts).
docs:
	$(BIN)/mkdocs build --strict --site-dir site

# The docs at http://127.0.0.1:8000, rebuilt on every edit.
docs-serve:
	$(BIN)/mkdocs serve

# Wheels of paddy and every dependency except torch/torchvision, for a machine that already has
# torch but cannot reach a package registry:  pip install --no-index --find-links wheelhouse paddy
wheelhouse:
	$(BIN)/python scripts/build_wheelhouse.py --dest $(WHEELHOUSE) --python-version $(WHEEL_PYTHON)

# The wheels `make gpu-check` installs on the lent GPU machine (CPython 3.12 with torch, timm, lightning,
# torchmetrics, OpenCV, NumPy, SciPy, PyYAML, tqdm): the packages it lacks with their dependencies, less
# those it has, into $(GPU_WHEELS)/ (18 wheels, ~14 MiB); carry that folder to the machine.
GPU_WHEELS ?= gpu-wheels
GPU_LACKS := hydra-core,omegaconf,hydra-optuna-sweeper,optuna,albumentations,simplejpeg
GPU_HAS := numpy,pyyaml,tqdm,packaging,markupsafe,scipy,opencv-python-headless
gpu-wheels:
	$(BIN)/python scripts/build_wheelhouse.py --dest $(GPU_WHEELS) --python-version 3.12 --only $(GPU_LACKS) \
		--exclude $(GPU_HAS)

# The GPU check (docs/development.md#gpu-check): install $(GPU_WHEELS)/, pytest -m gpu, the throughput benchmark
# of lite0_ca and the in-device ratios of mnv3s_ca and effv2s_ca; results and log in $(GPU_CHECK_OUT).
# Its Python: the venv's where there is one, else python3 (the GPU machine's, which has torch).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_OUT ?= benchmarks/results
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py --out $(GPU_CHECK_OUT) --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(WHEELHOUSE) $(GPU_WHEELS) build dist site .pytest_cache
