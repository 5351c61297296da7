"""Tests of the reporting side: cyb_jax.analysis, pause_groups, report, samples and launch/{analyze,generate}.py."""

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os

import jax
import numpy as np
import pytest
from absl import flags

from cyb_jax import analysis
from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax.analysis import evaluation
from cyb_jax.analysis import report
from cyb_jax.data import default_data_config
from cyb_jax.data import make_data
from cyb_jax.model import samples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-5, atol=1e-5)
FIXED_STEPS = (None, 0, -1)  # a self-halting model, ce (step 0), pause_ce (step K)


def _cfg(max_pauses=2, **kw):
  return model_lib.ModelConfig(
    vocab_size=15, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_pauses=max_pauses, **kw
  )


def _params(cfg, seed=0):
  """Random parameters with a non-zero DK kernel, so that halting varies across positions."""
  params = model_lib.init_params(cfg, jax.random.key(seed))
  params["dk_head"]["kernel"] = 2.0 * jax.random.normal(jax.random.key(seed + 1), (cfg.d_model,))
  return params


@pytest.fixture(scope="module")
def synthetic_data():
  config = default_data_config()
  config.seq_len, config.batch_size, config.eval_batches = 24, 4, 2
  return make_data(config, seed=0, workdir="/nonexistent-unused")


def _stats(**fields):
  """Hand-made flat PositionStats; per-step fields are dummies (K = 0)."""
  n = len(fields["pauses"])
  defaults = dict(
    expected_pauses=np.zeros(n),
    nll=np.zeros(n),
    nll_step0=np.zeros(n),
    nll_mix=np.zeros(n),
    halt_probs=np.ones((n, 1)),
    nll_per_step=np.zeros((n, 1)),
    correct_per_step=np.zeros((n, 1), bool),
    weights=np.ones(n),
  )
  defaults.update({k: np.asarray(v) for k, v in fields.items()})
  defaults["pauses"] = defaults["pauses"].astype(np.int32)
  defaults["correct"] = defaults["correct"].astype(bool)
  defaults["correct_step0"] = defaults["correct_step0"].astype(bool)
  return losses.PositionStats(**defaults)


# --------------------------------------------------------------------------------------------
# Per-position statistics agree with the loss library on the same logits.
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _reference(cfg, params, batch, tau):
  """The loss library's view of a batch: per-position halting and the evaluate() figures."""
  logits = model_lib.step_logits(
    cfg, params, batch["inputs"], segment_ids=batch["segment_ids"], positions=batch["positions"]
  )
  steps = losses.step_log_probs(logits, batch["targets"])
  per_position = dict(
    halt=losses.threshold_halting(steps, tau),
    expected=losses.expected_pauses(steps),
    mix=losses.nll_mix(steps),
    nll0=-steps.log_target[..., 0],
    correct0=steps.correct[..., 0],
  )
  evaluated = [losses.evaluate(steps, batch["weights"], tau, fixed_step=fixed) for fixed in FIXED_STEPS]
  ours = [losses.position_outcomes(steps, batch["weights"], tau, fixed) for fixed in FIXED_STEPS]
  return per_position, evaluated, ours


def test_position_stats_agrees_with_losses(synthetic_data):
  cfg, tau = _cfg(), 0.4
  params = _params(cfg)
  batch = {k: v for k, v in synthetic_data.eval_batches[0].items() if k != "difficulty"}
  weights = batch["weights"]
  assert 0 < weights.sum() < weights.size  # padding present: the masking is exercised
  ref, evaluated, ours = jax.device_get(_reference(cfg, params, batch, tau))
  got = jax.device_get(evaluation.position_stats(cfg, params, batch, evaluation.Protocol(tau)))
  keep = weights > 0

  np.testing.assert_array_equal(got.pauses[keep], ref["halt"].step[keep])
  assert 0 < got.pauses[keep].mean() < cfg.max_pauses  # halting is not degenerate
  np.testing.assert_allclose(got.expected_pauses[keep], ref["expected"][keep], **TOL)
  np.testing.assert_allclose(got.nll[keep], ref["halt"].nll[keep], **TOL)
  np.testing.assert_array_equal(got.correct[keep], ref["halt"].correct[keep])
  np.testing.assert_allclose(got.nll_step0[keep], ref["nll0"][keep], **TOL)
  np.testing.assert_array_equal(got.correct_step0[keep], ref["correct0"][keep])
  np.testing.assert_allclose(got.nll_mix[keep], ref["mix"][keep], **TOL)
  np.testing.assert_allclose(got.halt_probs.sum(-1)[keep], 1.0, **TOL)
  for field in got:  # masked positions hold zeros, never NaN
    if field is not got.weights:
      assert not np.asarray(field)[~keep].any()

  # Chunked vocabulary path: the same statistics without materialising the logits.
  chunked = jax.device_get(evaluation.position_stats(cfg, params, batch, evaluation.Protocol(tau), vocab_chunk=4))
  for name, a, b in zip(got._fields, got, chunked):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), err_msg=name, **TOL)

  # The eval-set reductions equal losses.evaluate, for self-halting and fixed-step models.
  for fixed_step, ours_i, evaluated_i in zip(FIXED_STEPS, ours, evaluated):
    summary = evaluation.summarize(ours_i)
    for key, value in evaluated_i.items():
      np.testing.assert_allclose(summary[key], value, err_msg=f"{key}, fixed_step={fixed_step}", **TOL)
    if fixed_step is not None:
      assert summary["threshold_pauses"] == summary["expected_pauses"] == fixed_step % cfg.num_steps


def test_position_stats_rejects_bad_arguments(synthetic_data):
  cfg = _cfg()
  params = _params(cfg)
  batch = synthetic_data.eval_batches[0]
  with pytest.raises(ValueError, match=r"tau=1\.5"):
    evaluation.position_stats(cfg, params, batch, evaluation.Protocol(1.5))
  with pytest.raises(ValueError, match="fixed_step=3"):
    evaluation.position_stats(cfg, params, batch, evaluation.Protocol(0.5, fixed_step=3))
  with pytest.raises(ValueError, match="weights"):
    evaluation.position_stats(cfg, params, {k: batch[k] for k in ("inputs", "targets")}, evaluation.Protocol(0.5))
  with pytest.raises(ValueError, match=r"batch\['targets'\] has shape"):
    evaluation.position_stats(cfg, params, dict(batch, targets=batch["targets"][:, :-1]), evaluation.Protocol(0.5))


# --------------------------------------------------------------------------------------------
# Host-side aggregations on hand-made arrays.
# --------------------------------------------------------------------------------------------


def test_rank_correlation_with_ties():
  np.testing.assert_array_equal(analysis.average_ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
  np.testing.assert_array_equal(analysis.average_ranks([3, 1, 3, 3]), [3, 1, 3, 3])
  # ranks x = [1, 2.5, 2.5, 4], y = [1, 3.5, 3.5, 2]: covariance 1.5, variances 4.5 and 4.5.
  assert analysis.rank_correlation([1, 2, 2, 3], [1, 3, 3, 2]) == pytest.approx(1 / 3)
  assert analysis.rank_correlation([0, 1, 2], [0, 0, 1]) == pytest.approx(math.sqrt(3) / 2)
  assert analysis.rank_correlation([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
  assert math.isnan(analysis.rank_correlation([1, 2, 3], [5, 5, 5]))  # undefined for a constant
  assert math.isnan(analysis.rank_correlation([1], [2]))
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 4, 200), rng.integers(0, 3, 200)  # heavily tied
  assert analysis.rank_correlation(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_by_difficulty_hand_checked():
  s = _stats(
    pauses=[0, 0, 1, 2, 0, 2, 2, 3],
    expected_pauses=[0.1, 0.3, 1.0, 1.5, 0.5, 2.0, 1.8, 9.0],
    correct_step0=[1, 0, 0, 0, 1, 0, 0, 1],
    correct=[1, 0, 1, 1, 1, 1, 0, 1],
    weights=[1, 1, 1, 1, 1, 1, 1, 0],
  )  # the last position (weight 0, level -1) counts nowhere
  difficulty = np.array([0, 0, 1, 1, 1, 2, 2, -1])
  got = analysis.by_difficulty(s, difficulty, names=("easy", "mid", "hard", "unseen"))
  assert [g.name for g in got.levels] == ["easy", "mid", "hard", "unseen"]
  easy, mid, hard, unseen = got.levels
  expected = {
    # level 1: pauses [1, 2, 0] -> mean 1, rate 2/3, std sqrt(2/3); accuracy 1/3 -> 1.
    "easy": dict(
      count=2,
      mean_pauses=0,
      pause_rate=0,
      std_pauses=0,
      mean_expected_pauses=0.2,
      accuracy_step0=0.5,
      accuracy=0.5,
      gain=0,
    ),
    "mid": dict(
      count=3,
      mean_pauses=1,
      pause_rate=2 / 3,
      std_pauses=math.sqrt(2 / 3),
      mean_expected_pauses=1.0,
      accuracy_step0=1 / 3,
      accuracy=1,
      gain=2 / 3,
    ),
    "hard": dict(
      count=2,
      mean_pauses=2,
      pause_rate=1,
      std_pauses=0,
      mean_expected_pauses=1.9,
      accuracy_step0=0,
      accuracy=0.5,
      gain=0.5,
    ),
  }
  for g in (easy, mid, hard):
    for key, value in expected[g.name].items():
      assert getattr(g, key) == pytest.approx(value), (g.name, key)
  assert unseen.count == 0 and math.isnan(unseen.mean_pauses)
  assert got.spearman_levels == pytest.approx(1.0)  # means 0 < 1 < 2
  assert got.spearman_levels_expected == pytest.approx(1.0)  # 0.2 < 1.0 < 1.9
  # Positions: level ranks [1.5, 1.5, 4, 4, 4, 6.5, 6.5], pause ranks [2, 2, 4, 6, 2, 6, 6]:
  # covariance 20, variances 25 and 24 -> 20 / sqrt(600) = sqrt(2/3).
  assert got.spearman_positions == pytest.approx(math.sqrt(2 / 3))
  with pytest.raises(ValueError, match="difficulty level 2 has no name"):
    analysis.by_difficulty(s, difficulty, names=("a", "b"))


def test_by_token_hand_checked():
  s = _stats(
    pauses=[2, 0, 1, 1, 1, 0, 1],
    expected_pauses=[1.5, 0.5, 1.2, 1.2, 1.2, 0.0, 1.0],
    correct_step0=[0, 0, 1, 0, 0, 1, 0],
    correct=[1, 0, 1, 1, 0, 1, 0],
    nll_step0=[3.0, 1.0, 0.5, 0.5, 0.5, 9.0, 1.0],
    weights=[1, 1, 1, 1, 1, 1, 2],
  )  # the last position counts twice in every mean
  inputs = np.array([5, 5, 7, 7, 7, 9, 5])
  targets = np.array([7, 7, 9, 5, 9, 5, 9])
  got = analysis.by_token(s, inputs, targets, piece=lambda i: f"t{i}", min_count=2, top=2)
  after = {g.key: g for g in got.after}
  before = {g.key: g for g in got.before}
  assert sorted(after) == [5, 7, 9] and sorted(before) == [5, 7, 9]
  # After token 5: positions 0, 1, 6 with weights 1, 1, 2 (weight sum 4).
  g = after[5]
  assert (g.name, g.count, g.weight) == ("t5", 3, 4.0)
  assert g.mean_pauses == pytest.approx((2 + 0 + 2 * 1) / 4)
  assert g.pause_rate == pytest.approx(3 / 4)
  assert g.std_pauses == pytest.approx(math.sqrt((4 + 0 + 2) / 4 - 1.0))
  assert g.mean_expected_pauses == pytest.approx(1.0)
  assert (g.accuracy_step0, g.accuracy, g.gain) == pytest.approx((0.0, 0.25, 0.25))
  g = after[7]
  assert (g.count, g.mean_pauses, g.std_pauses, g.mean_expected_pauses) == pytest.approx((3, 1, 0, 1.2))
  assert (g.accuracy_step0, g.accuracy, g.gain) == pytest.approx((1 / 3, 2 / 3, 1 / 3))
  # Before token 5: positions 3, 5: pauses 1, 0; accuracy 1/2 -> 1.
  g = before[5]
  assert (g.count, g.mean_pauses, g.pause_rate, g.std_pauses) == pytest.approx((2, 0.5, 0.5, 0.5))
  assert g.gain == pytest.approx(0.5)
  assert before[9].accuracy_step0 == pytest.approx(0.25) and before[9].gain == pytest.approx(0.0)
  # Rankings (count >= 2): 5 and 7 tie at 1 pause after them, E[pauses] 1.0 < 1.2 breaks the tie;
  # before: 9 (E 1.1) and 7 (E 1.0) tie at 1 pause, then 5 at 0.5.
  assert [g.key for g in got.most_after] == [7, 5]
  assert [g.key for g in got.least_after] == [5, 7]
  assert [g.key for g in got.most_before] == [9, 7]
  assert [g.key for g in got.least_before] == [5, 7]
  assert [g.key for g in analysis.by_token(s, inputs, targets, min_count=1, top=5).least_after] == [9, 5, 7]
  # Ambiguity: mean step-0 NLL after 5 is (3 + 1 + 2 * 1) / 4 = 1.5, after 7 0.5 (9 is rare).
  assert after[5].nll_step0 == pytest.approx(1.5)
  assert [g.key for g in got.ambiguous_after] == [5, 7]
  assert math.isnan(got.spearman_ambiguity)  # 5 and 7 both pause 1.0 on average
  everyone = analysis.by_token(s, inputs, targets, min_count=1, top=5)
  assert [g.key for g in everyone.ambiguous_after] == [9, 5, 7]
  # NLL ranks 9 > 5 > 7 against pauses 0 < 1 = 1: ranks (3, 2, 1) vs (1, 2.5, 2.5).
  assert everyone.spearman_ambiguity == pytest.approx(-math.sqrt(3) / 2)
  with pytest.raises(ValueError, match="min_count=0"):
    analysis.by_token(s, inputs, targets, min_count=0)
  with pytest.raises(ValueError, match="targets has 6 entries"):
    analysis.by_token(s, inputs, targets[:-1])


# --------------------------------------------------------------------------------------------
# report.md and plots.
# --------------------------------------------------------------------------------------------


def _write_metrics(workdir, num_steps, *, with_eval=True):
  halt = [1.0 / num_steps] * num_steps
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step in (10, 20, 30):
      f.write(
        json.dumps(
          {
            "step": step,
            "train_tokens": 100 * step,
            "train/loss": 3.0 - step / 20,
            "train/nll_mix": 3.0 - step / 20,
            "train/expected_pauses": 0.5,
            "train/learning_rate": 1e-3,
            "train/tokens_per_sec": 1e4,
          }
        )
        + "\n"
      )
      if with_eval and step % 20 == 10:
        f.write(
          json.dumps(
            {
              "step": step,
              "train_tokens": 100 * step,
              "eval/nll_mix": 2.5 - step / 30,
              "eval/expected_pauses": 0.4,
              "eval/compute_mix": 1.4,
              "eval/threshold_nll": 2.6 - step / 30,
              "eval/threshold_pauses": 0.3,
              "eval/compute_threshold": 1.3,
              "eval/accuracy": 0.2,
              "eval/threshold_accuracy": 0.2,
              "eval/halt_probs": halt,
              "eval/threshold_step_probs": halt,
              "eval/accuracy_per_step": [0.2] * num_steps,
              "eval/nll_per_step": [2.0] * num_steps,
            }
          )
          + "\n"
        )
    f.write('{"step": 40, "train_tok')  # a line cut short by a crash is skipped


def _assert_png(path):
  with open(path, "rb") as f:
    head = f.read(8)
  assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000, path


def test_write_report_synthetic(tmp_path, synthetic_data):
  cfg = _cfg()
  _write_metrics(tmp_path, cfg.num_steps)
  path = report.write_report(
    str(tmp_path),
    model_cfg=cfg,
    params=_params(cfg),
    eval_batches=synthetic_data.eval_batches,
    info=synthetic_data.info,
    loss_name="cyb_ap",
    protocol=evaluation.Protocol(0.5, None),
  )
  assert path == os.path.join(tmp_path, "report.md")
  text = open(path).read()
  for needle in (
    "| max pauses K | 2 |",
    "| training steps | 30 |",
    "| training tokens seen | 3k |",
    "## Final evaluation",
    "threshold (tau = 0.5)",
    "step K (always 2 pauses)",
    "### Per step",
    "## Training curve",
    "## Pauses by difficulty",
    synthetic_data.info.difficulty_names[-1],
    "Spearman",
  ):
    assert needle in text, needle
  for plot in ("eval_curve", "halting", "pauses_by_difficulty"):
    assert f"(plots/{plot}.png)" in text
    _assert_png(tmp_path / "plots" / f"{plot}.png")
  # The final-evaluation table reports what evaluation.summarize computes.
  summary = report.analyze(
    evaluation.eval_set_stats(cfg, _params(cfg), synthetic_data.eval_batches, evaluation.Protocol(0.5, None)),
    synthetic_data.info,
  ).summary
  assert f"| {summary['threshold_nll']:.3f} | {summary['threshold_accuracy']:.3f} |" in text


def test_write_report_k0_text_without_labels(tmp_path, synthetic_data):
  """A ce model (K = 0) on data without difficulty labels and without metrics.jsonl."""
  cfg = _cfg(max_pauses=0)
  info = dataclasses.replace(synthetic_data.info, difficulty_names=None)
  batches = [{k: v for k, v in b.items() if k != "difficulty"} for b in synthetic_data.eval_batches]
  path = report.write_report(
    str(tmp_path),
    model_cfg=cfg,
    params=_params(cfg),
    eval_batches=batches,
    info=info,
    loss_name="ce",
    protocol=evaluation.Protocol(0.5, 0),
    min_count=3,
  )
  text = open(path).read()
  assert "| max pauses K | 0 |" in text and "step K (always" not in text
  assert "## Pauses by token" in text and "## Pauses by difficulty" not in text
  assert "metrics.jsonl has no rows" in text
  assert not (tmp_path / "plots" / "eval_curve.png").exists()
  for plot in ("halting", "pauses_by_token"):
    _assert_png(tmp_path / "plots" / f"{plot}.png")


def test_write_report_without_eval_set(tmp_path):
  cfg = _cfg()
  info = make_data(default_data_config(), seed=0, workdir=str(tmp_path)).info
  _write_metrics(tmp_path, cfg.num_steps)
  text = open(
    report.write_report(
      str(tmp_path),
      model_cfg=cfg,
      params=_params(cfg),
      eval_batches=[],
      info=info,
      loss_name="cyb_va",
      protocol=evaluation.Protocol(0.5, None),
    )
  ).read()
  # One evaluation path: no eval set, no final evaluation (the curve is still drawn).
  assert "No eval set (data.eval_batches = 0): nothing to evaluate" in text
  assert "## Training curve" in text and "| 1.600 |" in text
  _assert_png(tmp_path / "plots" / "eval_curve.png")
  os.remove(tmp_path / "metrics.jsonl")  # nothing at all: still a report
  text = open(
    report.write_report(
      str(tmp_path),
      model_cfg=cfg,
      params=_params(cfg),
      eval_batches=[],
      info=info,
      loss_name="cyb_va",
      protocol=evaluation.Protocol(0.5, None),
    )
  ).read()
  assert "nothing to evaluate" in text


def test_render_with_pauses():
  assert samples.render_with_pauses(["4", "6", ";"], [2, 0, 1]) == "··46·;"
  assert samples.render_with_pauses(["▁The", "▁cats", "▁sat"], [0, 1, 0], mark="|") == " The| cats sat"
  with pytest.raises(ValueError, match="3 pieces but 2"):
    samples.render_with_pauses(["a", "b", "c"], [0, 1])


# --------------------------------------------------------------------------------------------
# Launch scripts on a real checkpoint.
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _launch_module(name):
  """Imports cyb_jax/cli/<name>.py afresh; afterwards removes its absl flags, so scripts sharing
  flag names load in turn."""
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location(f"cli_{name}", os.path.join(REPO, "cyb_jax", "cli", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    yield module
  finally:
    for flag in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, flag)
    flags.FLAGS.unparse_flags()


def test_launch_scripts_on_a_checkpoint(tmp_path, capsys):
  train = pytest.importorskip("cyb_jax.training.train", reason="the trainer is missing")
  base = pytest.importorskip("cyb_jax.configs.base", reason="cyb_jax/configs/base.py is missing")
  config = base.get_config()
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.progress_bar = False
  config.model.update(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_pauses=2)
  config.data.seq_len, config.data.batch_size, config.data.eval_batches = 24, 4, 1
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "report.md"))  # the trainer calls write_report

  out = tmp_path / "analysis"
  with _launch_module("analyze") as analyze:
    flags.FLAGS(["analyze", f"--workdir={workdir}", f"--out={out}", "--min_count=1", "--top=3"])
    analyze.main(["analyze"])
  printed = capsys.readouterr().out
  assert "## By difficulty" in printed and "## By token" in printed
  saved = json.load(open(out / "pause_stats.json"))
  assert saved["run"]["step"] == 2 and saved["tau"] == config.eval.tau
  assert len(saved["summary"]["halt_probs"]) == 3 and len(saved["by_difficulty"]["levels"]) == 5
  assert len(saved["by_token"]["most_after"]) == 3
  for plot in ("halting", "pauses_by_difficulty", "pauses_by_token"):
    _assert_png(out / "plots" / f"{plot}.png")

  with _launch_module("generate") as generate:
    flags.FLAGS(
      ["generate", f"--workdir={workdir}", "--prompt=;12+34=", "--max_new_tokens=6", "--num_samples=2", "--halting=max"]
    )
    generate.main(["generate"])
  printed = capsys.readouterr().out
  assert printed.count("--- sample") == 2
  # halting=max takes all K = 2 pauses before every token: "··" precedes each of the 6.
  assert "12 pauses over 6 tokens" in printed
  sample = printed.strip().splitlines()[-1]
  assert sample.startswith("[;12+34=]··") and sample.count("·") == 12
