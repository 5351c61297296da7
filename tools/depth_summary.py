r"""Data efficiency of every CYB row against depth, from one experiment per depth (issue 14, item 2).

  python tools/depth_summary.py --experiment=1:workdirs/brown_L1 --experiment=2:workdirs/brown_L2 \
      --experiment=4:workdirs/brown_L4 --out=docs/results/depth_brown

Each ``--experiment=DEPTH:OUT_DIR`` is a finished ``cyb-experiment`` (its ``results.json``).
For every CYB row (``{loss}_K{k}``, ``{loss}_w{W}_K{k}``) and baseline (``ce``, ``pause_ce_K{k}``)
it computes ``efficiency.token_ratio``: the baseline's tokens over the CYB model's, both to the
worse one's final eval loss, on seed-averaged curves (> 1: the CYB model needs fewer tokens;
the paper's targets are 3 against ce and 2 against pause_ce). Where the experiment also trained
ce for longer budgets (``ce_budgets``), the table adds ``efficiency.tokens_by_budget``: the tokens
ce needs across its budgets to reach the CYB model's final loss, over the CYB model's. Writes
``depth.md`` (the table, with final losses and pauses) and ``tokens_ratio_vs_depth.png`` into
``--out``.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags

from cyb_jax import files
from cyb_jax.experiment import efficiency

_EXPERIMENTS = flags.DEFINE_multi_string("experiment", [], "DEPTH:OUT_DIR of a finished experiment.")
_OUT = flags.DEFINE_string("out", None, "Folder for depth.md and the plot.")
TARGETS = {"ce": 3.0, "pause_ce": 2.0}  # the paper's token ratios
_ACROSS = "ce across budgets"  # the third panel: efficiency.tokens_by_budget, where ce_budgets ran


def _load(spec: str) -> tuple[int, dict]:
  depth, _, out_dir = spec.partition(":")
  if not depth.isdigit() or not out_dir:
    raise app.UsageError(f"--experiment={spec!r} must be DEPTH:OUT_DIR, e.g. 2:workdirs/brown_L2")
  with open(os.path.join(out_dir, "results.json")) as f:
    return int(depth), json.load(f)


def ratios(rows: dict) -> dict[str, dict[str, float]]:
  """``{cyb row: {"ce": ratio, "pause_ce": ratio}}`` of one experiment's rows."""
  out = {}
  for name, row in rows.items():
    if row["loss"] in ("ce", "pause_ce"):
      continue
    pause_ce = rows.get(f"pause_ce_K{row['K']}")
    out[name] = {
      "ce": efficiency.token_ratio(rows["ce"]["curve"], row["curve"]) if "ce" in rows else float("nan"),
      "pause_ce": efficiency.token_ratio(pause_ce["curve"], row["curve"]) if pause_ce else float("nan"),
    }
  return out


def main(argv):
  del argv
  if not _EXPERIMENTS.value or not _OUT.value:
    raise app.UsageError("give --experiment=DEPTH:OUT_DIR (one or more) and --out")
  by_depth = dict(sorted(_load(s) for s in _EXPERIMENTS.value))
  table = [
    "| depth | row | seeds | final nll_mix | E[pauses] | ce tokens / CYB tokens | pause_ce tokens / CYB tokens "
    "| ce tokens across budgets / CYB tokens |",
    "|---|---|---|---|---|---|---|---|",
  ]
  series: dict[str, dict[str, list[tuple[int, float]]]] = {}
  for depth, results in by_depth.items():
    rows = results["rows"]
    by_budget = (results.get("ce_budgets") or {}).get("vs", {})
    for name, r in ratios(rows).items():
      row = rows[name]
      budget = by_budget.get(name)
      across = f"{'>= ' if budget['lower_bound'] else ''}{budget['ratio']:.2f}" if budget else ""
      table.append(
        f"| {depth} | {name} | {len(row['seeds'])} | {row['nll_mix']['mean']:.4f} +- {row['nll_mix']['std']:.4f} | "
        f"{row['expected_pauses']['mean']:.2f} | {r['ce']:.2f} | {r['pause_ce']:.2f} | {across} |"
      )
      for baseline in TARGETS:
        series.setdefault(baseline, {}).setdefault(name, []).append((depth, r[baseline]))
      if budget:
        series.setdefault(_ACROSS, {}).setdefault(name, []).append((depth, budget["ratio"]))
    for base in ("ce", *(n for n in rows if n.startswith(("ce_steps", "pause_ce")))):
      if base in rows:
        row = rows[base]
        table.append(
          f"| {depth} | {base} | {len(row['seeds'])} | {row['nll_mix']['mean']:.4f} +- {row['nll_mix']['std']:.4f} | "
          f"{row['expected_pauses']['mean']:.2f} | | | |"
        )
  files.write_text(os.path.join(_OUT.value, "depth.md"), "\n".join(table) + "\n")

  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  panels = {**TARGETS, **({_ACROSS: TARGETS["ce"]} if _ACROSS in series else {})}
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True)
  for ax, (baseline, target) in zip(axes, panels.items()):
    for name, points in sorted(series.get(baseline, {}).items()):
      depths, values = zip(*points)
      ax.plot(depths, values, marker="o", label=name, linestyle="-" if "_w" in name else "--")
    ax.axhline(target, color="k", linewidth=0.8, linestyle=":", label=f"paper's target {target:g}")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_xticks(sorted(by_depth), [str(d) for d in sorted(by_depth)])
    ax.set_xlabel("layers")
    ax.set_title(
      "ce tokens across budgets / CYB tokens, to the CYB loss"
      if baseline == _ACROSS
      else f"{baseline} tokens / CYB tokens to the same eval loss",
      fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("token ratio (> 1: CYB needs fewer)")
  fig.tight_layout()
  files.save_figure(fig, os.path.join(_OUT.value, "tokens_ratio_vs_depth.png"), dpi=120)
  plt.close(fig)
  print("\n".join(table))


if __name__ == "__main__":
  app.run(main)
