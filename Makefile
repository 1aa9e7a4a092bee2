# The two commands: `make demo` and `make test`. Both create .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bench bench-ticks paper-broker worker market-data clean chaos lock

# Installs are reproducible: the exact versions come from requirements-dev.lock (`make lock` rewrites it,
# and requirements.lock for the image, from pyproject.toml).
$(STAMP): pyproject.toml requirements-dev.lock
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.lock
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m dev.demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

test: lint
	$(VENV)/bin/pytest -q

chaos: venv
	$(PY) -m dev.chaos

bench: venv
	$(PY) -m dev.bench

bench-ticks: venv
	$(PY) -m dev.bench_ticks

paper-broker: venv
	$(VENV)/bin/paper-broker --host 127.0.0.1 --port 8700

worker: venv
	$(PY) worker.py

# Needs the package index: resolves pyproject.toml's ranges to today's versions, for every platform.
lock: venv
	$(VENV)/bin/pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 -q -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 -q -o requirements-dev.lock

market-data: venv
	$(VENV)/bin/engine market-data

clean:
	rm -rf $(VENV) data build *.egg-info .pytest_cache .mypy_cache .ruff_cache
