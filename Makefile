# Two commands set everything up on a fresh machine:
#   make demo   the daemon against the built-in simulator (no cloud account needed)
#   make test   lint, type-check and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench bench-cycles bench-web soak clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/metastudio-watcher demo

test: $(VENV)/.installed-test lint typecheck unit

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

# pytest exits 5 when it collected no test: that is a failure here, never a pass.
unit: $(VENV)/.installed-test
	$(BIN)/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The long variants of the reliability suite: more kills, cycles and jobs (SOAK=1).
soak: $(VENV)/.installed-test
	SOAK=1 $(BIN)/pytest tests/reliability -q -s -p no:cacheprovider

# once side by side with a naive SDK poller and a minimal aiohttp loop, in the three API
# behaviours (10k and 100k jobs, 5 rounds): writes benchmarks/RESULTS.md.
bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_side_by_side.py

# Polling cost in a warm daemon, full scans against incremental cycles: prints a table.
bench-cycles: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_polling.py

# Status page and API latency with 100k jobs and 1M events in the store: prints a table.
bench-web: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_status_page.py
