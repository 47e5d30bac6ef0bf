# The README's two commands: `make demo` and `make test`. `make install` is their shared first step.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bonefrac-installed

.PHONY: install demo test lint format browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/bonefrac demo --out demo-out

# Debian's Chromium for the real-browser test (skipped with a reason where it cannot be installed).
browser:
	@bash .ci/install-chromium.sh

lint: install
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools

test: install browser lint
	$(BIN)/python -m pytest -q

format: install
	$(BIN)/ruff format src tests bench tools
	$(BIN)/ruff check --fix src tests bench tools

bench: install
	$(BIN)/python bench/bench_read.py
	$(BIN)/python bench/bench_train_pipeline.py
	$(BIN)/python bench/bench_predict.py
	$(BIN)/python bench/bench_server.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
