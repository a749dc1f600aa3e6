# The two commands of README.rst:
#   make run   - the whole service on this machine (Redis included)
#   make test  - the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test bench lint

# compat: setuptools' editable mode that puts the checkout on sys.path (the
# default finder prints a warning at every install for this layout).
$(BIN)/analytics: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
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
