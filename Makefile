# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# the demo needs heml alone; tests, lint and protobuf generation need the dev extras too
DEMO_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: demo test test-js test-slow lint format proto bench clean vectors mutate

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m heml demo
	@echo "heml is installed in .venv: run .venv/bin/heml --help, or 'source .venv/bin/activate' first"

test: $(STAMP)
	@bash .ci/install-services.sh
	$(PY) -m pytest
	$(MAKE) test-js

# The Node client (clients/js): skipped with a message without Node >= 20, a failure under CI=true.
test-js: $(STAMP)
	HEML_PYTHON=$(abspath $(PY)) .ci/test-js

# Regenerate docs/vectors/*.json (tests/test_protocol_vectors.py fails when they drift).
vectors: $(STAMP)
	$(PY) -m heml._vectors

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
