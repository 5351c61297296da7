"""The report's PNG plots: training curves, halting distribution, pauses by difficulty and by token.

Used by :mod:`cyb_jax.analysis.report`. Plots use matplotlib's object API on an Agg canvas (no pyplot
state, no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cyb_jax import analysis
from cyb_jax import files
from cyb_jax.analysis import tables as tables
from cyb_jax.analysis.evaluation import Protocol

# --------------------------------------------------------------------------------------------
# Plots (matplotlib object API on an Agg canvas).
# --------------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def save(fig: Figure, path: str) -> str:
  files.save_figure(fig, path)
  return path


def plot_curves(
  path: str, train_rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]]
) -> str | None:
  """Loss and pauses against training tokens; None (no file) when there are no rows at all."""
  if not train_rows and not eval_rows:
    return None
  fig = new_figure(10, 4)
  ax_loss, ax_pause = fig.subplots(1, 2)

  def series(rows, key):
    pts = [
      (r["train_tokens"], r[key]) for r in rows if key in r and r.get("train_tokens") is not None and r[key] is not None
    ]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None

  train_style = dict(color="0.6", lw=1)
  mix_style = dict(color="C0", marker="o", ms=3)
  threshold_style = dict(color="C1", marker="s", ms=3, ls="--")
  for ax, curves in (
    (
      ax_loss,
      (
        (train_rows, "train/nll_mix", train_style, "train mix NLL"),
        (eval_rows, "eval/nll_mix", mix_style, "eval mix NLL"),
        (eval_rows, "eval/threshold_nll", threshold_style, "eval threshold NLL"),
      ),
    ),
    (
      ax_pause,
      (
        (train_rows, "train/expected_pauses", train_style, "train E[pauses]"),
        (eval_rows, "eval/expected_pauses", mix_style, "eval E[pauses]"),
        (eval_rows, "eval/threshold_pauses", threshold_style, "eval threshold pauses"),
      ),
    ),
  ):
    for rows, key, style, label in curves:
      s = series(rows, key)
      if s:
        ax.plot(*s, label=label, **style)
  ax_loss.set(
    xlabel="training tokens",
    ylabel="NLL (nats/token)",
    title="Loss" if eval_rows else "Loss (no eval rows: training only)",
  )
  ax_pause.set(xlabel="training tokens", ylabel="pauses per token", title="Pauses")
  ax_pause.set_ylim(bottom=0)
  for ax in (ax_loss, ax_pause):
    ax.grid(alpha=0.3)
    if ax.get_lines():
      ax.legend(fontsize=8)
  return save(fig, path)


def plot_halting(path: str, summary: Mapping[str, Any], protocol: Protocol) -> str:
  """Halting distribution per step (own halting and threshold), then accuracy and NLL per step."""
  num_steps = len(summary["halt_probs"])
  k_S = np.arange(num_steps)
  fig = new_figure(13, 4)
  ax_halt, ax_acc, ax_nll = fig.subplots(1, 3)
  if protocol.fixed_step is None:
    width = 0.4
    ax_halt.bar(k_S - width / 2, summary["halt_probs"], width, label="own halting: mean P(halt at k)")
    ax_halt.bar(
      k_S + width / 2,
      summary["threshold_step_probs"],
      width,
      label=f"threshold tau={protocol.tau:g}: share answering at k",
    )
    ax_halt.legend(fontsize=8, loc="upper right")
    title = "Halting distribution"
  else:
    ax_halt.bar(k_S, summary["threshold_step_probs"], 0.6, color="0.5")
    title = f"Halting: fixed at step {protocol.fixed_step}"
  ax_halt.set(xlabel="step k (pauses taken)", ylabel="probability", title=title, xticks=k_S, ylim=(0, 1.3))
  ax_acc.plot(k_S, summary["accuracy_per_step"], "o-", color="C2")
  ax_acc.set(xlabel="step k", ylabel="accuracy", xticks=k_S, title="Accuracy of the answer at step k")
  ax_nll.plot(k_S, summary["nll_per_step"], "s-", color="C3")
  ax_nll.set(xlabel="step k", ylabel="NLL (nats/token)", xticks=k_S, title="NLL of the answer at step k")
  for ax in (ax_halt, ax_acc, ax_nll):
    ax.grid(alpha=0.3)
  return save(fig, path)


def plot_difficulty(path: str, stats: analysis.DifficultyStats) -> str:
  """Mean pauses and accuracy (step 0 vs at k*) per difficulty level."""
  levels = stats.levels
  x = np.arange(len(levels))
  names = [f"{g.key}: {g.name}\n(n={g.count})" for g in levels]
  fig = new_figure(11, 4)
  ax_p, ax_a = fig.subplots(1, 2)
  width = 0.4
  ax_p.bar(
    x - width / 2,
    [g.mean_pauses for g in levels],
    width,
    yerr=[g.std_pauses for g in levels],
    capsize=3,
    label="threshold pauses k* (± std)",
  )
  ax_p.bar(x + width / 2, [g.mean_expected_pauses for g in levels], width, label="E[pauses], own halting")
  ax_p.set(
    ylabel="pauses per token",
    xticks=x,
    title=(
      f"Pauses by difficulty (Spearman with level: k* {tables.num(stats.spearman_levels, 2)}, "
      f"E[pauses] {tables.num(stats.spearman_levels_expected, 2)})"
    ),
  )
  ax_p.set_xticklabels(names, fontsize=8)
  tops = [max(g.mean_pauses + g.std_pauses, g.mean_expected_pauses) for g in levels if g.count]
  ax_p.set_ylim(0, 1.35 * max(tops) if tops and max(tops) > 0 else 1.0)  # headroom for the legend
  ax_p.legend(fontsize=8, loc="upper left")
  ax_a.bar(x - width / 2, [g.accuracy_step0 for g in levels], width, label="accuracy at step 0")
  ax_a.bar(x + width / 2, [g.accuracy for g in levels], width, label="accuracy at k*")
  ax_a.set(ylabel="accuracy", xticks=x, ylim=(0, 1.3), title="Accuracy: no pause vs threshold halting")
  ax_a.set_xticklabels(names, fontsize=8)
  ax_a.legend(fontsize=8, loc="upper left")
  for ax in (ax_p, ax_a):
    ax.grid(axis="y", alpha=0.3)
  return save(fig, path)


def plot_tokens(path: str, stats: analysis.TokenStats) -> str:
  """Horizontal bars: the most pausing tokens after reading them and before predicting them."""
  fig = new_figure(11, max(3.0, 0.28 * max(len(stats.most_after), len(stats.most_before), 1) + 1.2))
  for ax, groups, title in zip(
    fig.subplots(1, 2),
    (stats.most_after, stats.most_before),
    ("Most pausing after reading", "Most pausing before predicting"),
  ):
    groups = list(reversed(groups))  # largest on top
    y = np.arange(len(groups))
    height = 0.4
    ax.barh(
      y + height / 2,
      [g.mean_pauses for g in groups],
      height,
      xerr=[g.std_pauses for g in groups],
      capsize=2,
      color="C0",
    )
    ax.barh(y - height / 2, [g.mean_expected_pauses for g in groups], height, color="C1")
    ax.set_yticks(y, [f"{g.name!r} (n={g.count})" for g in groups], fontsize=8)
    ax.set(xlabel="pauses per token", title=f"{title} (n ≥ {stats.min_count})")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    if not groups:
      ax.text(0.5, 0.5, "no token frequent enough", ha="center", va="center", transform=ax.transAxes)
    elif max(max(g.mean_pauses, g.mean_expected_pauses) for g in groups) < 1e-3:
      ax.text(0.5, 0.5, "(almost) no pauses at any of these tokens", ha="center", va="center", transform=ax.transAxes)
  legend = [Patch(color="C0", label="threshold pauses k* (± std)"), Patch(color="C1", label="E[pauses], own halting")]
  fig.legend(handles=legend, loc="outside lower center", ncols=2, fontsize=8)
  return save(fig, path)
