"""Metrics as JSON lines (``metrics.jsonl``) and TensorBoard event files, on process 0.

The workdir may be local or a ``gs://`` (any etils.epath) folder. A local
``metrics.jsonl`` is appended to. An object in a bucket cannot be appended to, so
there the writer keeps the file's lines in memory (read once, at the first write or
truncation) and replaces the whole object at every write: every reader sees a
complete file (an object is replaced atomically), at the price of uploading the file
again per write (a run logging every 50 steps for 100k steps writes a few MB at the
end). TensorBoard event files in a bucket are written the same way, through etils.epath
(:class:`_ObjectRecordWriter`, registered with tensorboardX for the workdir's scheme in
place of its own gs:// and s3:// writers, which upload again from ``__del__`` and so
hang on a gone server); each writer (each resumed run) starts its own event file, and
TensorBoard reads them all.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging
from etils import epath

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value: Any) -> Any:
  """JSON-friendly form of scalars and small vectors."""
  arr = np.asarray(value)
  if arr.ndim == 0:
    return arr.item()
  return arr.tolist()


def is_object_store(path: epath.PathLike) -> bool:
  """Whether `path` names an object in a bucket (gs://, s3://, ...), where files cannot be appended to."""
  return "://" in str(path)


def _lines(text: str) -> list[str]:
  """The non-blank lines of `text`, each ending in one line break."""
  return [line + "\n" for line in text.splitlines() if line.strip()]


class _ObjectRecordWriter:
  """A tensorboardX event-file sink for object stores: the file is kept in memory and the whole
  object is replaced at each flush that has something new (objects cannot be appended to)."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._buffer = io.BytesIO()
    self._uploaded = -1

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    if self._buffer.tell() != self._uploaded:
      self._path.write_bytes(self._buffer.getvalue())
      self._uploaded = self._buffer.tell()

  def close(self) -> None:
    self.flush()


class _ObjectRecordWriterFactory:
  """What tensorboardX's `register_writer_factory` expects: `open` a sink, check a folder."""

  def open(self, path: str) -> _ObjectRecordWriter:
    return _ObjectRecordWriter(path)

  def directory_check(self, path: str) -> None:
    del path  # buckets have no folders to create


def _summary_writer(logdir: epath.Path):
  """A tensorboardX SummaryWriter on `logdir`, with an event file name no other writer takes."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

  if is_object_store(logdir):
    record_writer.register_writer_factory(str(logdir).split("://", 1)[0], _ObjectRecordWriterFactory())
  # tensorboardX names files by the second and the host: two writers in one second would share one.
  return SummaryWriter(str(logdir), filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")


class MetricsWriter:
  """Appends one JSON object per call to ``<workdir>/metrics.jsonl`` and mirrors scalars to
  TensorBoard (``<workdir>/tensorboard``). Vector metrics are written per entry
  (``name/0``, ``name/1``, ...) to TensorBoard and as lists to JSON.

  On resume, :meth:`truncate_after` drops rows logged after the restored step by the
  interrupted run, so the file reads as one uninterrupted run. See the module docstring
  for workdirs in a bucket.
  """

  def __init__(self, workdir: epath.PathLike, *, enabled: bool = True):
    self._enabled = enabled
    self._path = epath.Path(workdir) / METRICS_FILE
    self._object_lines: list[str] | None = None  # object stores: the whole file, rewritten per write
    self._tb = None
    if enabled:
      self._tb = _summary_writer(epath.Path(workdir) / TENSORBOARD_DIR)

  @property
  def path(self) -> str:
    return str(self._path)

  def _stored_lines(self) -> list[str]:
    """Object stores: the lines of the object, read from the bucket the first time only."""
    if self._object_lines is None:
      self._object_lines = _lines(self._path.read_text()) if self._path.exists() else []
    return self._object_lines

  def truncate_after(self, step: int) -> None:
    if not self._enabled:
      return
    if is_object_store(self._path):
      lines = self._stored_lines()
      kept = [line for line in lines if json.loads(line)["step"] <= step]
      if len(kept) != len(lines):
        self._object_lines = kept
        self._path.write_text("".join(kept))
      return
    if not self._path.exists():
      return
    rows = [
      line
      for line in self._path.read_text().splitlines(keepends=True)
      if line.strip() and json.loads(line)["step"] <= step
    ]
    tmp = self._path.parent / (self._path.name + ".tmp")
    tmp.write_text("".join(rows))
    tmp.replace(self._path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    row = {"step": int(step)}
    row.update({k: _plain(v) for k, v in metrics.items()})
    line = json.dumps(row) + "\n"
    if is_object_store(self._path):
      lines = self._stored_lines()
      lines.append(line)
      self._path.write_text("".join(lines))
    else:
      with self._path.open("a") as f:
        f.write(line)
    for name, value in row.items():
      if name == "step":
        continue
      arr = np.asarray(value, dtype=np.float64)
      if arr.ndim == 0:
        self._tb.add_scalar(name, float(arr), step)
      else:
        for i, v in enumerate(arr.reshape(-1)):
          self._tb.add_scalar(f"{name}/{i}", float(v), step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: epath.PathLike) -> list[dict[str, Any]]:
  """All rows of ``<workdir>/metrics.jsonl`` in file order (empty if absent); may be gs://.

  Lines that are not JSON objects with a ``step`` (e.g. a line cut short by a crash) are
  skipped with a warning.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  rows = []
  for line_no, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      logging.warning("%s:%d is not JSON; skipped.", path, line_no)
      continue
    if isinstance(row, dict) and "step" in row:
      rows.append(row)
    else:
      logging.warning("%s:%d is not a metrics row with a 'step'; skipped.", path, line_no)
  return rows


def train_and_eval_rows(workdir: epath.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """``(train_rows, eval_rows)`` of :func:`read_metrics`, each sorted by step.

  A train row has a ``train/nll_mix`` or ``train/loss`` key, an eval row an ``eval/nll_mix``
  key (a row may be both).
  """
  rows = sorted(read_metrics(workdir), key=lambda r: r["step"])
  train = [r for r in rows if "train/nll_mix" in r or "train/loss" in r]
  evals = [r for r in rows if "eval/nll_mix" in r]
  return train, evals
