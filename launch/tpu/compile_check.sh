#!/usr/bin/env bash
# Compiles the sharded train step for TPU slices on THIS machine (no TPU needed) and prints
# each chip's memory: check that a config fits before creating the slice.
#   launch/tpu/compile_check.sh [benchmarks/tpu_compile.py flags]
#   launch/tpu/compile_check.sh --config=configs/tfds_lm.py --topology=v5e-16 --mesh=1,-1,1
# libtpu goes into a virtual environment of its own (default /tmp/cyb-tpu-venv): with libtpu
# installed JAX probes for TPU chips at start-up, which is unwanted in a CPU environment.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
venv="${TPU_COMPILE_VENV:-/tmp/cyb-tpu-venv}"
if [[ ! -x "${venv}/bin/python" ]]; then
  python3 -m venv "${venv}"
  "${venv}/bin/pip" install -q -r requirements.lock 'jax[tpu]'
fi
PYTHONPATH="$(pwd)" exec "${venv}/bin/python" benchmarks/tpu_compile.py "$@"
