"""What every process of a run agrees on: when to stop for a preemption, where each one's data is.

:class:`Preemption` turns SIGTERM into a flag checked between steps (on one host), or defers
to JAX's preemption sync point (multi-host, so that every process stops at the same step);
:func:`gather_data_states` / :func:`own_data_state` store every process's data-iterator
position in a checkpoint and give each process its own back.
"""

from __future__ import annotations

import json
import signal

import jax
import numpy as np
from absl import logging

from cyb_jax.training import checkpoint as ckpt_lib


class Preemption:
  """Turns SIGTERM into a flag checked between steps (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      # Multi-host: JAX's preemption service owns SIGTERM and picks one step at which every
      # process stops (reached_preemption_sync_point); a Python handler here would make each
      # process stop at a different step and the collective save hang.
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, no preemption saves
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if self.requested:
      return True
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      return multihost_utils.reached_preemption_sync_point(step)
    return False


_DATA_STATE_BYTES = 1 << 16


def gather_data_states(state: dict) -> dict:
  """Every process's data-iterator state, keyed by process index (as a string).

  Iterators that read process-local shards (TFDS) have a different position on every
  process; the checkpoint keeps them all. On one process this is ``{"0": state}``.
  """
  if jax.process_count() == 1:
    return {"0": state}
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  encoded = json.dumps(state).encode()
  if len(encoded) > _DATA_STATE_BYTES:
    raise ValueError(f"data iterator state is {len(encoded)} bytes; at most {_DATA_STATE_BYTES} can be gathered.")
  buffer = np.zeros((_DATA_STATE_BYTES + 4,), np.uint8)
  buffer[:4] = np.frombuffer(np.uint32(len(encoded)).tobytes(), np.uint8)
  buffer[4 : 4 + len(encoded)] = np.frombuffer(encoded, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buffer))
  states = {}
  for index, row in enumerate(gathered):
    size = int(np.frombuffer(row[:4].tobytes(), np.uint32)[0])
    states[str(index)] = json.loads(row[4 : 4 + size].tobytes().decode())
  return states


def own_data_state(states: dict) -> dict:
  """This process's state from :func:`gather_data_states`' output."""
  key = str(jax.process_index())
  if key not in states:
    raise ckpt_lib.IncompatibleCheckpointError(
      f"the checkpoint holds data states of processes {sorted(states)}, not of process "
      f"{key}: resume with the same number of processes ({len(states)})."
    )
  return states[key]
