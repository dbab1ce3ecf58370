# Two commands set everything up on a fresh machine:
#   make demo   the daemon against the built-in simulator (no cloud account needed)
#   make test   lint, type-check, the whole test suite, the dependency floors, every supported
#               Python here and the unit under a real systemd (what .ci/run runs)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit systemd bench bench-1m bench-1m-cycles bench-all bench-cycles bench-web bench-baseline soak clean lock min-deps pythons install nspawn

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

test: $(VENV)/.installed-test lint typecheck unit min-deps pythons systemd

# The unit under a real systemd needs root to boot a machine: as root it fails rather than
# skips; elsewhere WATCHER_SKIP_NSPAWN=1 accepts, loudly, that it did not run.
systemd:
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory nspawn; \
	elif [ "$${WATCHER_SKIP_NSPAWN:-}" = 1 ]; then \
	  echo "make test: not root, WATCHER_SKIP_NSPAWN=1: the systemd-nspawn test did not run" >&2; \
	else echo "make test: not root: make nspawn cannot run (WATCHER_SKIP_NSPAWN=1 to accept that)" >&2; \
	  exit 1; fi

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
# behaviours, and the daemon cycle, 5 rounds each: writes its sections of
# benchmarks/RESULTS.md and keeps the others. `make bench`: 10k and 100k jobs (3.6 min
# measured on 2 cores); `make bench-1m`: 1M jobs (29 min measured); `make bench-all`: both.
bench: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_side_by_side.py --sizes 10000,100000

bench-1m: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_side_by_side.py --sizes 1000000

bench-all: bench bench-1m

# Only the daemon cycle at 1M jobs (~2 min): replaces that table in RESULTS.md's 1M section.
bench-1m-cycles: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_side_by_side.py --sizes 1000000 --cycles-only

# Polling cost in a warm daemon, full scans against incremental cycles: prints a table.
bench-cycles: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_polling.py

# Status page and API latency with 100k jobs and 1M events in the store: prints a table.
bench-web: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_status_page.py

# Where a first baseline's CPU goes at 100k jobs, part by part, in one process (~15 s): prints a table.
bench-baseline: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_baseline_parts.py

# --- dependency floors, Python versions, the lock ---------------------------------------------
# The declared minimum versions (pyproject's >= bounds, made ==), installed on the oldest
# supported Python; rebuilt only when pyproject.toml changes.
MIN_PYTHON ?= $(or $(call find_python,3.11),python3.11)
MIN_VENV   := .venv-min
$(MIN_VENV)/.installed: pyproject.toml .ci/min_requirements.py
	rm -rf $(MIN_VENV)
	$(MIN_PYTHON) -m venv $(MIN_VENV)
	$(PYTHON) .ci/min_requirements.py > $(MIN_VENV)/requirements-min.txt
	$(MIN_VENV)/bin/pip install --quiet -r $(MIN_VENV)/requirements-min.txt
	$(MIN_VENV)/bin/pip install --quiet --no-deps .
	touch $@

min-deps: $(VENV)/.installed-test $(MIN_VENV)/.installed
	CI=1 WATCHER_TEST_PYTHONS=$(MIN_VENV)/bin/python $(BIN)/pytest -p no:cacheprovider -s \
	  tests/packaging/test_interpreters.py

# The package (not editable) from requirements.lock on every supported Python this machine has
# (on PATH, or installed by pyenv without being its active version).
SUPPORTED_PYTHONS := 3.11 3.12 3.13
find_python = $(shell for p in python$(1) $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python$(1)); do \
  $$p -c 'import sys; print(sys.executable)' 2>/dev/null && break; done)
FOUND_PYTHONS := $(foreach v,$(SUPPORTED_PYTHONS),$(if $(call find_python,$(v)),$(v)))
.venv-py%/.installed: pyproject.toml requirements.lock
	rm -rf .venv-py$*
	$(call find_python,$*) -m venv .venv-py$*
	.venv-py$*/bin/pip install --quiet -c requirements.lock .
	touch $@

pythons: $(VENV)/.installed-test $(foreach v,$(FOUND_PYTHONS),.venv-py$(v)/.installed)
	@test -n "$(FOUND_PYTHONS)" || { echo "no python3.11-3.13 found" >&2; exit 1; }
	CI=1 WATCHER_TEST_PYTHONS=$(subst $(eval) ,:,$(foreach v,$(FOUND_PYTHONS),.venv-py$(v)/bin/python)) \
	  $(BIN)/pytest -p no:cacheprovider -s tests/packaging/test_interpreters.py

# requirements.lock pins every package the image installs (the Dockerfile's Python, 3.12).
# Refresh after changing dependencies: `make lock`, then review and commit the diff.
LOCK_PYTHON ?= $(or $(call find_python,3.12),python3.12)
lock:
	rm -rf .venv-lock
	$(LOCK_PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet .
	{ echo "# pip freeze of \`pip install .\` on $$(.venv-lock/bin/python -V); refresh: make lock"; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v '^metastudio-watcher'; } > requirements.lock
	rm -rf .venv-lock

# --- systemd ---------------------------------------------------------------------------------
# The venv under /opt/metastudio-watcher, /usr/local/bin/metastudio-watcher and the unit
# (systemd/install.sh; as root).
install:
	sh systemd/install.sh

# The unit under a real systemd 252: a debootstrapped Debian 12 booted with systemd-nspawn
# (root, debootstrap, systemd-container). The rootfs is cached in /var/cache; this fails
# rather than skips when it cannot run.
nspawn: $(VENV)/.installed-test requirements.lock
	CI=1 WATCHER_NSPAWN=1 $(BIN)/pytest -p no:cacheprovider -s tests/packaging/test_systemd_nspawn.py
