# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format proto bench clean mutate

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m heml demo

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Mutation testing of the modules that keep heml's promises (docs/testing.md: scope, run times).
# Not part of `make test` or CI. MUTATE_ARGS="--jobs 1 --nice 15" to leave a core free.
mutate: $(STAMP)
	$(PY) tools/mutate.py $(MUTATE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate heml/v1/*_pb2*.py from proto/ with the pinned grpcio-tools (tests fail when stale).
proto: $(STAMP)
	$(PY) -m heml._codegen

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache mutants .mutmut-run.log
