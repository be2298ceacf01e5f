# Two commands do all the set-up on a fresh machine with python3 and make:
#   make demo   create .venv, install, run the embedded default
#   make test   create .venv, install with the test extra, run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# One pytest worker per core (pytest-xdist), each taking whole files so a
# file's module fixtures (servers, the container image) are made once;
# PYTEST_ARGS="-n 0" runs them in this process, one after the other.
PARALLEL := -n auto --dist loadfile

.PHONY: test test-fast demo bench lint system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# Tools some tests need (installed only as root with apt, as CI runs).
system-deps:
	@./.ci/system-deps

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PARALLEL) $(PYTEST_ARGS)

# The quick loop while developing: everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: $(STAMP)
	$(BIN)/adamax-ps demo

# The peers (TensorFlow, tf_keras, Keras 3, torch) and matplotlib come from the
# bench extra, which nothing else needs; report.py writes latest.* and the plots.
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/kernels.py --update-readme
	$(BIN)/python bench/service.py --update-readme
	$(BIN)/python bench/transport.py --update-readme
	$(BIN)/python bench/durability.py --update-readme
	$(BIN)/python bench/embedding_tables.py --update-readme
	$(BIN)/python bench/rescale.py --update-readme
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/training_fit.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/report.py --update-readme

clean:
	rm -rf $(VENV) build *.egg-info
