"""TFDS text datasets through `tfds.data_source` (random-access ArrayRecord, no TensorFlow).

Training order: epoch e visits every record of the train split once, in the order
keyed_rng(TFDS_EPOCH_ORDER, seed, e) gives; process p of P takes every P-th record of that
order starting at p (its own shard of the input), so the q-th document of process p's
stream is a pure function of (seed, p, P, q) and is read, and tokenised, on demand. The
eval set is the first records of the eval split, in order, read identically by every
process (it does not depend on the seed or the process count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cyb_jax.data import seeding


def open_split(name: str, split: str, data_dir: str) -> Sequence[Any]:
  """The random-access records of one split of TFDS dataset `name` ("NAME[/CONFIG][:VERSION]").

  Raises:
    ValueError: naming the dataset and split when TFDS cannot provide them.
  """
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  except Exception as e:  # TFDS raises many types (DatasetNotFoundError, AssertionError, KeyError...).
    raise ValueError(f"TFDS cannot open data.source=\"tfds:{name}\" split {split!r}"
                     f"{f' in data_dir {data_dir!r}' if data_dir else ''}: {type(e).__name__}: {e}") from None
  if len(source) == 0:
    raise ValueError(f"TFDS dataset {name!r} split {split!r} has no records.")
  return source


def record_text(record: Any, key: str) -> str:
  """The text feature `key` of a record (bytes are decoded as UTF-8).

  Raises:
    ValueError: if the record has no such feature or it is not text.
  """
  if not isinstance(record, dict) or key not in record:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"data.tfds_text_key={key!r} is not a feature of the records; they have {keys}.")
  value = record[key]
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, str):
    return value
  raise ValueError(f"data.tfds_text_key={key!r} holds {type(value).__name__}, not text.")


class ShardedOrder:
  """Which record is the q-th of process p's training stream."""

  def __init__(self, num_records: int, seed: int, process_index: int, process_count: int):
    if num_records < process_count:
      raise ValueError(f"The TFDS train split has {num_records} records, fewer than the "
                       f"{process_count} processes that each need a shard.")
    self.num_records, self.seed = num_records, seed
    self.process_index, self.process_count = process_index, process_count
    # Records p, p + P, p + 2P, ... of each epoch's order.
    self.per_epoch = len(range(process_index, num_records, process_count))
    self._cached: tuple[int, np.ndarray] | None = None

  def record(self, q: int) -> int:
    epoch, j = divmod(q, self.per_epoch)
    if self._cached is None or self._cached[0] != epoch:
      order = seeding.keyed_rng(seeding.TFDS_EPOCH_ORDER, self.seed, epoch).permutation(self.num_records)
      self._cached = (epoch, order)
    return int(self._cached[1][self.process_index + j * self.process_count])


def evenly_spaced_texts(source: Sequence[Any], key: str, count: int) -> list[str]:
  """Texts of `count` records spread evenly over the split (all if it has fewer)."""
  n = len(source)
  idx = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))
  return [record_text(source[int(i)], key) for i in idx]


def leading_texts(source: Sequence[Any], key: str, start: int, count: int) -> list[str]:
  """Texts of records start .. start + count - 1 (clipped to the split)."""
  return [record_text(source[i], key) for i in range(start, min(start + count, len(source)))]
