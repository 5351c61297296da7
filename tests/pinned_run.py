"""The tiny run of ``tests/test_pinned_figures.py``, in a process of its own::

  python -m tests.pinned_run --loss=cyb_dp --workdir=/tmp/run --out=/tmp/figures.json

It writes ``{"train_loss": [...], "train_step": [...], "train_tokens": [...], "final": {...},
"summary": {...}}``: the training loss, step and cumulative target-token count of every train
row, the trainer's final eval figures and the report's summary of the eval set.

The test starts it with XLA's default CPU flags (the code generation a user's run gets, and the
one the fixture was made with, not the test session's cheapest one, ``tests/conftest.py``) and
on the CPU backend (the fixture holds CPU figures; a GPU or TPU would round differently).

``--set KEY=VALUE`` overrides a field of the tiny config, to see how far a real change moves
the figures against the test's tolerances, e.g. ``--set optimizer.learning_rate=3.003e-3``.
"""

import argparse
import json

import numpy as np

from cyb_jax import metrics_writer
from cyb_jax.analysis import evaluation
from cyb_jax.training import components
from cyb_jax.training import train
from tests.tiny import tiny_config

_SET_HELP = "override a field of the tiny config (repeatable), e.g. optimizer.learning_rate=3.003e-3"


def _typed(cfg, key: str, value: str):
  """``value`` converted to the type of the config field ``key`` (a dotted path)."""
  for part in key.split("."):
    cfg = getattr(cfg, part)
  if isinstance(cfg, bool):
    return value.lower() in ("1", "true")
  return type(cfg)(value)


def _plain(value):
  return np.asarray(value).tolist()


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--loss", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
  args = parser.parse_args()
  overrides = {"loss.name": args.loss}
  for item in args.set:
    key, value = item.split("=", 1)
    overrides[key] = _typed(tiny_config(), key, value)
  result = train.train_and_evaluate(tiny_config(**overrides), args.workdir)
  rows = [r for r in metrics_writer.read_metrics(args.workdir) if "train/loss" in r]
  run = components.load_run(args.workdir)
  summary = evaluation.summarize(
    evaluation.eval_set_stats(run.model_cfg, run.params, run.data.eval_batches, run.protocol).stats
  )
  figures = {
    "train_loss": [r["train/loss"] for r in rows],
    "train_step": [r["step"] for r in rows],
    "train_tokens": [r["train_tokens"] for r in rows],
    "final": {k: _plain(v) for k, v in result.items() if not isinstance(v, str)},
    "summary": {k: _plain(v) for k, v in summary.items()},
  }
  with open(args.out, "w") as f:
    json.dump(figures, f)


if __name__ == "__main__":
  main()
