"""TFDS text datasets through `tfds.data_source` (random-access ArrayRecord, no TensorFlow).

Training order: epoch e visits every record of the train split once, in the order
keyed_rng(TFDS_EPOCH_ORDER, seed, e) gives; process p of P takes every P-th record of that
order starting at p (its own shard of the input), so the q-th document of process p's
stream is a pure function of (seed, p, P, q) and is read, and tokenised, on demand. The
eval set is the first records of the eval split, in order, read identically by every
process (it does not depend on the seed or the process count).

Nothing is ever downloaded or generated here: the dataset must have been prepared as
ArrayRecord files in `data.tfds_data_dir` (local or gs://) by `PREPARE_COMMAND`
(cyb_jax/cli/prepare_data.py); otherwise opening it fails at once, naming that command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cyb_jax.data import seeding

PREPARE_COMMAND = "python -m cyb_jax.cli.prepare_data"


def prepare_command(name: str, data_dir: str) -> str:
  """The command line that prepares TFDS dataset `name` into `data_dir` ("" = the TFDS default)."""
  return f"{PREPARE_COMMAND} --dataset={name}" + (f" --data_dir={data_dir}" if data_dir else "")


def _where(data_dir: str) -> str:
  return f"data_dir {data_dir!r}" if data_dir else f"the default TFDS data_dir {tfds.core.constants.DATA_DIR!r}"


def _open_error(name: str, split: str, data_dir: str, error: Exception) -> ValueError:
  """The clearest explanation of why `tfds.data_source` failed: not prepared, wrong format, or TFDS's own word."""
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception:  # pylint: disable=broad-except  # an unknown name: TFDS's own message says so.
    builder = None
  if builder is not None and not builder.is_prepared():
    return ValueError(
      f'TFDS dataset "{name}" (data.source="tfds:{name}") is not prepared in {_where(data_dir)}, and a '
      f"run never downloads it. Prepare it once, as ArrayRecord files, with:\n  {prepare_command(name, data_dir)}"
    )
  file_format = builder.info.file_format if builder is not None else None
  if file_format is not None and file_format != tfds.core.FileFormat.ARRAY_RECORD:
    return ValueError(
      f'TFDS dataset "{name}" is prepared in {_where(data_dir)} as {file_format.value} files, but '
      f"tfds.data_source reads ArrayRecord only. Remove {builder.data_dir} and prepare it as ArrayRecord "
      f"with:\n  {prepare_command(name, data_dir)}"
    )
  # TFDS messages can be long (an unknown name lists every dataset): keep the first line.
  message = str(error).strip().split("\n")[0]
  return ValueError(
    f'TFDS cannot open data.source="tfds:{name}" split {split!r} in {_where(data_dir)}: '
    f"{type(error).__name__}: {message}"
  )


def open_split(name: str, split: str, data_dir: str) -> Sequence[Any]:
  """The random-access records of one split of TFDS dataset `name` ("NAME[/CONFIG][:VERSION]").

  `data_dir` ("" = the TFDS default) may be local or gs://; the dataset must be prepared there.

  Raises:
    ValueError: naming the dataset, split and data_dir when TFDS cannot provide them; for a
      dataset that is not prepared, also the command that prepares it.
  """
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # TFDS raises many types (DatasetNotFoundError, AssertionError, KeyError...).
    raise _open_error(name, split, data_dir, e) from None
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
      raise ValueError(
        f"The TFDS train split has {num_records} records, fewer than the "
        f"{process_count} processes that each need a shard."
      )
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
