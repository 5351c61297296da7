"""The results of the CYB comparison: figures per (loss, K) over seeds, ``results.md`` and plots.

:func:`summarise_runs` reduces the finished runs to the results dict (final figures, data
efficiency, ce across its budgets, pause analyses, sweeps); :func:`write_results_md` and :func:`write_plots` write
``results.md`` and ``plots/*.png``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cyb_jax import analysis
from cyb_jax import components
from cyb_jax import efficiency as efficiency_lib
from cyb_jax import evaluation
from cyb_jax import experiment_plan as plan_lib
from cyb_jax import experiment_plots
from cyb_jax import files
from cyb_jax import losses
from cyb_jax import metrics_writer


def _final(workdir: str) -> dict[str, Any]:
  _, evals = metrics_writer.train_and_eval_rows(workdir)
  return evals[-1]


def _mean_known(values: Sequence[float]) -> float:
  """The mean of the values that are not NaN (NaN if none is)."""
  known = [v for v in values if not math.isnan(v)]
  return float(np.mean(known)) if known else float("nan")


def _summarise(values: Sequence[float]) -> dict[str, float]:
  arr = np.asarray(values, np.float64)
  return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def _pause_analysis(workdir: str, tau: float) -> dict[str, Any]:
  """Per-difficulty (synthetic) or per-token (text) pause statistics of a run's eval set."""
  run = components.load_run(workdir)
  protocol = run.protocol._replace(tau=tau)
  stats = evaluation.eval_set_stats(
    run.model_cfg, run.params, run.data.eval_batches, protocol, vocab_chunk=components.vocab_chunk(run.config)
  )
  out: dict[str, Any] = {"summary": evaluation.summarize(stats.stats)}
  if stats.difficulty is not None:
    diff = analysis.by_difficulty(stats.stats, stats.difficulty, run.data.info.difficulty_names)
    out["difficulty"] = {
      "levels": [dataclasses.asdict(g) for g in diff.levels],
      "spearman_levels": diff.spearman_levels,
      "spearman_levels_expected": diff.spearman_levels_expected,
      "spearman_positions": diff.spearman_positions,
    }
  else:
    tok = analysis.by_token(stats.stats, stats.inputs, stats.targets, piece=run.data.info.piece, min_count=20, top=12)
    out["tokens"] = {
      k: [dataclasses.asdict(g) for g in getattr(tok, k)]
      for k in ("most_after", "least_after", "most_before", "least_before", "ambiguous_after")
    }
    out["tokens"]["spearman_ambiguity"] = tok.spearman_ambiguity
  return out


def _sweep_entry(
  config, spec: plan_lib.RunSpec, workdir: str, seconds: float | None, pauses: dict[str, Any] | None
) -> dict[str, Any]:
  """Final figures (and, on the synthetic task, pause placement) of one run of a sweep table.

  ``pauses`` is the run's ``_pause_analysis`` (None when pauses are not analysed).
  """
  f = _final(workdir)
  field = spec.sweep or ""
  entry = {
    "name": spec.name,
    "loss": spec.loss,
    "K": spec.max_pauses,
    "field": field,
    "value": spec.overrides[0][1] if spec.overrides else None,
    "nll_mix": f[efficiency_lib.EVAL_LOSS],
    "expected_pauses": f["eval/expected_pauses"],
    "threshold_accuracy": f["eval/threshold_accuracy"],
    "threshold_pauses": f["eval/threshold_pauses"],
    "seconds": seconds,
  }
  difficulty = (pauses or {}).get("difficulty")
  if difficulty:
    entry["spearman_levels"] = difficulty["spearman_levels"]
    entry["mean_pauses_by_level"] = {g["name"]: g["mean_pauses"] for g in difficulty["levels"]}
  return entry


def summarise_runs(
  config, specs: Sequence[plan_lib.RunSpec], out_dir: str, timings: dict[str, float]
) -> dict[str, Any]:
  """Final figures per (loss, K) over seeds (and per longer ce budget), data-efficiency ratios,
  ce across its budgets, pause analyses."""
  workdir = lambda spec: os.path.join(out_dir, "runs", spec.name)
  main = [s for s in specs if not s.sweep]
  groups: dict[str, list[plan_lib.RunSpec]] = {}
  for s in main:
    groups.setdefault(s.group, []).append(s)
  rows = {}
  for key, members in groups.items():
    finals = [_final(workdir(s)) for s in members]
    rows[key] = {
      "loss": members[0].loss,
      "K": members[0].max_pauses,
      "steps": plan_lib.num_train_steps(config, members[0]),
      "budget": members[0].budget,  # None: a row of the grid; else a longer ce run's steps
      "seeds": [s.seed for s in members],
      "train_tokens": float(np.mean([f["train_tokens"] for f in finals])),
      "seconds": _mean_known([timings.get(s.name, float("nan")) for s in members]),
      **{
        name: _summarise([f[f"eval/{name}"] for f in finals])
        for name in (
          "nll_mix",
          "expected_pauses",
          "compute_mix",
          "threshold_nll",
          "threshold_accuracy",
          "threshold_pauses",
          "compute_threshold",
        )
      },
      "nll_mix_per_seed": [f[efficiency_lib.EVAL_LOSS] for f in finals],  # aligned with "seeds"
      "curve": efficiency_lib.mean_curve([workdir(s) for s in members]),
    }
  efficiency, paired = {}, {}
  for key, row in rows.items():
    if row["loss"] not in plan_lib.CYB_LOSSES:
      continue
    for base in ("ce", f"pause_ce_K{row['K']}"):
      if base in rows:
        eff = efficiency_lib.data_efficiency(rows[key]["curve"], rows[base]["curve"])
        eff["better"] = key if eff["better"] == "a" else base
        efficiency[f"{key} vs {base}"] = eff
        paired[f"{key} vs {base}"] = efficiency_lib.paired_by_seed(
          dict(zip(row["seeds"], row["nll_mix_per_seed"])),
          dict(zip(rows[base]["seeds"], rows[base]["nll_mix_per_seed"])),
        )
  by_budget = _ce_by_budget(rows)
  analysed = {}  # run name -> _pause_analysis, each run analysed once

  def pause_analysis(spec: plan_lib.RunSpec) -> dict[str, Any] | None:
    if not config.analyse_pauses:
      return None
    if spec.name not in analysed:
      analysed[spec.name] = _pause_analysis(workdir(spec), config.run.eval.tau)
    return analysed[spec.name]

  pauses = (
    {key: pause_analysis(members[0]) for key, members in groups.items() if members[0].budget is None}
    if config.analyse_pauses
    else {}
  )
  sweeps = []
  if any(s.sweep for s in specs):
    # Each swept (loss, K) is listed beside its main run of the same seed (the default
    # value), and ce / pause_ce of that seed, so one-seed figures compare like with like.
    seed = config.seeds[0]
    swept = {(s.loss, s.max_pauses) for s in specs if s.sweep}
    swept_k = {k for _, k in swept}
    listed = [
      s
      for s in main
      if s.seed == seed
      and s.budget is None
      and (s.loss == "ce" or (s.loss == "pause_ce" and s.max_pauses in swept_k) or (s.loss, s.max_pauses) in swept)
    ] + [s for s in specs if s.sweep]
    order = lambda s: (
      s.max_pauses,
      list(losses.LOSSES).index(s.loss),
      bool(s.sweep),
      s.overrides[0][1] if s.overrides else 0,
    )
    baselines = {
      (s.loss, s.max_pauses): efficiency_lib.mean_curve([workdir(s)])
      for s in listed
      if s.loss in ("ce", "pause_ce") and not s.sweep
    }
    for s in sorted(listed, key=order):
      entry = _sweep_entry(config, s, workdir(s), timings.get(s.name), pause_analysis(s))
      if s.loss in plan_lib.CYB_LOSSES:
        # Tokens pause_ce (or ce) needs to reach this run's final loss over this run's
        # tokens to reach theirs: the "ratio there" column of the data-efficiency table.
        curve = efficiency_lib.mean_curve([workdir(s)])
        for base, key in (("ce", ("ce", 0)), ("pause_ce", ("pause_ce", s.max_pauses))):
          if key in baselines:
            eff = efficiency_lib.data_efficiency(curve, baselines[key])
            entry[f"vs_{base}"] = (
              eff["ratio_at_worse_final"] if eff["better"] == "a" else 1.0 / eff["ratio_at_worse_final"]
            )
      sweeps.append(entry)
  return {
    "preset": config.name,
    "data": config.run.data.source,
    "from_ce": bool(config.from_ce),
    "rows": rows,
    "efficiency": efficiency,
    "paired": paired,
    "ce_budgets": by_budget,
    "pauses": pauses,
    "sweeps": sweeps,
  }


def _ce_by_budget(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """ce at every budget, and the tokens it needs to reach each other row's final loss.

  Only budgets finished for every seed of the grid's ce count (a mean over fewer seeds would
  not be comparable); the others are listed in ``partial``.

  Returns ``{}`` without longer ce runs, else ``points`` (one per ce budget: ``row``,
  ``steps``, ``tokens``, ``nll_mix``), ``frontier`` (:func:`efficiency.budget_frontier`),
  ``vs`` (per non-ce row: its ``final_loss`` and ``tokens``, and
  :func:`efficiency.tokens_by_budget`) and ``partial`` (rows of budgets left out).
  """
  if "ce" not in rows:
    return {}
  ce_rows = sorted(((k, r) for k, r in rows.items() if r["loss"] == "ce"), key=lambda kv: kv[1]["steps"])
  partial = [k for k, r in ce_rows if sorted(r["seeds"]) != sorted(rows["ce"]["seeds"])]
  ce_rows = [(k, r) for k, r in ce_rows if k not in partial]
  if len(ce_rows) < 2:
    return {}
  longer = [(r["train_tokens"], r["nll_mix"]["mean"]) for _, r in ce_rows if r["budget"] is not None]
  frontier = efficiency_lib.budget_frontier(rows["ce"]["curve"], longer)
  return {
    "points": [
      {"row": k, "steps": r["steps"], "tokens": r["train_tokens"], "nll_mix": r["nll_mix"]} for k, r in ce_rows
    ],
    "frontier": frontier,
    "vs": {
      k: {
        "final_loss": r["nll_mix"]["mean"],
        "tokens": r["train_tokens"],
        **efficiency_lib.tokens_by_budget(frontier, r["train_tokens"], r["nll_mix"]["mean"]),
      }
      for k, r in rows.items()
      if r["loss"] != "ce"
    },
    "partial": partial,
  }


# ------------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------------


def _two_digits(value: float | None) -> str:
  return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def _pm(stat: dict[str, float], digits: int = 3) -> str:
  if stat["n"] > 1:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
  return f"{stat['mean']:.{digits}f}"


def _names(what: str, names: Sequence[str]) -> str:
  """``what: `a`, `b`.``: a sentence listing row or run names."""
  return f"{what}: " + ", ".join(f"`{n}`" for n in names) + "."


def _paired_lines(paired: dict[str, Any]) -> list[str]:
  """The "paired by seed" section of results.md (none with one seed per row)."""
  paired = {pair: p for pair, p in paired.items() if len(p["seeds"]) > 1}
  if not paired:
    return []
  lines = [
    "",
    "### Paired by seed",
    "",
    "Final eval nll_mix of each CYB row minus its baseline's, seed by seed (same seed: same "
    "initialisation and data order); < 0: the CYB row is better.",
    "",
    "| pair | seeds | mean difference | per seed | CYB better in |",
    "|---|---|---|---|---|",
  ]
  for pair, p in paired.items():
    per_seed = " / ".join(f"{d:+.3f}" for d in p["differences"])
    lines.append(
      f"| {pair} | {len(p['seeds'])} | {p['mean']:+.3f} | {per_seed} | {p['a_better']} of {len(p['seeds'])} |"
    )
  return lines


def _ce_budget_lines(by_budget: dict[str, Any]) -> list[str]:
  """The "ce by budget" section of results.md (none without longer ce runs)."""
  if not by_budget:
    return []
  lines = [
    "",
    "## ce by budget",
    "",
    "ce trained for longer budgets, each run with its own learning-rate schedule, seeds as the "
    "grid's. Drop: how much its final loss falls per doubling of the budget (near 0: ce's loss "
    "has flattened).",
    "",
    "| ce row | steps | train tokens | seeds | final nll_mix | drop per doubling |",
    "|---|---|---|---|---|---|",
  ]
  prev = None
  for p in by_budget["points"]:
    drop = (
      "-"
      if prev is None
      else f"{(prev['nll_mix']['mean'] - p['nll_mix']['mean']) / math.log2(p['tokens'] / prev['tokens']):.4f}"
    )
    lines.append(
      f"| {p['row']} | {p['steps']} | {p['tokens']:,.0f} | {p['nll_mix']['n']} | {_pm(p['nll_mix'])} | {drop} |"
    )
    prev = p
  lines += [
    "",
    "Tokens ce needs, across its budgets (its grid run's eval curve, then the longer runs' final "
    "losses, linear in log tokens), to reach each model's final loss, over that model's tokens "
    "(`>=`: no budget got there). The paper's target for CYB: 3.",
    "",
    "| run | final nll_mix | train tokens | ce tokens to that loss | ratio |",
    "|---|---|---|---|---|",
  ]
  for key, v in by_budget["vs"].items():
    needed = "never" if v["tokens_baseline"] is None else f"{v['tokens_baseline']:,.0f}"
    lines.append(
      f"| {key} | {v['final_loss']:.4f} | {v['tokens']:,.0f} | {needed} | "
      f"{'>= ' if v['lower_bound'] else ''}{v['ratio']:.2f} |"
    )
  if by_budget.get("partial"):
    lines += ["", _names("Left out (not finished for every seed of `ce`)", by_budget["partial"])]
  return lines


def write_results_md(config, results: dict[str, Any], out_dir: str) -> str:
  """``results.md`` with the tables and ``plots/*.png``; returns its path."""
  plots = experiment_plots.write_plots(results, out_dir)
  lines = [
    f"# CYB comparison ({results['preset']})",
    "",
    f"Data: `{results['data']}`; "
    f"{'fine-tuned from a shared ce checkpoint' if results['from_ce'] else 'from scratch'};"
    f" eval: mix protocol (`nll_mix`; step 0 for ce, step K for pause_ce) and "
    f"threshold(tau={config.run.eval.tau}). Mean ± std over seeds.",
    "",
    "| run | seeds | eval nll_mix | E[pauses] | compute/token | threshold nll | "
    "threshold acc | threshold pauses | train tokens | s/run |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for key, r in results["rows"].items():
    lines.append(
      f"| {key} | {len(r['seeds'])} | {_pm(r['nll_mix'])} | {_pm(r['expected_pauses'], 2)} | "
      f"{_pm(r['compute_mix'], 2)} | {_pm(r['threshold_nll'])} | "
      f"{_pm(r['threshold_accuracy'])} | {_pm(r['threshold_pauses'], 2)} | "
      f"{r['train_tokens']:,.0f} | "
      f"{'n/a' if math.isnan(r['seconds']) else format(r['seconds'], '.0f')} |"
    )
  lines += [
    "",
    "## Data efficiency",
    "",
    "Tokens the worse model needs to reach the better model's final eval loss, divided "
    "by the better model's tokens (seed-averaged curves; `>=` when it never got there, "
    "a lower bound at equal budgets). The last column makes the same comparison at the "
    "worse model's final loss, which the better one reaches.",
    "",
    "| pair | better | better's final loss | ratio | worse's final loss | ratio there |",
    "|---|---|---|---|---|---|",
  ]
  for pair, e in results["efficiency"].items():
    ratio = f"{'>= ' if e['lower_bound'] else ''}{e['ratio']:.2f}"
    lines.append(
      f"| {pair} | {e['better']} | {e['target_loss']:.4f} | {ratio} | "
      f"{e['worse_final_loss']:.4f} | {e['ratio_at_worse_final']:.2f} |"
    )
  lines += _paired_lines(results.get("paired") or {})
  lines += _ce_budget_lines(results.get("ce_budgets") or {})
  for key, p in results["pauses"].items():
    if "difficulty" in p:
      d = p["difficulty"]
      lines += [
        "",
        f"### Pauses by difficulty: {key}",
        "",
        f"Spearman(level, mean pauses) = {d['spearman_levels']:.2f}; "
        f"with E[pauses]: {d['spearman_levels_expected']:.2f}.",
        "",
        "| level | count | mean pauses | E[pauses] | acc step 0 | acc | gain |",
        "|---|---|---|---|---|---|---|",
      ]
      for g in d["levels"]:
        lines.append(
          f"| {g['name']} | {g['count']} | {g['mean_pauses']:.2f} | "
          f"{g['mean_expected_pauses']:.2f} | {g['accuracy_step0']:.3f} | "
          f"{g['accuracy']:.3f} | {g['gain']:+.3f} |"
        )
    elif "tokens" in p:
      lines += [
        "",
        f"### Tokens that pause most / least (after reading them): {key}",
        "",
        "| most | mean pauses | std | count | least | mean pauses | std | count |",
        "|---|---|---|---|---|---|---|---|",
      ]
      for a, b in zip(p["tokens"]["most_after"], p["tokens"]["least_after"]):
        lines.append(
          f"| `{a['name']}` | {a['mean_pauses']:.2f} | {a['std_pauses']:.2f} | "
          f"{a['count']} | `{b['name']}` | {b['mean_pauses']:.2f} | "
          f"{b['std_pauses']:.2f} | {b['count']} |"
        )
      if p["tokens"].get("ambiguous_after"):
        lines += [
          "",
          f"Most ambiguous contexts of {key} (highest step-0 NLL of the next "
          f"token); Spearman(step-0 NLL, mean pauses) over frequent tokens = "
          f"{_two_digits(p['tokens']['spearman_ambiguity'])}.",
          "",
          "| after | step-0 NLL | mean pauses | std | count | accuracy gain |",
          "|---|---|---|---|---|---|",
        ]
        for g in p["tokens"]["ambiguous_after"]:
          lines.append(
            f"| `{g['name']}` | {g['nll_step0']:.2f} | {g['mean_pauses']:.2f} | "
            f"{g['std_pauses']:.2f} | {g['count']} | {g['gain']:+.3f} |"
          )
  if results["sweeps"]:
    levels = next((list(e["mean_pauses_by_level"]) for e in results["sweeps"] if "mean_pauses_by_level" in e), [])
    lines += [
      "",
      "## Sweeps (one seed)",
      "",
      "Each swept run beside the main runs of the same seed (value `default`: the "
      "run config's own). Threshold pauses k* by level"
      + (f" ({' / '.join(levels)})" if levels else "")
      + ". Tokens ratio: the "
      "baseline's tokens over the CYB run's, each to reach the worse one's final "
      "loss (> 1: the CYB run needs fewer tokens).",
      "",
      "| run | field | value | eval nll_mix | E[pauses] | threshold acc | k* | "
      "Spearman(level, k*) | k* by level | tokens ratio vs ce | vs pause_ce |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["sweeps"]:
      by_level = " / ".join(f"{v:.2f}" for v in e.get("mean_pauses_by_level", {}).values())
      lines.append(
        f"| {e['name']} | {e['field'] or '-'} | "
        f"{'default' if e['value'] is None else e['value']} | {e['nll_mix']:.4f} | "
        f"{e['expected_pauses']:.2f} | {e['threshold_accuracy']:.3f} | "
        f"{e['threshold_pauses']:.2f} | "
        f"{_two_digits(e.get('spearman_levels'))} | "
        f"{by_level or 'n/a'} | {_two_digits(e.get('vs_ce'))} | {_two_digits(e.get('vs_pause_ce'))} |"
      )
  if results.get("missing_runs"):
    lines += ["", _names("Runs not finished (left out of every table)", results["missing_runs"])]
  lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots]
  path = os.path.join(out_dir, "results.md")
  files.write_text(path, "\n".join(lines) + "\n")
  return path
