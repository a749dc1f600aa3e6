# The two commands of README.rst:
#   make run   - the whole service on this machine (Redis included)
#   make test  - the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test bench lint

# setuptools prints a notice at every editable install ("be careful with
# folders named like the package"): informational, so not shown.
$(BIN)/analytics: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/analytics
	$(BIN)/analytics run

test: $(BIN)/analytics
	sh scripts/system-deps.sh
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(BIN)/analytics
	sh scripts/system-deps.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(BIN)/analytics
	$(BIN)/ruff check analytics tasks web cli tests bench testkit.py
	$(BIN)/ruff format --check analytics tasks web cli tests bench testkit.py
	$(BIN)/mypy analytics tasks web cli
