# posecore: `make train` sets up and trains the quickstart; `make test` sets up and runs every test.
# The set-up is one virtual environment (.venv) with the core and the first-party plugins installed from this
# checkout. TORCH pins the CPU build found on this kind of machine; on a GPU machine use e.g.
# `make setup TORCH=torch` to take the CUDA build from the index.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PLUGINS := plugins/amp plugins/resume plugins/seed plugins/tensorboard plugins/mlflow plugins/wandb plugins/ema
BIN := $(VENV)/bin

DIST ?= dist

.PHONY: setup train test bench reference dist

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]" $(addprefix -e ,$(PLUGINS))
	touch $@

# --resume: an interrupted `make train` goes on where it stopped, a finished one says it is complete.
train: setup
	$(BIN)/posecore train examples/quickstart.toml --resume

# Tests are spread over TEST_WORKERS processes (pytest-xdist; an idle one takes queued tests from a busy one),
# each with one torch thread (tests/conftest.py): most tests wait on subprocesses that start Python and torch.
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

bench: setup
	for script in overhead checkpoint startup data memory; do $(BIN)/python bench/$$script.py || exit 1; done

reference: setup
	$(BIN)/posecore config --reference > docs/config.md

# Wheels of the core and of each plugin in $(DIST)/, to install where there is no checkout (README: "Installing
# without make"). Built offline with the venv's setuptools (from the test extra), not in isolated environments.
# build/ is setuptools' staging folder: removed first, so that a file deleted from the source leaves no stale copy.
dist: setup
	rm -rf build $(addsuffix /build,$(PLUGINS)) $(DIST)/posecore*.whl
	for project in . $(PLUGINS); do $(BIN)/python -m build --quiet --wheel --no-isolation --outdir $(DIST) $$project || exit 1; done
