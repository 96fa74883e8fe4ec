# Two commands: `make run` and `make test`. Every install step lives here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test lint test-slow soak bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/loglake up

# The gates before the tests: lint and import order (ruff), then types of the five packages (mypy).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Two workers, a file each at a time: most tests wait on real processes, so the cores are free.
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow and not soak" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Load and faults: 10 minutes of ingest under 20 searchers, then faults under load (about
# 15 minutes in all; LOGLAKE_SOAK_S shortens the first). Figures in benchmarks/results/soak-*.json.
soak: $(STAMP)
	$(BIN)/python -m pytest -m soak -s tests/test_soak.py $(PYTEST_ARGS)

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# Every suite at its default scale (about 20 minutes on 2 cores); results in benchmarks/results/.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks all

clean:
	rm -rf $(VENV) var .pytest_cache
