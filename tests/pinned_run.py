"""The tiny run of ``tests/test_pinned_figures.py``, for a process with XLA's default flags.

The pinned figures are bit-exact training losses, which hold only for XLA's default CPU
code generation; the test session itself compiles with the cheapest one
(``tests/conftest.py``), so the test runs this in a child process with the default flags::

  python -m tests.pinned_run --loss=cyb_dp --workdir=/tmp/run --out=/tmp/figures.json

It writes ``{"train_loss": [...], "final": {...}, "summary": {...}}``: the training losses
of every step, the trainer's final eval figures and the report's summary of the eval set.
"""

import argparse
import json

import numpy as np

from cyb_jax import components
from cyb_jax import evaluation
from cyb_jax import metrics_writer
from cyb_jax import train
from tests.tiny import tiny_config


def _plain(value):
  return np.asarray(value).tolist()


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--loss", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  result = train.train_and_evaluate(tiny_config(**{"loss.name": args.loss}), args.workdir)
  losses = [r["train/loss"] for r in metrics_writer.read_metrics(args.workdir) if "train/loss" in r]
  run = components.load_run(args.workdir)
  summary = evaluation.summarize(
    evaluation.eval_set_stats(run.model_cfg, run.params, run.data.eval_batches, run.protocol).stats
  )
  figures = {
    "train_loss": losses,
    "final": {k: _plain(v) for k, v in result.items() if not isinstance(v, str)},
    "summary": {k: _plain(v) for k, v in summary.items()},
  }
  with open(args.out, "w") as f:
    json.dump(figures, f)


if __name__ == "__main__":
  main()
