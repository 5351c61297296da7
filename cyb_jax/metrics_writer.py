"""Metrics as JSON lines (``metrics.jsonl``) and TensorBoard event files, on process 0."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
  """JSON-friendly form of scalars and small vectors."""
  arr = np.asarray(value)
  if arr.ndim == 0:
    return arr.item()
  return arr.tolist()


class MetricsWriter:
  """Appends one JSON object per call to ``<workdir>/metrics.jsonl`` and mirrors scalars to
  TensorBoard (``<workdir>/tensorboard``). Vector metrics are written per entry
  (``name/0``, ``name/1``, ...) to TensorBoard and as lists to JSON.

  On resume, :meth:`truncate_after` drops rows logged after the restored step by the
  interrupted run, so the file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self._enabled = enabled
    self._path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  @property
  def path(self) -> str:
    return self._path

  def truncate_after(self, step: int) -> None:
    if not self._enabled or not os.path.exists(self._path):
      return
    with open(self._path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(rows)
    os.replace(tmp, self._path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    row = {"step": int(step)}
    row.update({k: _plain(v) for k, v in metrics.items()})
    with open(self._path, "a") as f:
      f.write(json.dumps(row) + "\n")
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


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All rows of ``<workdir>/metrics.jsonl`` (empty if absent)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
