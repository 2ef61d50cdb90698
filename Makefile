# The two commands the README names: `make run` and `make test`. Both build the virtual
# environment from nothing when it is missing or stale.
# The interpreter the environment is built from: Debian's python3.11 where it can build one (its
# venv and dev packages installed), else python3. Debian builds its interpreter with profile-guided
# and link-time optimisation and links libpython in; this machine's python3 (pyenv's 3.11.7) is a
# plain shared build. The engine spends about 70% of its time in the interpreter, and scored a
# stream 10-20% faster on Debian's (bench/RESULTS.md, "interpreters"). `make PYTHON=...` picks
# another; a change needs `make clean` first, as an existing environment is kept.
DEBIAN_PYTHON := /usr/bin/python3.11
PYTHON ?= $(shell test -f /usr/include/python3.11/Python.h && $(DEBIAN_PYTHON) -c 'import ensurepip' 2>/dev/null \
	&& echo $(DEBIAN_PYTHON) || echo python3)
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
