"""Files of a run on any filesystem ``etils.epath`` knows: local folders and ``gs://`` buckets.

Every path a user gives (workdir, ``init_from``, experiment ``out_dir``, report folders) goes
through :func:`resolve`; every file the project writes whole goes through
:func:`write_text` or :func:`write_json`, which never leave a half-written file behind: a
local file is written to ``<name>.tmp`` and renamed over the old one, a GCS object is
uploaded in one request (objects appear whole or not at all). ``gs://`` needs the ``gcp``
extra (gcsfs).
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
  """Whether ``path`` names a remote filesystem (``gs://...``, ``s3://...``)."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: local paths made absolute, URLs kept as they are."""
  if is_url(path):
    return epath.Path(os.fspath(path))
  return epath.Path(os.path.abspath(os.fspath(path)))


def write_text(path: PathLike, text: str) -> epath.Path:
  """Writes ``text`` to ``path`` whole (atomically replacing an older file); creates parents."""
  path = resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_url(path):
    path.write_text(text)
    return path
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  os.replace(os.fspath(tmp), os.fspath(path))
  return path


def write_json(path: PathLike, value: Any, **dump_kwargs: Any) -> epath.Path:
  """:func:`write_text` of ``json.dumps(value, **dump_kwargs)``."""
  return write_text(path, json.dumps(value, **dump_kwargs))


def read_json(path: PathLike) -> Any:
  """The JSON value stored at ``path``."""
  return json.loads(resolve(path).read_text())


def relative(path: PathLike, start: PathLike) -> str:
  """``path`` relative to the folder ``start`` (for links between files of one folder tree)."""
  path, start = os.fspath(resolve(path)), os.fspath(resolve(start))
  if is_url(path):
    prefix = start.rstrip("/") + "/"
    if not path.startswith(prefix):
      raise ValueError(f"{path} is not inside {start}.")
    return path[len(prefix) :]
  return os.path.relpath(path, start)


def save_figure(fig: Any, path: PathLike, **savefig_kwargs: Any) -> epath.Path:
  """Saves a matplotlib figure as a PNG at ``path`` (local or ``gs://``); creates parents."""
  path = resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    fig.savefig(f, format="png", **savefig_kwargs)
  return path
