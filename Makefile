# The two commands the README names: `make run` and `make test`. Both build the virtual
# environment from nothing when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vigie-installed

.PHONY: run test lint bench clean

$(STAMP): setup.py constraints.txt $(wildcard operators/*.pyx operators/*.pxi sinks/*.pyx)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=75,<81" wheel "cython>=3.3,<3.4"
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-build-isolation -e ".[test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vigie run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info vigie-data
