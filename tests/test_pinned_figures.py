"""Today's trainer, evaluation and report reduction give the figures of the code before the refactor.

The fixture holds, for a tiny run of a fixed-halting loss (pause_ce) and of the default loss
(cyb_dp, with dual ascent), the training losses of every step, the trainer's final eval
figures and the report's summary, as computed at commit 0af021e (before the components
layer and the one evaluation path). Training must be unchanged to the bit; the evaluation
figures to float32 rounding (the old host reduction ran in float64).

Bit-exact training holds for XLA's default CPU code generation, not for the cheapest one
the test session compiles with (tests/conftest.py): each run is made by tests/pinned_run.py
in a child process with the default flags.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.xla_flags import FAST_COMPILE_FLAGS

pytestmark = pytest.mark.slow

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pinned_tiny_runs.json")
_ATOL = 2e-6  # float32 sums against the old float64 host reduction (observed: <= 4e-7)


def _run_with_default_xla_flags(loss_name, tmp_path):
  """The figures of tests/pinned_run.py for ``loss_name``, in a process without the fast flags."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in FAST_COMPILE_FLAGS)
  if jax.config.jax_compilation_cache_dir:  # the session's cache (its keys include the flags)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  out = tmp_path / "figures.json"
  cmd = [sys.executable, "-m", "tests.pinned_run", f"--loss={loss_name}", f"--workdir={tmp_path / loss_name}"]
  proc = subprocess.run(
    [*cmd, f"--out={out}"], cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text())


@pytest.mark.parametrize("loss_name", ["pause_ce", "cyb_dp"])
def test_refactored_trainer_reproduces_the_pinned_figures(tmp_path, loss_name):
  pinned = json.load(open(_FIXTURE))[loss_name]
  now = _run_with_default_xla_flags(loss_name, tmp_path)
  result = now["final"]
  assert now["train_loss"] == pinned["train_loss"]  # the same steps, to the bit
  for key, value in pinned["final"].items():
    if key in ("step", "train_tokens"):
      assert result[key] == value, key
    else:
      np.testing.assert_allclose(result[key], value, atol=_ATOL, rtol=0, err_msg=key)
  summary = now["summary"]
  for key, value in pinned["summary"].items():
    np.testing.assert_allclose(summary[key], value, atol=_ATOL, rtol=0, err_msg=key)
