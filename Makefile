# Quick start:  make train   (set up, then train the embedded default task)
#               make test    (set up, then run the test suite)
# Each target creates the virtual environment in .venv when it is missing and
# installs the package with the tested versions pinned by requirements.lock.

# The interpreter of the venv: the first Python >= 3.12 (jax >= 0.11 needs it) among python3.12,
# python3.13, python3 and pyenv's installed 3.12 / 3.13; PYTHON=/path/to/python overrides.
PYTHON_CANDIDATES := python3.12 python3.13 python3 $(sort $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3 $(HOME)/.pyenv/versions/3.13*/bin/python3))
PYTHON ?= $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(shell $(p) -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && echo $(p))))
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
# JAX's CUDA plugin and NVIDIA's libraries (about 3.7 GB) in a folder of their own, at the lock's
# jaxlib version: the tests lower and compile for an H100 described to XLA (benchmarks/
# gpu_targets.py) on this GPU-less host; the CPU stays the default backend.
CUDA_DIR := .cache/jax_cuda
CUDA_STAMP := $(CUDA_DIR)/.installed-stamp

.PHONY: setup cuda-tools train lint test test-fast bench wheelhouse accel-check accel-check-cpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "make: no Python >= 3.12 found (tried $(PYTHON_CANDIDATES)); install one (e.g. pyenv install 3.12) or pass PYTHON=/path/to/python3.12" >&2; exit 1; }
	@test ! -x $(PY) || $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' || { echo "$(VENV) is older than Python 3.12: recreating it"; rm -rf $(VENV); }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[train,gpu,test]'
	@touch $(STAMP)

$(LIBTPU_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q --no-deps --upgrade --target $(LIBTPU_DIR) "$$(grep -o 'libtpu==[^"]*' pyproject.toml)"
	@touch $(LIBTPU_STAMP)

cuda-tools: $(CUDA_STAMP)

$(CUDA_STAMP): requirements.lock $(STAMP)
	$(PY) -m pip install -q --upgrade --target $(CUDA_DIR) -c requirements.lock "jax-cuda13-plugin[with-cuda]==$$(grep '^jaxlib==' requirements.lock | cut -d= -f3)"
	@touch $(CUDA_STAMP)

train: $(STAMP)
	$(PY) launch/train.py --config=$(CONFIG) --workdir=$(WORKDIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check cyb_jax tests benchmarks launch tools examples
	$(VENV)/bin/ruff format --check cyb_jax tests benchmarks launch tools examples

test: lint $(LIBTPU_STAMP) $(CUDA_STAMP)
	CYB_LIBTPU_PATH=$(abspath $(LIBTPU_DIR)) CYB_JAX_CUDA_PATH=$(abspath $(CUDA_DIR)) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 tests

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
# venv's python when there is one, else python3 (a device image with JAX installed); where
# WHEELHOUSE holds wheels (make wheelhouse; carry it to a lent machine), it first installs
# into that python what the project's requirements lack, offline, never touching JAX
# (benchmarks/wheelhouse.py), and the summary says which JAX it ran with. ARGS adds flags
# (ARGS=--stages=throughput). accel-check-cpu is the small CPU version that CI runs
# (tests/test_accel_check.py); it installs nothing.
ACCEL_PY = $(if $(wildcard $(PY)),$(PY),python3)
ACCEL_ARGS = $(if $(OUT),--out=$(OUT),) $(ARGS)
# The wheels a bare device image lacks, for its Python 3.12 (ignored by git; a device call
# carries it with `carry: [".wheelhouse"]`): the requirements at the lock's versions less JAX,
# NVIDIA's libraries and the device image's large packages. A carry holds 64 MiB with the
# tree: make wheelhouse fails above WHEELHOUSE_BUDGET_MIB.
WHEELHOUSE ?= .wheelhouse
WHEELHOUSE_BUDGET_MIB ?= 48

wheelhouse:
	$(ACCEL_PY) benchmarks/wheelhouse.py download --dest=$(WHEELHOUSE) --budget_mib=$(WHEELHOUSE_BUDGET_MIB)

accel-check:
	$(ACCEL_PY) benchmarks/accel_check.py $(if $(wildcard $(WHEELHOUSE)/*.whl),--wheelhouse=$(WHEELHOUSE),--wheelhouse=) $(ACCEL_ARGS)

accel-check-cpu:
	$(ACCEL_PY) benchmarks/accel_check.py --cpu --wheelhouse= $(ACCEL_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
