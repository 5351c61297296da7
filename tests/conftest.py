"""Test-session set-up: compile options, matmul precision, a shared compilation cache, markers.

Most trainer tests compile the same tiny train step; a persistent XLA compilation cache turns
all but the first compilation into a disk read. Set CYB_JAX_TEST_CACHE to move it.

Compiling dominates the suite's time, so the tests (and the programs they start, which
inherit the environment) use XLA's cheapest CPU code generation, as the multi-device
subprocesses always did (``tests/multidevice/harness.py``): numerics are unchanged to
float32 rounding. Set CYB_JAX_TEST_FULL_OPT=1 to test with XLA's default optimisation.

Float32 matmuls run at full float32 precision ("highest") in the tests and the programs
they start. The suite's equivalence tests compare two float32 computations of the same
quantity (the private-pause scan against the flattened mask, scanned against unrolled layers,
the fused attention path against `attend`, ...) to ~1e-5. On NVIDIA GPUs JAX's default
float32 matmul is TF32 (a 10-bit mantissa, relative rounding ~5e-4), and on TPUs it is
bfloat16 passes; two differently arranged computations then differ by ~1e-3. The 7 tests
that failed on an H200 (issue 20) are such comparisons. "highest" makes every float32 `dot_general`
that does not set its own precision (jnp.einsum / `@` with or without
preferred_element_type, the XLA path of jax.nn.dot_product_attention for float32 inputs,
`pl.dot` inside Pallas kernels) a true float32 product on every backend; on a CPU it changes
nothing (the CPU always multiplies float32 in float32: the pinned-figure runs are bit-identical
with and without it). Set JAX_DEFAULT_MATMUL_PRECISION to test another precision.

With CYB_JAX_CUDA_PATH set (`make test` sets it), JAX's CUDA plugin from that folder is on the
path of the tests and the programs they start, the CPU staying the default backend: the tests
lower and compile for an H100 described by `benchmarks/gpu_targets.py`.

Markers (pyproject.toml): tests marked ``gpu`` (``tpu``) are skipped unless JAX's default
backend is a GPU (TPU), so the suite passes on a CPU-only machine and runs them where the
accelerator is.
"""

import os

if os.environ.get("CYB_JAX_CUDA_PATH"):  # `make test`: JAX's CUDA plugin, to compile for a GPU
  from benchmarks import gpu_targets

  gpu_targets.use_cuda_tools()

if os.environ.get("CYB_JAX_TEST_FULL_OPT", "") in ("", "0"):
  from tests.xla_flags import FAST_COMPILE_FLAGS

  _flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join([*_flags, *(f for f in FAST_COMPILE_FLAGS if f not in _flags)])

# Before JAX is imported, so that the programs the tests start inherit it too.
_MATMUL_PRECISION = os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", _MATMUL_PRECISION)  # also if JAX was imported first

_CACHE = os.environ.get(
  "CYB_JAX_TEST_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "jax_test_compilation")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The gcs_emulator / gcs_bucket fixtures (a local fake-gcs-server) for every test module.
from tests.gcs_emulator import gcs_bucket  # noqa: E402,F401
from tests.gcs_emulator import gcs_emulator  # noqa: E402,F401

# marker -> the jax.Device.platform it needs ("gpu" covers CUDA and ROCm).
_ACCELERATOR_MARKERS = {"gpu": "gpu", "tpu": "tpu"}


def pytest_collection_modifyitems(config, items):
  """Skips the tests marked ``gpu`` / ``tpu`` unless the default backend is that accelerator.

  JAX's backend is asked only when some collected test carries one of the markers.
  """
  del config
  marked = [(item, name) for item in items for name in _ACCELERATOR_MARKERS if item.get_closest_marker(name)]
  if not marked:
    return
  platform = jax.devices()[0].platform
  for item, name in marked:
    if platform != _ACCELERATOR_MARKERS[name]:
      item.add_marker(pytest.mark.skip(reason=f"needs a {name.upper()}: JAX's default backend here is {platform!r}"))
