"""Quiet console output: library INFO logging goes to ``<workdir>/log.txt``.

A training run logs a lot at INFO level through Python's ``logging`` module: orbax
reports every checkpoint step (through ``absl.logging``, i.e. the ``absl`` logger),
JAX reports compilation-cache and backend decisions (``jax._src...`` loggers). On the
console that buries the progress bar. :func:`setup_logging` keeps every record, but
in a file, and lets through to the console only

* records of level WARNING and above, from any logger, and
* records of the run's own loggers, :data:`RUN_LOGGER` (``"cyb_jax"``) and its
  children (``logging.getLogger("cyb_jax.training.train")``, :func:`get_logger`), at any level.

Progress bars (tqdm) and ``print`` write to the streams directly and are not
affected. ``verbose=True`` leaves the console as it was (every record reaches it) and
still writes the file.

Typical use, in an absl entry point after flags are parsed (``absl.app.run`` has then
installed the absl handler on the root logger) and, on several hosts, after
``jax.distributed.initialize()``::

  log_path = console.setup_logging(workdir, verbose=FLAGS.verbose,
                                   process_index=jax.process_index())
  console.get_logger().info("library logs: %s", log_path)
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

RUN_LOGGER = "cyb_jax"
"""Name of the logger whose INFO records stay on the console (its children too)."""

_FORMAT = "%(asctime)s %(levelname).1s %(process)d %(name)s %(filename)s:%(lineno)d] %(message)s"
_MARK = "_cyb_jax_console"  # attribute set on the handlers and filters installed here


def get_logger(name: str | None = None) -> logging.Logger:
  """The run's own logger (``"cyb_jax"``), or its child ``"cyb_jax.<name>"``.

  Its INFO records are shown on the console after :func:`setup_logging`, unlike the
  INFO records of libraries.
  """
  return logging.getLogger(RUN_LOGGER if not name else f"{RUN_LOGGER}.{name}")


class _ConsoleFilter(logging.Filter):
  """Passes WARNING and above, and every record of the run's own loggers."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return record.name == RUN_LOGGER or record.name.startswith(RUN_LOGGER + ".")


def _is_console_handler(handler: logging.Handler) -> bool:
  """Whether ``handler`` writes to the terminal: the absl handler or a std stream."""
  if type(handler).__name__ == "ABSLHandler":  # absl's handler writes to stderr
    return True
  if isinstance(handler, logging.FileHandler):
    return False
  return isinstance(handler, logging.StreamHandler) and handler.stream in (
    sys.stderr,
    sys.stdout,
    sys.__stderr__,
    sys.__stdout__,
  )


def log_path_for(workdir: str, process_index: int = 0) -> str:
  """Where :func:`setup_logging` writes: ``<workdir>/log.txt`` (``log.<i>.txt`` on process i > 0).

  A workdir given as a URL (``gs://...``, any ``scheme://``) cannot be appended to by
  a ``logging.FileHandler``, so the file then goes to a local temporary directory,
  ``$TMPDIR/cyb_jax_logs/<workdir with / replaced>/log.txt``.
  """
  if not isinstance(process_index, int) or process_index < 0:
    raise ValueError(f"process_index={process_index!r} must be an int >= 0.")
  name = "log.txt" if process_index == 0 else f"log.{process_index}.txt"
  workdir = os.fspath(workdir)
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", workdir):
    local = re.sub(r"[^A-Za-z0-9_.-]+", "_", workdir).strip("_")
    return os.path.join(tempfile.gettempdir(), "cyb_jax_logs", local, name)
  return os.path.join(workdir, name)


def setup_logging(workdir: str, *, verbose: bool = False, process_index: int = 0) -> str:
  """Sends all INFO logging to a file and keeps the console to warnings and the run's own lines.

  Installs on the root logger a file handler for every record of level INFO and above
  (the root level is lowered to INFO if it was higher), and a filter on the handlers
  that write to the console (absl's handler, stream handlers on stderr/stdout; one
  stream handler on stderr is added when there is none) that passes only WARNING+
  and the records of :data:`RUN_LOGGER`. Calling it again replaces what an earlier
  call installed (e.g. for another workdir).

  Args:
    workdir: the run's folder; created if missing. See :func:`log_path_for` for URLs.
    verbose: if True, install no console filter: every record also reaches the console.
    process_index: this process's index (``jax.process_index()``); processes > 0 write
      ``log.<i>.txt`` so that hosts sharing a workdir do not write one file.

  Returns:
    The path of the log file.
  """
  path = log_path_for(workdir, process_index)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  root = logging.getLogger()
  _remove_installed(root)

  file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
  file_handler.setLevel(logging.INFO)
  file_handler.setFormatter(logging.Formatter(_FORMAT))
  setattr(file_handler, _MARK, True)
  root.addHandler(file_handler)
  if root.level == logging.NOTSET or root.level > logging.INFO:
    root.setLevel(logging.INFO)

  consoles = [h for h in root.handlers if h is not file_handler and _is_console_handler(h)]
  if not consoles:
    # Without any handler Python's last-resort handler prints WARNING+ to stderr; the
    # file handler disables it, so an explicit stderr handler takes its place.
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    setattr(stream, _MARK, True)
    root.addHandler(stream)
    consoles = [stream]
  if not verbose:
    for handler in consoles:
      console_filter = _ConsoleFilter()
      setattr(console_filter, _MARK, True)
      handler.addFilter(console_filter)
  return path


def _remove_installed(root: logging.Logger) -> None:
  """Undoes an earlier :func:`setup_logging`: its handlers and its console filters."""
  for handler in list(root.handlers):
    if getattr(handler, _MARK, False):
      root.removeHandler(handler)
      handler.close()
      continue
    for f in list(handler.filters):
      if getattr(f, _MARK, False):
        handler.removeFilter(f)
