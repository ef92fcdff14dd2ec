# make demo | make test: both build .venv on first use (CPU torch wheel, fiqnn with its
# test extras, and Debian's Fashion-MNIST when running as root with apt available).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fiqnn-installed

.PHONY: demo test test-slow lint bench-teacher clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	@bash scripts/install-data.sh
	@touch $@

demo: $(STAMP)
	$(BIN)/fiqnn demo

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
