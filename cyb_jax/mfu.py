"""Performance accounting of the train loop: model FLOPs, device peak, MFU, program memory, the profiler window.

Model FLOPs utilisation (MFU) of ``s`` train steps that took ``t`` seconds is

    mfu = s * F / (t * P)

with ``F`` the model FLOPs of one step per device (:func:`lowered_flops` of the step divided
by the number of devices) and ``P`` the peak FLOP/s of one device
(:func:`peak_flops_per_device`): a table of advertised dense bf16 peaks for TPUs and NVIDIA
GPUs, keyed by ``jax.Device.device_kind``, or on CPU a float32 matmul peak measured in about a
second (:func:`measured_matmul_peak`). A model running in float32 on an accelerator is
therefore measured against the bf16 peak, as MFU conventionally is.

The memory of a compiled program is XLA's static buffer assignment
(:func:`compiled_bytes`): ``peak = argument + output + temp - alias`` bytes per device.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Dense (no sparsity) bf16 peak FLOP/s of one JAX device, by exact device_kind (one TPU
# chip: on v4 and v5p the two TensorCores form one megacore device).
TPU_PEAKS: Mapping[str, float] = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5": 459e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
}
# NVIDIA GPUs by substring of device_kind (e.g. "NVIDIA H100 80GB HBM3"); first match wins,
# so the PCIe / NVL variants come before the SXM figure of the same chip.
GPU_PEAKS: tuple[tuple[str, float], ...] = (
  ("A100", 312e12),
  ("H100 PCIe", 756e12),
  ("H100 NVL", 835e12),
  ("H100", 989e12),
  ("H200 NVL", 835e12),
  ("H200", 989e12),
)


def table_peak(device_kind: str) -> float | None:
  """The advertised dense bf16 peak FLOP/s of one device of ``device_kind``; None if unknown.

  TPU kinds match exactly (so "TPU v4 lite", a v4i, is unknown), GPU kinds by the first
  substring of :data:`GPU_PEAKS` they contain.
  """
  if device_kind in TPU_PEAKS:
    return TPU_PEAKS[device_kind]
  for pattern, peak in GPU_PEAKS:
    if pattern in device_kind:
      return peak
  return None


@functools.cache
def measured_matmul_peak(size: int = 1024, dtype: str = "float32", seconds: float = 1.0) -> float:
  """FLOP/s of the fastest ``[size, size] @ [size, size]`` matmul of a ~``seconds`` loop.

  Runs on this process's first local device; ``2 size^3`` FLOPs per product. Cached per
  process (one measurement however many runs a process trains).
  """
  device = jax.local_devices()[0]  # host arrays put on one device: no mesh is involved
  a = jax.device_put(np.ones((size, size), dtype), device)
  b = jax.device_put(np.full((size, size), 1.0 / size, dtype), device)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  best, deadline = float("inf"), time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def check_configured_peak(configured: Any) -> None:
  """Raises ValueError unless ``configured`` is None, 0 or a positive number of FLOP/s."""
  if configured is not None and (
    isinstance(configured, bool) or not isinstance(configured, (int, float)) or configured < 0
  ):
    raise ValueError(
      f"peak_flops_per_device={configured!r} must be None (table or measured), "
      "0 (no MFU) or a positive number of FLOP/s."
    )


def peak_flops_per_device(configured: float | None = None, device: Any = None) -> float | None:
  """The peak FLOP/s MFU divides by, for one device like ``device`` (default: the first).

  ``configured`` (``config.peak_flops_per_device``) wins, 0 meaning no MFU (None is
  returned); else :func:`table_peak`; else on CPU :func:`measured_matmul_peak` in float32;
  else None (an accelerator missing from the table: set the config field).

  Raises:
    ValueError: ``configured`` is not None, 0 or a positive number.
  """
  check_configured_peak(configured)
  if configured is not None:
    return float(configured) if configured > 0 else None
  device = device or jax.devices()[0]
  peak = table_peak(device.device_kind)
  if peak is None and device.platform == "cpu":
    peak = measured_matmul_peak()
    logging.info("MFU: measured a float32 matmul peak of %.3g FLOP/s on CPU.", peak)
  elif peak is None:
    logging.warning(
      "MFU: no peak known for device kind %r; set config.peak_flops_per_device to log train/mfu.", device.device_kind
    )
  return peak


def lowered_flops(lowered: jax.stages.Lowered) -> float:
  """XLA's HLO cost-analysis FLOP count of a lowered (not compiled) program.

  The count is exact for straight-line programs: 2 FLOPs per multiply-add of every dot plus
  one per elementwise op. XLA counts the body of a ``while`` loop (``lax.scan``) ONCE, so
  lower a program whose loops are unrolled.

  Raises:
    ValueError: the backend's cost analysis gives no FLOP count.
  """
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    raise ValueError(f"the cost analysis of this program has no 'flops' entry: {cost!r}.")
  return float(cost["flops"])


def compiled_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes of XLA's buffer assignment of a compiled program on one device; nothing runs.

  ``argument``, ``output``, ``temp`` (temporaries) and ``alias`` are the sizes of
  ``compiled.memory_analysis()``; ``alias`` is the bytes of outputs written into a donated
  argument's buffer, counted in both ``argument`` and ``output``. So the program holds

      peak = argument + output + temp - alias

  bytes while it runs. Static, deterministic on every backend (unlike the process's memory).

  Returns:
    ``{"argument", "output", "temp", "alias", "peak"}``, in bytes.
  """
  m = compiled.memory_analysis()
  sizes = dict(
    argument=m.argument_size_in_bytes,
    output=m.output_size_in_bytes,
    temp=m.temp_size_in_bytes,
    alias=m.alias_size_in_bytes,
  )
  sizes["peak"] = sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"]
  return sizes


def mfu(flops_per_step: float, steps: int, seconds: float, peak: float) -> float:
  """``steps * flops_per_step / (seconds * peak)``: the fraction of the peak the steps used.

  Args:
    flops_per_step: model FLOPs of one step on one device.
    steps: steps taken in ``seconds``.
    seconds: wall time of those steps, > 0.
    peak: FLOP/s of one device, > 0.

  Raises:
    ValueError: ``seconds`` or ``peak`` is not positive, or ``steps`` or ``flops_per_step``
      is negative.
  """
  if not seconds > 0 or not peak > 0:
    raise ValueError(f"mfu needs seconds > 0 and peak > 0, got seconds={seconds}, peak={peak}.")
  if steps < 0 or flops_per_step < 0:
    raise ValueError(
      f"mfu needs steps >= 0 and flops_per_step >= 0, got steps={steps}, flops_per_step={flops_per_step}."
    )
  return steps * flops_per_step / (seconds * peak)


def check_profile_steps(profile_steps: Any) -> tuple[int, int] | None:
  """``config.profile_steps`` as ``(start, stop)``, or None when empty (off).

  Raises:
    ValueError: it is neither empty nor two ints with ``1 <= start <= stop``.
  """
  if profile_steps is None or len(profile_steps) == 0:
    return None
  steps = tuple(profile_steps)
  if (
    len(steps) != 2
    or any(isinstance(s, bool) or not isinstance(s, int) for s in steps)
    or not 1 <= steps[0] <= steps[1]
  ):
    raise ValueError(
      f"profile_steps={profile_steps!r} must be empty (off) or two ints (start, stop) with 1 <= start <= stop."
    )
  return steps


class ProfileWindow:
  """A ``jax.profiler`` trace of the train steps numbered ``start..stop`` (both included).

  Step ``s`` is the one after which ``s`` steps are done (the ``step`` of metrics.jsonl). A
  resumed run traces the steps of the window it still takes. ``window`` None: a no-op.
  """

  def __init__(self, window: tuple[int, int] | None, logdir: str):
    self._window, self._logdir, self._active = window, logdir, False

  def before(self, step: int) -> None:
    """Call before dispatching step ``step``: starts the trace at the window's first step."""
    if self._window and not self._active and self._window[0] <= step <= self._window[1]:
      jax.profiler.start_trace(self._logdir)
      self._active = True

  def annotation(self, step: int):
    """A context naming step ``step`` in the trace (a no-op outside the window)."""
    if self._active:
      return jax.profiler.StepTraceAnnotation("train", step_num=step)
    return contextlib.nullcontext()

  def after(self, step: int, outputs: Any) -> None:
    """Call after dispatching step ``step``: at the window's end waits for ``outputs``, stops."""
    if self._active and step >= self._window[1]:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Stops an active trace (writes it); safe to call at any time."""
    if self._active:
      self._active = False
      jax.profiler.stop_trace()
