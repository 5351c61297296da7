"""How many times more training tokens one model needs than another, from eval curves.

Data efficiency (docs/design.md section 5): for two models, take the final eval loss of the
better one, read from the other's eval curve (eval loss against training tokens,
linear interpolation, seeds averaged) how many tokens it needed to reach that loss,
and divide by the better model's tokens. If it never got there, the ratio is at least
its total tokens over the better model's tokens (reported as ``>= r``).

Across budgets: when ``ce`` is also trained for longer budgets (each run with its own
schedule), :func:`budget_frontier` joins its grid run's eval curve to the longer runs' final
losses, and :func:`tokens_by_budget` reads from it, linearly in log tokens, the tokens ce
needs to reach a model's final loss: the paper's "the same quality with 1/3 of the data",
measured, not bounded.

Paired by seed: :func:`paired_by_seed` compares two rows' final losses seed by seed (a seed
fixes the data order of both and the initialisation of the parameters they share), which
tells a real difference from the spread of seeds that a mean +- std across seeds mixes in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from cyb_jax import metrics_writer

EVAL_LOSS = "eval/nll_mix"  # the mix protocol: step 0 for ce, step K for pause_ce


def tokens_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
  """Training tokens at which an eval curve first reaches ``target`` (linear interpolation).

  Args:
    curve: ``(tokens, eval loss)`` points sorted by tokens.
    target: the eval loss to reach.

  Returns:
    The tokens, or None if the curve never gets to ``target``.
  """
  prev = None
  for tokens, loss in curve:
    if loss <= target:
      if prev is None or prev[1] == loss:
        return float(tokens)
      t0, l0 = prev
      return float(t0 + (l0 - target) / (l0 - loss) * (tokens - t0))
    prev = (tokens, loss)
  return None


def data_efficiency(curve_a: Sequence[tuple[float, float]], curve_b: Sequence[tuple[float, float]]) -> dict[str, Any]:
  """How many times more training tokens the worse of two models needs (docs/design.md section 5).

  Returns a dict with ``better`` ("a" or "b"), ``target_loss`` (the better model's final
  eval loss), ``tokens_better`` and ``tokens_worse`` (tokens to reach it; None if the
  worse never did), ``ratio`` and ``lower_bound`` (True when the worse never reached the
  target, so the ratio is its total tokens over the better's, a lower bound).
  """
  a_final, b_final = curve_a[-1][1], curve_b[-1][1]
  better, worse, name = (curve_a, curve_b, "a") if a_final <= b_final else (curve_b, curve_a, "b")
  target = better[-1][1]
  tokens_better = tokens_to_reach(better, target)
  tokens_worse = tokens_to_reach(worse, target)
  lower_bound = tokens_worse is None
  ratio = (worse[-1][0] if lower_bound else tokens_worse) / tokens_better
  # The same comparison at the worse model's final loss, which the better one reaches.
  at_worse = tokens_to_reach(better, worse[-1][1])
  ratio_at_worse = worse[-1][0] / at_worse if at_worse else float("nan")
  return {
    "better": name,
    "target_loss": target,
    "tokens_better": tokens_better,
    "tokens_worse": tokens_worse,
    "ratio": ratio,
    "lower_bound": lower_bound,
    "worse_final_loss": worse[-1][1],
    "ratio_at_worse_final": ratio_at_worse,
  }


def token_ratio(baseline: Sequence[tuple[float, float]], model: Sequence[tuple[float, float]]) -> float:
  """Tokens the baseline needs over tokens the model needs, to the worse one's final loss.

  ``T_baseline(L) / T_model(L)`` at ``L`` = the larger of the two final eval losses, which
  both curves reach: > 1 when the model learns faster (the paper's "a CYB model needs 1/3 of
  the data" is a ratio of 3 against ``ce``), < 1 when the baseline does. NaN if a curve never
  reaches that loss (a non-monotone curve).
  """
  target = max(baseline[-1][1], model[-1][1])
  t_baseline, t_model = tokens_to_reach(baseline, target), tokens_to_reach(model, target)
  return t_baseline / t_model if t_baseline and t_model else float("nan")


def budget_frontier(
  curve: Sequence[tuple[float, float]], finals: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
  """Eval loss against tokens of one loss trained for several budgets.

  Args:
    curve: ``(tokens, eval loss)`` of the run at the grid's budget (its last point is its final).
    finals: ``(tokens, final eval loss)`` of longer runs, each with its own schedule.

  Returns:
    ``curve``, then the finals, sorted by tokens.

  Raises:
    ValueError: if a final is not beyond the curve's last tokens.
  """
  end = curve[-1][0]
  inside = [t for t, _ in finals if t <= end]
  if inside:
    raise ValueError(f"finals at tokens {inside} are within the grid run's curve (up to {end}): give longer runs only.")
  return list(curve) + sorted((float(t), float(loss)) for t, loss in finals)


def tokens_by_budget(frontier: Sequence[tuple[float, float]], tokens: float, loss: float) -> dict[str, Any]:
  """How many times the tokens of a model a baseline needs, across its budgets, for the same loss.

  The baseline's tokens to reach ``loss`` are read from its frontier by linear interpolation
  in log tokens, between the first point at or below ``loss`` and the one before it: a loss
  falling by equal steps per doubling of the data, as across budgets it roughly does (linear
  in tokens would lie above a convex frontier and overstate the tokens). Below the grid run's
  final loss the frontier is that run's own eval curve, whose points are mid-schedule, so
  for a model worse than the baseline's grid run the tokens are, if anything, overstated.

  Args:
    frontier: the baseline's :func:`budget_frontier`.
    tokens: the model's training tokens.
    loss: the model's final eval loss.

  Returns:
    ``tokens_baseline`` (tokens to reach ``loss``; None if no budget did), ``ratio``
    (``tokens_baseline / tokens``; with None, the largest budget's tokens over ``tokens``)
    and ``lower_bound`` (True in that case: the ratio is at least this).
  """
  in_log = tokens_to_reach([(math.log(t), value) for t, value in frontier], loss)
  needed = None if in_log is None else math.exp(in_log)
  return {
    "tokens_baseline": needed,
    "ratio": (frontier[-1][0] if needed is None else needed) / tokens,
    "lower_bound": needed is None,
  }


def paired_by_seed(losses_a: Mapping[int, float], losses_b: Mapping[int, float]) -> dict[str, Any]:
  """Final losses of two rows compared seed by seed, over the seeds both ran.

  Args:
    losses_a, losses_b: seed -> final eval loss of each row.

  Returns:
    ``seeds`` (sorted, common to both), ``differences`` (``a - b`` per seed: < 0 where a is
    better), ``mean`` (their mean; NaN without common seeds) and ``a_better`` (how many seeds
    have ``a < b``).
  """
  seeds = sorted(set(losses_a) & set(losses_b))
  differences = [float(losses_a[s] - losses_b[s]) for s in seeds]
  return {
    "seeds": seeds,
    "differences": differences,
    "mean": float(np.mean(differences)) if differences else math.nan,
    "a_better": sum(d < 0 for d in differences),
  }


def mean_curve(workdirs: Sequence[str], key: str = EVAL_LOSS) -> list[tuple[float, float]]:
  """Seed-averaged eval curve ``(tokens, loss)`` over the steps all runs evaluated."""
  per_run = []
  for workdir in workdirs:
    _, evals = metrics_writer.train_and_eval_rows(workdir)
    per_run.append({r["step"]: (r["train_tokens"], r[key]) for r in evals})
  steps = sorted(set.intersection(*(set(r) for r in per_run)))
  return [(float(np.mean([r[s][0] for r in per_run])), float(np.mean([r[s][1] for r in per_run]))) for s in steps]
