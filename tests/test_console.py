"""cyb_jax.console: library INFO logging goes to <workdir>/log.txt, the console stays quiet.

Each case runs in a fresh interpreter, so the root logger, absl's handler and the
real stderr are those of a new process (pytest's capture and earlier tests' handlers
would otherwise decide what "the console" is).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from cyb_jax import console

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Logs one record per (logger, level) of interest, each with a unique text.
_SCRIPT = """
import logging, sys
from absl import logging as absl_logging
if {absl_app!r}:
  # What absl.app.run does before main(): parse flags, install the absl handler.
  from absl import flags
  flags.FLAGS(["prog"])
  absl_logging.use_absl_handler()
from cyb_jax import console
path = console.setup_logging(sys.argv[1], verbose={verbose!r})
print(path)
absl_logging.info("absl-info-line")
logging.getLogger("orbax.checkpoint._src.checkpointer").info("orbax-info-line")
logging.getLogger("jax._src.compiler").info("jax-info-line")
absl_logging.warning("absl-warning-line")
logging.getLogger("orbax.checkpoint").warning("orbax-warning-line")
console.get_logger("train").info("run-info-line")
logging.getLogger("cyb_jaxish").info("lookalike-info-line")
"""

_LIBRARY_INFO = ("absl-info-line", "orbax-info-line", "jax-info-line", "lookalike-info-line")
_WARNINGS = ("absl-warning-line", "orbax-warning-line")


def _run(workdir: str, *, absl_app: bool, verbose: bool) -> tuple[str, str, str]:
  """Runs the script; returns (log path printed, stderr, log file text)."""
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT.format(absl_app=absl_app, verbose=verbose), workdir],
    capture_output=True,
    text=True,
    env=env,
    timeout=60,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  path = proc.stdout.strip()
  with open(path, encoding="utf-8") as f:
    return path, proc.stderr, f.read()


@pytest.mark.parametrize("absl_app", [False, True], ids=["plain", "absl_app"])
def test_library_info_goes_to_the_file_and_warnings_to_the_console(tmp_path, absl_app):
  workdir = str(tmp_path / "run")
  path, stderr, log = _run(workdir, absl_app=absl_app, verbose=False)
  assert path == os.path.join(workdir, "log.txt")
  for line in _LIBRARY_INFO:
    assert line in log, (line, log)
    assert line not in stderr, (line, stderr)
  for line in _WARNINGS:
    assert line in stderr, (line, stderr)
    assert line in log, (line, log)
  # The run's own INFO lines stay visible, and are in the file as well.
  assert "run-info-line" in stderr
  assert "run-info-line" in log
  assert stderr.count("orbax-warning-line") == 1  # one console handler, no duplicates


@pytest.mark.parametrize("absl_app", [False, True], ids=["plain", "absl_app"])
def test_verbose_shows_everything_on_the_console(tmp_path, absl_app):
  _, stderr, log = _run(str(tmp_path), absl_app=absl_app, verbose=True)
  for line in _LIBRARY_INFO + _WARNINGS + ("run-info-line",):
    assert line in stderr, (line, stderr)
    assert line in log, (line, log)


def test_a_second_call_moves_the_file_and_installs_nothing_twice(tmp_path):
  script = textwrap.dedent(f"""
      import logging, sys
      from cyb_jax import console
      console.setup_logging({str(tmp_path / "a")!r})
      console.setup_logging({str(tmp_path / "b")!r})
      logging.getLogger("orbax").info("second-info")
      logging.getLogger("orbax").warning("second-warning")
      print(len(logging.getLogger().handlers))
      """)
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=True)
  assert proc.stdout.strip() == "2"  # one file handler, one stderr handler
  assert proc.stderr.count("second-warning") == 1
  assert "second-info" not in proc.stderr
  assert "second-info" not in (tmp_path / "a" / "log.txt").read_text()
  assert "second-info" in (tmp_path / "b" / "log.txt").read_text()


def test_log_paths():
  assert console.log_path_for("/runs/x") == os.path.join("/runs/x", "log.txt")
  assert console.log_path_for("/runs/x", 3) == os.path.join("/runs/x", "log.3.txt")
  remote = console.log_path_for("gs://bucket/runs/x")
  assert not remote.startswith("gs:")
  assert remote.endswith(os.path.join("gs_bucket_runs_x", "log.txt"))
  with pytest.raises(ValueError, match="process_index=-1"):
    console.log_path_for("/runs/x", -1)
