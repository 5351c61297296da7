"""Tests of the summary tools (tools/depth_summary.py, tools/words_summary.py), run as scripts."""

import json
import os
import subprocess
import sys

import pytest

from cyb_jax.analysis import words as wa
from cyb_jax.experiment import efficiency

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name, *args):
  return subprocess.run(
    [sys.executable, os.path.join(_ROOT, "tools", name), *args],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": _ROOT, "JAX_PLATFORMS": "cpu"},
  )


def _group(name, count, rate, gain):
  return {"name": name, "count": count, "pause_rate": rate, "gain": gain}


def _words(nns_rate, nn_rate, *, tagged=True):
  return {
    "words": {
      "tagged": tagged,
      "final_vs_internal": [_group(wa.WORD_FINAL, 10, 0.5, 0.01), _group(wa.WORD_INTERNAL, 20, 0.25, 0.0)],
      "by_tag": [_group("nn", 8, nn_rate, 0.02), _group("nns", 4, nns_rate, -0.01)],
      "contractions": [_group(wa.WHOLE_WORD, 6, 0.1, 0.0)],
      "mean_std_ambiguous": 0.1,
      "mean_std_other": 0.2,
      "aligned_docs": 3,
      "num_docs": 3,
    }
  }


def test_words_summary_puts_each_models_rates_in_its_column(tmp_path):
  for name, words in (("a", _words(0.75, 0.25)), ("b", _words(0.0, 0.5)), ("plain", _words(0, 0, tagged=False))):
    (tmp_path / name).mkdir()
    (tmp_path / name / "words.json").write_text(json.dumps(words))
  done = _tool(
    "words_summary.py",
    f"--analysis=model A:{tmp_path / 'a'}",
    f"--analysis=B:{tmp_path / 'b'}",
    f"--out={tmp_path / 'out'}",
  )
  assert done.returncode == 0, done.stderr
  table = (tmp_path / "out" / "words_summary.md").read_text()
  assert "| where | model A | B |" in table
  assert "| after a plural noun (`nns`) | 0.750 (4, -0.010) | 0.000 (4, -0.010) |" in table
  assert "| first piece of an n't contraction | n/a | n/a |" in table  # no such group in these views
  assert "| mean std of k*: ambiguous pieces / other frequent pieces | 0.100 / 0.200 | 0.100 / 0.200 |" in table
  assert (tmp_path / "out" / "pause_rate_by_tag.png").read_bytes()[:4] == b"\x89PNG"
  untagged = _tool("words_summary.py", f"--analysis=x:{tmp_path / 'plain'}", f"--out={tmp_path / 'out2'}")
  assert untagged.returncode != 0 and "has no tags" in untagged.stderr


def _row(loss, k, curve):
  stat = lambda v: {"mean": v, "std": 0.0, "n": 1}
  return {
    "loss": loss,
    "K": k,
    "seeds": [0],
    "curve": curve,
    "nll_mix": stat(curve[-1][1]),
    "expected_pauses": stat(0.0),
  }


def test_depth_summary_reports_the_token_ratios_and_the_budget_ratio(tmp_path):
  ce = [[100, 3.0], [200, 2.5]]
  pause_ce = [[100, 3.2], [200, 2.8]]
  cyb = [[100, 2.75], [200, 2.25]]  # reaches ce's final 2.5 at 150 tokens
  rows = {"ce": _row("ce", 0, ce), "pause_ce_K1": _row("pause_ce", 1, pause_ce), "cyb_dp_K1": _row("cyb_dp", 1, cyb)}
  budgets = {"vs": {"cyb_dp_K1": {"ratio": 3.0, "lower_bound": False}}}
  for depth, by_budget in ((1, {}), (2, budgets)):
    (tmp_path / f"L{depth}").mkdir()
    (tmp_path / f"L{depth}" / "results.json").write_text(json.dumps({"rows": rows, "ce_budgets": by_budget}))
  done = _tool(
    "depth_summary.py", f"--experiment=1:{tmp_path / 'L1'}", f"--experiment=2:{tmp_path / 'L2'}", f"--out={tmp_path}"
  )
  assert done.returncode == 0, done.stderr
  vs_ce, vs_pause_ce = efficiency.token_ratio(ce, cyb), efficiency.token_ratio(pause_ce, cyb)
  assert vs_ce == pytest.approx(200 / 150)
  table = (tmp_path / "depth.md").read_text()
  assert f"| 1 | cyb_dp_K1 | 1 | 2.2500 +- 0.0000 | 0.00 | {vs_ce:.2f} | {vs_pause_ce:.2f} |  |" in table
  assert f"| 2 | cyb_dp_K1 | 1 | 2.2500 +- 0.0000 | 0.00 | {vs_ce:.2f} | {vs_pause_ce:.2f} | 3.00 |" in table
  bad = _tool("depth_summary.py", "--experiment=two:/nowhere", f"--out={tmp_path}")
  assert bad.returncode != 0 and "must be DEPTH:OUT_DIR" in bad.stderr
