"""Resumable training iterators: the `TrainIterator` API and its two implementations.

A TrainIterator yields PROCESS-LOCAL batches (this process's rows of the global batch)
and exposes `get_state()` / `set_state(state)`: a small JSON-serialisable dict to store in
the checkpoint. After `set_state(s)` the iterator yields exactly the batches an
uninterrupted iterator would have yielded after the point `s` was taken.

The iterator does not count tokens: the trainer counts trained tokens as the sum of the
GLOBAL batch's `weights` (which it computes anyway for the loss) and checkpoints that count.

The state carries a fingerprint of what produced it (source, seed, seq_len, batch_size,
...); restoring a state into an iterator with another fingerprint raises instead of
silently yielding different data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol

from cyb_jax.data import packing
from cyb_jax.data import streaming


class TrainIterator(Protocol):
  """What the trainer uses; see the module docstring."""

  def __iter__(self) -> TrainIterator: ...

  def __next__(self) -> packing.Batch: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...


def _check_fingerprint(kind: str, state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
  if not isinstance(state, dict) or state.get("kind") != kind:
    got = state.get("kind") if isinstance(state, dict) else type(state).__name__
    raise ValueError(f"Cannot restore a data iterator of kind {kind!r} from a state of kind {got!r}.")
  saved = state.get("fingerprint", {})
  diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
  if diff:
    shown = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
    raise ValueError(f"The data iterator state was saved for other data settings ({shown}).")


class IndexedIterator:
  """Batch i is `batch_at(i)`, a pure function; the state is the next batch index."""

  def __init__(self, batch_at: Callable[[int], packing.Batch], fingerprint: dict[str, Any]):
    self._batch_at = batch_at
    self._fingerprint = dict(fingerprint)
    self.batch_index = 0

  def __iter__(self) -> IndexedIterator:
    return self

  def __next__(self) -> packing.Batch:
    batch = self._batch_at(self.batch_index)
    self.batch_index += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"kind": "indexed", "batch_index": self.batch_index, "fingerprint": dict(self._fingerprint)}

  def set_state(self, state: dict[str, Any]) -> None:
    _check_fingerprint("indexed", state, self._fingerprint)
    index = state.get("batch_index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
      raise ValueError(f"Data iterator state has batch_index={index!r}; expected an integer >= 0.")
    self.batch_index = index


class StreamIterator:
  """Batches from a streaming.StreamPacker; the state is its document cursor.

  The state is process-local (each process reads its own shard of the records): with
  several processes, each process must save and restore its own state.
  """

  def __init__(self, packer: streaming.StreamPacker, fingerprint: dict[str, Any], process_index: int):
    self._packer = packer
    self._fingerprint = dict(fingerprint)
    self._process_index = process_index

  def __iter__(self) -> StreamIterator:
    return self

  def __next__(self) -> packing.Batch:
    return self._packer.next_batch()

  @property
  def batch_index(self) -> int:
    return self._packer.batch_index

  def get_state(self) -> dict[str, Any]:
    return {
      "kind": "stream",
      "process_index": self._process_index,
      **self._packer.get_state(),
      "fingerprint": dict(self._fingerprint),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    _check_fingerprint("stream", state, self._fingerprint)
    if state.get("process_index") != self._process_index:
      raise ValueError(
        f"Data iterator state belongs to process {state.get('process_index')!r}, not to process {self._process_index}."
      )
    for key in ("doc", "offset", "batch_index"):
      value = state.get(key)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Data iterator state has {key}={value!r}; expected an integer >= 0.")
    self._packer.set_state(state)
