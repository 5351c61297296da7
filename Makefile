# Quick start:  make train   (set up, then train the embedded default task)
#               make test    (set up, then run the test suite)
# Each target creates the virtual environment in .venv when it is missing and
# installs the package with the tested versions pinned by requirements.lock.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= workdirs/default
CONFIG ?= cyb_jax/configs/default.py
PYTEST_WORKERS ?= 2
# libtpu (the TPU compiler, the `tpu` extra's pin) in a folder of its own, on the PYTHONPATH of
# the test that compiles for a TPU topology only: JAX would probe for TPU chips in every process.
LIBTPU_DIR := .cache/libtpu
LIBTPU_STAMP := $(LIBTPU_DIR)/.installed-stamp

.PHONY: setup train lint test test-fast bench accel-check accel-check-cpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	@touch $(STAMP)

$(LIBTPU_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(LIBTPU_DIR) "$$(grep -o 'libtpu==[^"]*' pyproject.toml)"
	@touch $(LIBTPU_STAMP)

train: $(STAMP)
	$(PY) launch/train.py --config=$(CONFIG) --workdir=$(WORKDIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check cyb_jax tests benchmarks launch tools
	$(VENV)/bin/ruff format --check cyb_jax tests benchmarks launch tools

test: lint $(LIBTPU_STAMP)
	CYB_LIBTPU_PATH=$(abspath $(LIBTPU_DIR)) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/model.py
	$(PY) benchmarks/sharding.py
	$(PY) benchmarks/train_loop.py
	$(PY) benchmarks/compile_time.py

# Accelerator acceptance check (benchmarks/accel_check.py, benchmarks/README.md): GPU tests,
# the default job, a throughput table, loop efficiency, one summary, <= 8 minutes on one GPU.
# Results go to OUT (the device tool sets it; else a new temporary folder). It uses the
# venv's python when there is one, else python3 (a device image with JAX installed), and
# installs nothing; ARGS adds flags (ARGS=--stages=throughput). accel-check-cpu is the small
# CPU version that CI runs (tests/test_accel_check.py).
ACCEL_PY = $(if $(wildcard $(PY)),$(PY),python3)
ACCEL_ARGS = $(if $(OUT),--out=$(OUT),) $(ARGS)

accel-check:
	$(ACCEL_PY) benchmarks/accel_check.py $(ACCEL_ARGS)

accel-check-cpu:
	$(ACCEL_PY) benchmarks/accel_check.py --cpu $(ACCEL_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
