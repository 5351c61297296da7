"""XLA flags of the test processes: the cheapest CPU code generation (no imports, so that
``tests/conftest.py`` can set them before anything starts a JAX backend).

Compiling dominates the tests' time; numerics are unchanged to float32 rounding.
"""

FAST_COMPILE_FLAGS = (
  "--xla_backend_optimization_level=0",
  "--xla_llvm_disable_expensive_passes=true",
)
