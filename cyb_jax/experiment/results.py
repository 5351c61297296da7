"""The results of the CYB comparison: figures per (loss, K) over seeds.

:func:`summarise_runs` reduces the finished runs to the results dict (final figures, data
efficiency, ce across its budgets, pause analyses, sweeps);
:func:`cyb_jax.experiment.results_md.write_results_md` writes ``results.md`` and the plots.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cyb_jax import analysis
from cyb_jax import losses
from cyb_jax import metrics_writer
from cyb_jax.analysis import evaluation
from cyb_jax.experiment import efficiency as efficiency_lib
from cyb_jax.experiment import plan as plan_lib
from cyb_jax.training import components

# The eval figures of metrics.jsonl that every row of the main table summarises.
_EVAL_FIGURES = ("nll_mix", "expected_pauses", "compute_mix", "threshold_nll", "threshold_accuracy", "threshold_pauses")


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


def _pausing_gain(finals: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """What pausing itself buys a row, over its seeds' final evals (NaN where a run's metrics
  predate ``eval/step0_nll``).

  ``step0_nll``: the model's loss reading its own step 0 (no pause); ``pausing_gain_threshold``:
  that minus its threshold-protocol loss ``threshold_nll`` (with the pauses it takes at
  threshold); ``pausing_gain_mix``: that minus ``nll_mix`` (its pause distribution). 0 for
  ``ce`` (K = 0); > 0 when the model's pauses lower its loss. A CYB model that beats ``ce``
  but gains ~0 here owes its lead to what training the pause slots did to step 0, not to
  pausing.
  """
  step0 = [f.get("eval/step0_nll", float("nan")) for f in finals]
  return {
    "step0_nll": _summarise(step0),
    "pausing_gain_threshold": _summarise([s - f["eval/threshold_nll"] for s, f in zip(step0, finals)]),
    "pausing_gain_mix": _summarise([s - f[efficiency_lib.EVAL_LOSS] for s, f in zip(step0, finals)]),
  }


def base_row(base: dict[str, Any] | None) -> dict[str, Any] | None:
  """The base model's evaluation at step 0 (:func:`cyb_jax.experiment.base.evaluate_base`) as
  a row of the main table: one evaluation, no training tokens (None without a base)."""
  if base is None:
    return None
  one = lambda value: {"mean": float(value), "std": 0.0, "n": 1}
  names = (*_EVAL_FIGURES, "step0_nll")
  return {
    "label": "base (no fine-tuning)",
    "init_from": base.get("init_from"),
    "K": 0,
    "train_tokens": 0,
    **{name: one(base[name]) for name in names},
    "pausing_gain_threshold": one(base["step0_nll"] - base["threshold_nll"]),
    "pausing_gain_mix": one(base["step0_nll"] - base["nll_mix"]),
  }


def summarise_runs(
  config,
  specs: Sequence[plan_lib.RunSpec],
  out_dir: str,
  timings: dict[str, float],
  base_eval: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Final figures per (loss, K) over seeds (and per longer ce budget), data-efficiency ratios,
  ce across its budgets, pause analyses; ``base_eval``: the base model's step-0 evaluation of a
  fine-tuning comparison (:func:`cyb_jax.experiment.base.evaluate_base`), or None."""
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
      **{name: _summarise([f[f"eval/{name}"] for f in finals]) for name in (*_EVAL_FIGURES, "compute_threshold")},
      # What pausing itself buys: the model's own step-0 loss minus its loss with its pauses.
      **_pausing_gain(finals),
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
    "init_from": config.run.get("init_from") or None,
    "base": base_row(base_eval),
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
