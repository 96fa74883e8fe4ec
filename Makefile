# Two commands: `make run` and `make test`. Every install step lives here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test lint test-slow fuzz soak bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The browser tests/test_web.py drives: Debian's chromium, installed by apt when running as root
# (CI); never a browser downloaded by `playwright install`. Without it the browser tests skip,
# saying why (in CI, CI=true, they fail instead).
CHROMIUM := /usr/bin/chromium
CHROMIUM_STAMP := $(VENV)/.chromium
$(CHROMIUM_STAMP): | $(BIN)/python
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi
	@if [ -x $(CHROMIUM) ]; then touch $@; else \
	    echo "NOTE: the browser tests need Debian's chromium at $(CHROMIUM): sudo apt-get install chromium" >&2; fi

# The alerting tests run Debian's Alertmanager (tests/helpers/alertmanager.py), installed like chromium.
ALERTMANAGER := /usr/bin/prometheus-alertmanager
ALERTMANAGER_STAMP := $(VENV)/.alertmanager
$(ALERTMANAGER_STAMP): | $(BIN)/python
	@if [ ! -x $(ALERTMANAGER) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-alertmanager; fi
	@if [ -x $(ALERTMANAGER) ]; then touch $@; else \
	    echo "NOTE: the alerting tests need Debian's Alertmanager at $(ALERTMANAGER): sudo apt-get install prometheus-alertmanager" >&2; fi

run: $(STAMP)
	$(BIN)/loglake up

# The gates before the tests: lint and import order (ruff), then types of the five packages (mypy).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# Four workers stealing tests from each other: most tests wait on real processes, so the two cores are
# free most of the time, and no single large file makes a long tail at the end of the run.
TEST_WORKERS ?= 4
test: $(STAMP) $(CHROMIUM_STAMP) $(ALERTMANAGER_STAMP) lint
	$(BIN)/python -m pytest -m "not slow and not soak" -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The same suite with LOGLAKE_FUZZ_SCALE times the property tests' examples (tests/helpers/fuzzing.py):
# `make test` keeps the costliest ones modest to stay within 15 minutes on two cores.
FUZZ_SCALE ?= 4
fuzz: $(STAMP) $(CHROMIUM_STAMP) $(ALERTMANAGER_STAMP)
	LOGLAKE_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/python -m pytest -m "not slow and not soak" -n $(TEST_WORKERS) \
		--dist worksteal $(PYTEST_ARGS)

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
bench: $(BENCH_STAMP) $(CHROMIUM_STAMP)
	$(BIN)/python -m benchmarks all

clean:
	rm -rf $(VENV) var .pytest_cache
