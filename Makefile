# Two commands set everything up on a fresh machine (Python 3.10+):
#   make demo   - create .venv, install, ingest sample photos, answer a query
#   make test   - create the same .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned to the CPU build: a bare `torch` requirement resolved by pip
# would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

DEMO_PHOTOS ?= demo-photos
DEMO_INDEX  ?= demo-index
QUERY       ?= a cat
QDRANT_API_KEY ?= clipsearch-dev-key
export QDRANT_API_KEY

.PHONY: setup demo test lint browser compose test-server bench clean help

help:
	@echo "make demo | test | lint | test-server (needs Docker) | bench | clean"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[demo,test,finetune,lint]'
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python -m clipsearch.demo $(DEMO_PHOTOS)
	$(BIN)/clipsearch ingest $(DEMO_PHOTOS) --index $(DEMO_INDEX)
	$(BIN)/clipsearch search "$(QUERY)" --index $(DEMO_INDEX) -k 3

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# A real browser for the page's tests (tests/serve/test_browser.py): Debian's
# Chromium, driven by Playwright. Needs root (CI runs as root); the tests skip, saying
# why, where it is missing.
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

# The compose files' validator for tests/project/test_compose.py: Debian's docker-compose
# (`docker-compose config` parses and checks a file offline; no Docker engine needed).
# Needs root; the tests skip, saying why, where it is missing.
compose:
	command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose)

# Style (ruff), the kernel's types (mypy) and the architecture (import-linter's
# contracts in pyproject.toml, checked on the installed layout).
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python scripts/lint_imports.py

# Runs the whole suite against a Qdrant server as well (needs a Docker engine).
test-server: $(BIN)/.installed
	docker compose up -d --wait qdrant
	QDRANT_URL=http://localhost:6333 $(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(DEMO_PHOTOS) $(DEMO_INDEX) .pytest_cache
