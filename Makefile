# The README's two commands: `make demo` and `make test`. `make install` is their shared first step.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bonefrac-installed

.PHONY: install constraints demo test check lint format browser dicom-tools bench clean

# pyproject.toml states the compatible ranges; constraints.txt pins the versions the project is tested with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

# After an upgrade in the venv: pin what is installed now (the header comments stay; torch's +cpu tag is dropped so
# the pin also resolves where only the plain release exists).
constraints: install
	{ grep '^#' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: install
	$(BIN)/bonefrac demo --out demo-out

# Debian's Chromium for the real-browser test (skipped with a reason where it cannot be installed).
browser:
	@bash .ci/install-chromium.sh

# Debian's Orthanc, dcmtk and dicom3tools for the DICOM node and results tests (skipped with a reason without).
dicom-tools:
	@bash .ci/install-dicom-tools.sh

lint: install
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/lint-imports

# The kernels that compute the numerically sensitive tests (`-m numeric`: DDP, ONNX parity, resume, the bundled
# model) differ by machine: torch picks AVX-512 or AVX2 code (ATen), oneDNN its convolutions, MKL its GEMMs. So
# the second pass caps all three at AVX2: an AVX-512 machine checks both kinds of kernels, and the tolerances hold
# for both wherever they run (tests/test_kernels.py fails the pass if a cap did not take). onnxruntime reads none of these variables: its
# side of the ONNX parity tests runs its own best kernels in both passes.
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

# Everything, as CI runs it (.ci/run).
test: install browser dicom-tools lint
	$(BIN)/python -m pytest -q
	$(AVX2) $(BIN)/python -m pytest -q -m numeric

# The inner loop: lint and the tests not marked slow (a few minutes on 2 cores).
check: lint
	$(BIN)/python -m pytest -q -m "not slow"

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
