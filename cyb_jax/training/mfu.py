"""Performance accounting of the train loop: model FLOPs, device peak, MFU, program memory, the profiler window.

Model FLOPs utilisation (MFU) of ``s`` train steps that took ``t`` seconds is

    mfu = s * F / (t * P)

with ``F`` the model FLOPs of one step per device (:func:`cyb_jax.model.flops.train_step_flops`, counted
analytically from the model config and the batch shape as MaxText does, divided by the
number of devices) and ``P`` the peak FLOP/s of one device (:func:`peak_flops_per_device`): a
table of advertised dense bf16 peaks for TPUs and NVIDIA GPUs, keyed by
``jax.Device.device_kind``, or on CPU a float32 matmul peak measured in about a second
(:func:`measured_matmul_peak`). A model running in float32 on an accelerator is therefore
measured against the bf16 peak, as MFU conventionally is.

The memory of a compiled program is XLA's static buffer assignment
(:func:`compiled_bytes`): ``peak = argument + output + temp - alias`` bytes per device.

Accounting never stops a run: :func:`or_warn` turns a failure of any of these into one
logged warning and a figure left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cyb_jax.model import flops as model_flops
from cyb_jax.model.config import ModelConfig

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
def measured_matmul_peak(size: int = 1024, dtype: str = "float32", seconds: float = 1.0, device: Any = None) -> float:
  """FLOP/s of the fastest ``[size, size] @ [size, size]`` matmul of a ~``seconds`` loop.

  Runs on ``device`` (one this process addresses; default: its first local device);
  ``2 size^3`` FLOPs per product. Cached per process and device (one measurement however
  many runs a process trains).
  """
  device = device or jax.local_devices()[0]  # host arrays put on one device: no mesh is involved
  a = jax.device_put(np.ones((size, size), dtype), device)
  b = jax.device_put(np.full((size, size), 1.0 / size, dtype), device)
  matmul = jax.jit(jnp.matmul)
  with jax.set_mesh(None):  # the trainer's mesh context would claim the one-device product
    jax.block_until_ready(matmul(a, b))
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
      start = time.perf_counter()
      jax.block_until_ready(matmul(a, b))
      best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def check_configured_peak(configured: Any) -> None:
  """Raises ValueError unless ``configured`` is None, 0 or a finite positive number of FLOP/s."""
  if configured is not None and (
    isinstance(configured, bool)
    or not isinstance(configured, (int, float))
    or not math.isfinite(configured)
    or configured < 0
  ):
    raise ValueError(
      f"peak_flops_per_device={configured!r} must be None (table or measured), "
      "0 (no MFU) or a finite positive number of FLOP/s."
    )


def peak_flops_per_device(configured: float | None = None, device: Any = None) -> float | None:
  """The peak FLOP/s MFU divides by, for one device like ``device``.

  ``configured`` (``config.peak_flops_per_device``) wins, 0 meaning no MFU (None is
  returned); else :func:`table_peak` of ``device.device_kind``; else, for a CPU device this
  process addresses, :func:`measured_matmul_peak` in float32 on it; else None (an
  accelerator missing from the table, or a device of another process or of a compile-only
  topology: set the config field), with a warning. ``device`` should be one the program
  runs on (the trainer passes its mesh's); without it, the default backend's first device.

  Raises:
    ValueError: ``configured`` is not None, 0 or a finite positive number.
  """
  check_configured_peak(configured)
  if configured is not None:
    return float(configured) if configured > 0 else None
  device = device or jax.devices()[0]
  peak = table_peak(device.device_kind)
  if peak is None and device.platform == "cpu" and device.process_index == jax.process_index():
    peak = measured_matmul_peak(device=device)
    logging.info("MFU: measured a float32 matmul peak of %.3g FLOP/s on CPU.", peak)
  elif peak is None:
    logging.warning(
      "MFU: no peak known for device kind %r on platform %r; set config.peak_flops_per_device to log train/mfu.",
      device.device_kind,
      device.platform,
    )
  return peak


def or_warn[T](what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
  """``fn(*args, **kwargs)``, or None after one logged warning naming ``what`` and the error.

  For the accounting that must never stop a run (MFU, program memory, the profiler): its
  failure leaves a figure out, it never ends the training.
  """
  try:
    return fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("%s failed, so it is left out of this run: %s: %s", what, type(e).__name__, e)
    return None


def compiled_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes of XLA's buffer assignment of a compiled program on one device; nothing runs.

  ``argument``, ``output``, ``temp`` (temporaries) and ``alias`` are the sizes of
  ``compiled.memory_analysis()``; ``alias`` is the bytes of outputs written into a donated
  argument's buffer, counted in both ``argument`` and ``output``. So the program holds

      peak = argument + output + temp - alias

  bytes while it runs. Static, deterministic on every backend (unlike the process's memory).

  Returns:
    ``{"argument", "output", "temp", "alias", "peak"}``, in bytes.

  Raises:
    ValueError: the backend gives no memory analysis of the program.
  """
  m = compiled.memory_analysis()
  if m is None:
    raise ValueError("this backend gives no memory analysis of the compiled program (memory_analysis() is None).")
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


def program_device(mesh: jax.sharding.Mesh) -> Any:
  """The device of ``mesh`` whose kind the peak is looked up for: the first this process
  addresses, else (a compile-only topology, another process's devices) the first."""
  devices = list(mesh.devices.flat)
  own = [d for d in devices if getattr(d, "process_index", None) == jax.process_index()]
  return (own or devices)[0]


@dataclasses.dataclass(frozen=True)
class StepAccounting:
  """What the trainer reports at start-up about its compiled train step.

  A field is None where its figure is off or failed (each failure logged once).

  Attributes:
    peak_flops_per_device: :func:`peak_flops_per_device` for the mesh's devices.
    flops_per_device: :func:`cyb_jax.model.flops.train_step_flops` of the global batch over the mesh's devices;
      None when there is no peak (no MFU to compute).
    memory: :func:`compiled_bytes` of the compiled train step, per device.
  """

  peak_flops_per_device: float | None
  flops_per_device: float | None
  memory: dict[str, int] | None


def account_train_step(
  model_cfg: ModelConfig,
  batch_shape: tuple[int, int],
  mesh: jax.sharding.Mesh,
  compiled: jax.stages.Compiled | None,
  *,
  configured_peak: float | None = None,
  with_mfu: bool = True,
) -> StepAccounting:
  """The trainer's start-up accounting of its train step on ``mesh``; never raises.

  The peak is that of :func:`program_device` of ``mesh`` (so a TPU topology's chips are
  looked up in the table even from a CPU host), the model FLOPs are those of the global batch
  ``batch_shape = (B, N)`` divided by ``mesh.size``, the memory is that of ``compiled``
  (None: not asked). ``with_mfu`` False (a process that logs no metrics) skips the peak and
  the FLOPs. Any failure of one of them logs one warning and leaves that figure None;
  ``configured_peak`` is validated up front by :func:`check_configured_peak`, not here.
  """
  peak = flops = memory = None
  if with_mfu:
    device = or_warn("MFU's device peak lookup", program_device, mesh)
    if device is not None:
      peak = or_warn("MFU's device peak lookup", peak_flops_per_device, configured_peak, device=device)
  if peak is not None:
    flops = or_warn("MFU's model FLOP count", lambda: model_flops.train_step_flops(model_cfg, *batch_shape) / mesh.size)
  if compiled is not None:
    memory = or_warn("The train step's memory analysis", compiled_bytes, compiled)
  if memory is not None:
    logging.info(
      "Train step per device: %.4g MiB at peak (%.4g arguments + %.4g outputs + %.4g temporaries - %.4g aliased).",
      *(memory[k] / 2**20 for k in ("peak", "argument", "output", "temp", "alias")),
    )
  if flops is not None:
    logging.info("Train step per device: %.4g model GFLOP against a peak of %.4g TFLOP/s.", flops / 1e9, peak / 1e12)
  return StepAccounting(peak_flops_per_device=peak, flops_per_device=flops, memory=memory)


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
  resumed run traces the steps of the window it still takes. ``window`` None: a no-op. A
  profiler that fails to start or stop logs one warning and the run goes on untraced.
  """

  def __init__(self, window: tuple[int, int] | None, logdir: str):
    self._window, self._logdir, self._active = window, logdir, False

  def before(self, step: int) -> None:
    """Call before dispatching step ``step``: starts the trace at the window's first step."""
    if self._window and not self._active and self._window[0] <= step <= self._window[1]:
      started = or_warn(f"The profiler trace of profile_steps={self._window} into {self._logdir}", self._start)
      if started is None:
        self._window = None  # one warning, no further tries
      self._active = bool(started)

  def _start(self) -> bool:
    jax.profiler.start_trace(self._logdir)
    return True

  def annotation(self, step: int):
    """A context naming step ``step`` in the trace (a no-op outside the window)."""
    if self._active:
      return jax.profiler.StepTraceAnnotation("train", step_num=step)
    return contextlib.nullcontext()

  def after(self, step: int, outputs: Any) -> None:
    """Call after dispatching step ``step``: at the window's end waits for ``outputs``, stops."""
    if self._active and step >= self._window[1]:
      jax.block_until_ready(outputs)  # the step's own errors are not the profiler's: they propagate
      self.close()

  def close(self) -> None:
    """Stops an active trace (writes it); safe to call at any time, never raises."""
    if self._active:
      self._active = False
      what = f"Writing the profiler trace of profile_steps={self._window} into {self._logdir}"
      or_warn(what, jax.profiler.stop_trace)
