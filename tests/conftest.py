"""Test-session set-up: a persistent XLA compilation cache shared by tests and workers.

Most trainer tests compile the same tiny train step; the cache turns all but the
first compilation into a disk read. Set CYB_JAX_TEST_CACHE to move it.

Compiling dominates the suite's time, so the tests (and the programs they start, which
inherit the environment) use XLA's cheapest CPU code generation, as the multi-device
subprocesses always did (``tests/multidevice/harness.py``): numerics are unchanged to
float32 rounding. Set CYB_JAX_TEST_FULL_OPT=1 to test with XLA's default optimisation.
"""

import os

if os.environ.get("CYB_JAX_TEST_FULL_OPT", "") in ("", "0"):
  from tests.xla_flags import FAST_COMPILE_FLAGS

  _flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join([*_flags, *(f for f in FAST_COMPILE_FLAGS if f not in _flags)])

import jax  # noqa: E402

_CACHE = os.environ.get(
  "CYB_JAX_TEST_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "jax_test_compilation")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The gcs_emulator / gcs_bucket fixtures (a local fake-gcs-server) for every test module.
from tests.gcs_emulator import gcs_bucket  # noqa: E402,F401
from tests.gcs_emulator import gcs_emulator  # noqa: E402,F401
