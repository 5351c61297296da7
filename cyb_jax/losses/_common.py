"""Shared pieces of the loss library: array types, constants, trace-time argument checks.

Hyper-parameters are checked when their values are known at trace time (Python numbers,
NumPy or concrete arrays) and raise ``ValueError`` naming the bad value and the allowed
range; traced values are taken as given.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Metrics = dict[str, Array]

F32 = jnp.float32
NEG_INF = -jnp.inf


def concrete(value: Any) -> np.ndarray | None:
  """``value`` as a NumPy array if it is known at trace time, else ``None``."""
  try:
    return np.asarray(value, dtype=np.float64)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
    return None


def check_scalar(
  name: str, value: Any, *, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
  """Raises ``ValueError`` unless ``value`` lies in the given interval (if concrete)."""
  v = concrete(value)
  if v is None:
    return
  if v.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {v.shape}.")
  ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  if not ok or np.isnan(v):
    interval = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
    raise ValueError(f"{name}={float(v)!r} is outside the allowed range {interval}.")


def compute_dtype(dtype) -> jnp.dtype:
  """float32 for 16/32-bit inputs; float64 inputs (under x64) stay float64."""
  return jnp.promote_types(dtype, F32)
