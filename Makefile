# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-js test-slow lint format proto bench clean vectors

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m heml demo

test: $(STAMP)
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
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
