"""The plots of the CYB comparison: eval loss against tokens and compute, ce across its budgets,
pauses by difficulty or token."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cyb_jax import files
from cyb_jax.experiment import plan as plan_lib


def write_plots(results: dict[str, Any], out_dir: str) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  plot_dir = os.path.join(out_dir, "plots")
  paths = []

  def finish(fig, ax, name, *, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(os.path.join(plot_dir, name))
    fig.tight_layout()
    files.save_figure(fig, paths[-1], dpi=120)
    plt.close(fig)

  # The grid's runs; longer ce runs (ce_budgets) have their own plot.
  grid = {k: r for k, r in results["rows"].items() if r.get("budget") is None}
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for key, r in grid.items():
    tokens, loss = zip(*r["curve"])
    ax.plot(
      tokens, loss, marker="o", markersize=3, label=key, linestyle="--" if r["loss"] in plan_lib.BASELINES else "-"
    )
  finish(
    fig,
    ax,
    "eval_loss_vs_tokens.png",
    xlabel="training tokens",
    ylabel="eval loss (nll_mix)",
    title="Eval loss against training tokens (mean over seeds)",
  )

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for key, r in grid.items():
    ax.errorbar(
      r["compute_mix"]["mean"], r["nll_mix"]["mean"], yerr=r["nll_mix"]["std"], marker="o", capsize=3, label=key
    )
  finish(
    fig,
    ax,
    "loss_vs_compute.png",
    xlabel="compute per token (1 + mean pauses)",
    ylabel="final eval loss (nll_mix)",
    title="Loss against compute",
  )

  by_budget = results.get("ce_budgets")
  if by_budget:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tokens, loss = zip(*by_budget["frontier"])
    ax.plot(tokens, loss, color="k", marker="o", markersize=3, label="ce across budgets")
    for i, (key, v) in enumerate(by_budget["vs"].items()):
      ax.axhline(
        v["final_loss"], color=f"C{i}", linewidth=1, linestyle="--" if key.startswith("pause_ce") else "-", label=key
      )
    ax.set_xscale("log")
    finish(
      fig,
      ax,
      "ce_by_budget.png",
      xlabel="ce training tokens (log)",
      ylabel="eval loss (nll_mix)",
      title="ce across budgets against each model's final loss",
    )

  with_levels = {k: p["difficulty"] for k, p in results["pauses"].items() if "difficulty" in p}
  if with_levels:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(with_levels)
    for i, (key, d) in enumerate(with_levels.items()):
      names = [g["name"] for g in d["levels"]]
      values = [g["mean_expected_pauses"] for g in d["levels"]]
      ax.bar(np.arange(len(names)) + i * width, values, width, label=key)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    finish(
      fig,
      ax,
      "pauses_by_difficulty.png",
      xlabel="difficulty level",
      ylabel="mean E[pauses]",
      title="Pauses by difficulty level",
    )

  with_tokens = {
    k: p["tokens"]
    for k, p in results["pauses"].items()
    if "tokens" in p and results["rows"][k]["loss"] in plan_lib.CYB_LOSSES
  }
  if with_tokens:
    fig, axes = plt.subplots(1, len(with_tokens), figsize=(3.2 * len(with_tokens) + 1, 4.5), squeeze=False)
    for ax, (key, t) in zip(axes[0], with_tokens.items()):
      groups = t["most_after"][::-1]
      ax.barh(
        np.arange(len(groups)), [g["mean_pauses"] for g in groups], xerr=[g["std_pauses"] for g in groups], capsize=2
      )
      ax.set_yticks(np.arange(len(groups)), [repr(g["name"]) for g in groups], fontsize=7)
      ax.set_title(key, fontsize=9)
      ax.set_xlabel("mean pauses k* (bar: std)")
      ax.grid(alpha=0.3)
    fig.suptitle("Tokens after which each CYB model pauses most")
    paths.append(os.path.join(plot_dir, "pauses_by_token.png"))
    fig.tight_layout()
    files.save_figure(fig, paths[-1], dpi=120)
    plt.close(fig)
  return paths
