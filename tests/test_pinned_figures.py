"""Today's trainer, evaluation and report reduction give the figures of the code before the refactor.

The fixture holds, for a tiny run of a fixed-halting loss (pause_ce) and of the default loss
(cyb_dp, with dual ascent), the training losses of every step, the trainer's final eval
figures and the report's summary, as computed at commit 0af021e (before the components
layer and the one evaluation path). Training must be unchanged to the bit; the evaluation
figures to float32 rounding (the old host reduction ran in float64).
"""

import json
import os

import numpy as np
import pytest

from cyb_jax import components
from cyb_jax import evaluation
from cyb_jax import metrics_writer
from cyb_jax import train
from tests.tiny import tiny_config

pytestmark = pytest.mark.slow

_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "pinned_tiny_runs.json")
_ATOL = 2e-6  # float32 sums against the old float64 host reduction (observed: <= 4e-7)


@pytest.mark.parametrize("loss_name", ["pause_ce", "cyb_dp"])
def test_refactored_trainer_reproduces_the_pinned_figures(tmp_path, loss_name):
  pinned = json.load(open(_FIXTURE))[loss_name]
  workdir = str(tmp_path / loss_name)
  result = train.train_and_evaluate(tiny_config(**{"loss.name": loss_name}), workdir)
  losses_now = [r["train/loss"] for r in metrics_writer.read_metrics(workdir) if "train/loss" in r]
  assert losses_now == pinned["train_loss"]  # the same steps, to the bit
  for key, value in pinned["final"].items():
    if key in ("step", "train_tokens"):
      assert result[key] == value, key
    else:
      np.testing.assert_allclose(result[key], value, atol=_ATOL, rtol=0, err_msg=key)
  run = components.load_run(workdir)
  summary = evaluation.summarize(
    evaluation.eval_set_stats(run.model_cfg, run.params, run.data.eval_batches, run.protocol).stats
  )
  for key, value in pinned["summary"].items():
    np.testing.assert_allclose(summary[key], value, atol=_ATOL, rtol=0, err_msg=key)
