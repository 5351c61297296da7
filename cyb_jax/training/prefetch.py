"""Keeping the device busy: batches produced ahead in a thread, device values read at syncs.

The trainer's producer (:func:`train_batches`) takes the next process-local batch from the
resumable iterator, records the iterator's state right after it (``get_state()``: where a
resumed run continues after this batch), and places the batch on the devices
(``sharding.global_batch``). :class:`Prefetcher` runs a producer in a daemon thread, at most
``depth`` items ahead of the consumer, re-raises the producer's errors in the consumer, and
stops cleanly on :meth:`Prefetcher.close`.

Because the state travels WITH its batch, the trainer checkpoints the state as of the last
batch it consumed, not of the batches produced ahead: exact resume is unchanged.

:class:`PendingSteps` keeps the device scalars of the steps dispatched since the host last
read any (the trainer reads them at log, eval and checkpoint steps, and at the end), and
bounds how far the host runs ahead of the device.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from cyb_jax import sharding

_ITEM, _END, _ERROR = "item", "end", "error"
_POLL_S = 0.05


class Prefetcher[T]:
  """Iterates over ``count`` results of ``produce()``, computed in a background thread.

  Args:
    produce: called ``count`` times in the thread, in order; its exceptions are re-raised
      by ``next()`` in the consumer, after the items produced before them.
    count: how many items to produce (then ``next()`` raises StopIteration).
    depth: most items produced ahead of the consumer (the queue size), >= 1.

  Raises:
    ValueError: ``depth < 1`` or ``count < 0``.
  """

  def __init__(self, produce: Callable[[], T], count: int, depth: int = 2):
    if depth < 1 or count < 0:
      raise ValueError(f"Prefetcher needs depth >= 1 and count >= 0, got depth={depth}, count={count}.")
    self._produce, self._count = produce, count
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._run, name="cyb_jax-prefetch", daemon=True)
    self._thread.start()

  def _put(self, message: tuple[str, Any]) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(message, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def _run(self) -> None:
    try:
      for _ in range(self._count):
        if self._stop.is_set() or not self._put((_ITEM, self._produce())):
          return
      self._put((_END, None))
    except BaseException as error:  # pylint: disable=broad-except
      self._put((_ERROR, error))

  def __iter__(self) -> Prefetcher[T]:
    return self

  def __next__(self) -> T:
    if self._done:
      raise StopIteration
    kind, value = self._queue.get()
    if kind == _ITEM:
      return value
    self._done = True
    if kind == _ERROR:
      raise value
    raise StopIteration

  def close(self, timeout: float = 10.0) -> None:
    """Stops the thread (it finishes the item it is producing, which is dropped)."""
    self._stop.set()
    self._done = True
    while self._thread.is_alive():
      try:  # unblock a put; drop what was produced ahead
        while True:
          self._queue.get_nowait()
      except queue.Empty:
        pass
      self._thread.join(timeout=_POLL_S)
      timeout -= _POLL_S
      if timeout <= 0:
        break

  def __enter__(self) -> Prefetcher[T]:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def train_batches(iterator: Any, mesh: Mesh, keys: Sequence[str]) -> Callable[[], tuple[dict, dict]]:
  """The trainer's producer: ``() -> (global batch, iterator state after that batch)``.

  Args:
    iterator: a resumable train iterator (``cyb_jax.data.iterators.TrainIterator``) of
      process-local batches.
    mesh: the run's mesh; the batch is placed by ``sharding.batch_sharding(mesh)``.
    keys: the batch arrays to keep (``train.BATCH_KEYS``).

  Returns:
    A function whose ``i``-th call gives the ``i``-th next batch as ``[B, N]`` global arrays
    and a deep copy of ``iterator.get_state()`` taken right after it.
  """

  def produce() -> tuple[dict, dict]:
    local = next(iterator)
    state = copy.deepcopy(iterator.get_state())
    return sharding.global_batch({k: local[k] for k in keys}, mesh), state

  return produce


class PendingSteps:
  """Device scalars of the steps dispatched since the last :meth:`read`, oldest first.

  Args:
    keys: the metrics kept of every step (e.g. the finite flag and the token count).
    max_in_flight: :meth:`add` waits until the step this many steps before the newest is
      done, so the host dispatches at most this many steps ahead of the device (the device
      still has them queued: it never waits for the host).
  """

  def __init__(self, keys: Sequence[str], max_in_flight: int):
    self._keys, self._max_in_flight = tuple(keys), max_in_flight
    self._steps: list[tuple[int, dict]] = []

  def add(self, step: int, metrics: dict) -> None:
    self._steps.append((step, {k: metrics[k] for k in self._keys}))
    if len(self._steps) > self._max_in_flight:
      jax.block_until_ready(self._steps[-1 - self._max_in_flight][1])

  def read(self) -> list[tuple[int, dict]]:
    """``(step, host scalars)`` of every pending step, fetched in one transfer; clears them."""
    steps = [s for s, _ in self._steps]
    fetched = jax.device_get([m for _, m in self._steps])
    self._steps.clear()
    return list(zip(steps, fetched))
