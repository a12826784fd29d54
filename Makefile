# Every target sets up what it needs: a virtual environment under .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-real bench-noise samples clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p build
	$(BIN)/prunequant compress sample_models/digits_cnn.onnx build/digits_cnn.compressed.onnx \
		--threshold 0.02 --bits 8 --data sample_models/digits_cnn.npz
	$(BIN)/prunequant inspect build/digits_cnn.compressed.onnx

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check prunequant_cli tests bench sample_models
	$(BIN)/ruff format --check prunequant_cli tests bench sample_models
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_compress.py
	$(BIN)/python bench/bench_encodings.py
	$(BIN)/python bench/bench_dense.py
	$(BIN)/python bench/bench_samples.py
	$(BIN)/python bench/bench_holdout.py
	$(BIN)/python bench/bench_rounding.py
	$(BIN)/python bench/bench_eval_bound.py

# prunequant on nine real pretrained models, scored by their task metrics on held-out
# samples (builds the kit from ../shared/realmodels into ~/.cache/prunequant/realmodels;
# see bench/bench_real.py). BENCH_REAL_ARGS="--models ppocr_cls --modes bits8" for a subset.
bench-real: $(STAMP)
	$(BIN)/python bench/bench_real.py $(BENCH_REAL_ARGS)

# The search's estimate of a metric drop's noise against the truth, on the kit's splits
# (after bench-real has built them).
bench-noise: $(STAMP)
	$(BIN)/python bench/bench_noise.py

# Retrain and re-export the sample models (dev-only: installs torch and scikit-learn).
samples: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,samples]'
	$(BIN)/python sample_models/make_samples.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
