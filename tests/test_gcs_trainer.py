"""The trainer end to end on gs:// paths of a local GCS emulator: write, resume exactly, fine-tune.

Uses the ``gcs_bucket`` fixture (tests/gcs_emulator.py: a fake-gcs-server on localhost that
gcsfs, orbax/tensorstore and array_record are pointed at).
"""

import jax
import numpy as np
import pytest
from etils import epath

from cyb_jax import metrics_writer
from cyb_jax.training import components
from cyb_jax.training import train
from tests.tiny import tiny_config

pytestmark = pytest.mark.slow


def _losses(workdir):
  return [r["train/loss"] for r in metrics_writer.read_metrics(workdir) if "train/loss" in r]


def test_a_gcs_run_resumes_exactly_fine_tunes_and_reads_back(gcs_bucket, tmp_path):
  config = tiny_config(**{"optimizer.schedule_steps": 6, "write_report": True})
  local = str(tmp_path / "local")
  train.train_and_evaluate(config, local)  # 6 steps in one go, on the local disk

  run = f"{gcs_bucket}/run"
  first = train.train_and_evaluate(tiny_config(**{"optimizer.schedule_steps": 6, "num_train_steps": 3}), run)
  assert first["step"] == 3 and not (epath.Path(run) / "gs:").exists()
  assert sorted(p.name for p in (epath.Path(run) / "checkpoints").iterdir()) == ["3"]
  resumed = train.train_and_evaluate(config, run)  # a new process would do the same
  assert resumed["step"] == 6
  np.testing.assert_allclose(_losses(run), _losses(local), rtol=1e-6)
  for name in ("config.json", "report.md", "plots/halting.png"):
    assert (epath.Path(run) / name).exists(), name
  assert list((epath.Path(run) / "tensorboard").iterdir())

  loaded = components.load_run(run)  # read the results back from the bucket
  assert loaded.step == 6

  tuned = f"{gcs_bucket}/tuned"
  train.train_and_evaluate(tiny_config(**{"num_train_steps": 1, "init_from": run}), tuned)
  start = components.load_run(tuned)
  # One step of fine-tuning from the copied parameters moves them only a little.
  diff = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(loaded.params))
  )
  assert 0 < diff < 0.1
