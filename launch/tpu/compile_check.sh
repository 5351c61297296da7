#!/usr/bin/env bash
# Compiles the sharded train step for TPU slices on THIS machine (no TPU needed) and prints
# each chip's memory: check that a config fits before creating the slice.
#   launch/tpu/compile_check.sh [--dry-run] [benchmarks/tpu_compile.py flags]
#   launch/tpu/compile_check.sh --config=cyb_jax/configs/tfds_lm.py --topology=v5e-16 --mesh=1,-1,1
# libtpu goes into a virtual environment of its own (TPU_COMPILE_VENV, default
# /tmp/cyb-tpu-venv): with libtpu installed JAX probes for TPU chips at start-up, which is
# unwanted in a CPU environment. The environment gets Python >= 3.12: PYTHON (default
# python3) if it is recent enough, else a uv-managed PYTHON_VERSION (uv: UV or
# the one on PATH); the package is
# installed once, with its `tpu` extra (the libtpu matching the locked jax).
set -euo pipefail
USAGE="launch/tpu/compile_check.sh [--dry-run] [benchmarks/tpu_compile.py flags]"
source "$(dirname "$0")/env.sh"
parse_common_args "$@"
cd "${REPO_ROOT}"
venv="${TPU_COMPILE_VENV:-/tmp/cyb-tpu-venv}"
python="${PYTHON:-python3}"
uv="${UV:-uv}"

if [[ ! -x "${venv}/bin/python" ]]; then
  if command -v "${python}" >/dev/null \
      && "${python}" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    run_cmd "${python}" -m venv "${venv}"
  elif command -v "${uv}" >/dev/null; then
    run_cmd "${uv}" venv --seed --python "${PYTHON_VERSION}" "${venv}"
  else
    die "needs Python >= 3.12: ${python} is older (or missing) and uv is not installed; set PYTHON=/path/to/python3.12 or install uv (pip install uv)."
  fi
  run_cmd "${venv}/bin/python" -m pip install -q -c requirements.lock -e '.[train,tpu]'
else
  note "${venv} exists: nothing to install (delete it to reinstall)"
fi
if [[ "${DRY_RUN}" == 1 ]]; then
  run_cmd env PYTHONPATH="$(pwd)" "${venv}/bin/python" benchmarks/tpu_compile.py "${REST[@]}"
  exit 0
fi
PYTHONPATH="$(pwd)" exec "${venv}/bin/python" benchmarks/tpu_compile.py "${REST[@]}"
