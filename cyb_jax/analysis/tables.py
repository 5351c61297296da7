"""Markdown for the reports: number formatting, tables of protocols, steps, levels, tokens, curves.

Pure text helpers used by :mod:`cyb_jax.analysis.report` (``report.md``, ``pause_stats.md``) and
:mod:`cyb_jax.analysis.plots` (numbers in plot titles).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

from cyb_jax import analysis
from cyb_jax.analysis.evaluation import Protocol

_MAX_CURVE_ROWS = 12  # eval rows listed in report.md (evenly thinned, last always kept)


# --------------------------------------------------------------------------------------------
# Formatting helpers.
# --------------------------------------------------------------------------------------------


def num(x: Any, digits: int = 3, *, sign: bool = False) -> str:
  """A float with ``digits`` decimals (``n/a`` for None/NaN); a non-zero value that would
  print as zero is shown in scientific notation instead, so that 0.000 always means 0."""
  if x is None or not math.isfinite(float(x)):
    return "n/a"
  x = float(x)
  plus = "+" if sign else ""
  if x != 0 and abs(x) < 0.5 * 10**-digits:
    return f"{x:{plus}.1e}"
  return f"{x:{plus}.{digits}f}"


def signed(x: Any, digits: int = 3) -> str:
  return num(x, digits, sign=True)


def count(n: float | None) -> str:
  """1234567 -> ``1.23M``."""
  if n is None:
    return "n/a"
  n = float(n)
  for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{suffix}"
  return f"{n:.0f}"


def md_code(text: str) -> str:
  """``text`` as inline code that survives a markdown table (pipes and backticks escaped)."""
  text = text.replace("|", "\\|")
  fence = "``" if "`" in text else "`"
  pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
  return f"{fence}{pad}{text}{pad}{fence}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def loss_description(loss_name: str, protocol: Protocol) -> str:
  """The loss and how its model answers (``protocol.fixed_step``: the step it always reads)."""
  if protocol.fixed_step is None:
    return f"`{loss_name}` (the model decides when to answer)"
  step = protocol.fixed_step
  return f"`{loss_name}` (fixed: always answers at step {step}, i.e. {step} pauses per token)"


def _thin(rows: Sequence[dict], limit: int) -> list[dict]:
  """At most ``limit`` rows, evenly spaced, first and last kept."""
  if len(rows) <= limit:
    return list(rows)
  idx = np.unique(np.round(np.linspace(0, len(rows) - 1, limit)).astype(int))
  return [rows[i] for i in idx]


def jsonable(x: Any) -> Any:
  """Plain JSON values: NaN/inf become None, NumPy scalars/arrays plain numbers/lists."""
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return jsonable(dataclasses.asdict(x))
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (np.integer, np.bool_)):
    return x.item()
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  return x


# --------------------------------------------------------------------------------------------
# Markdown sections.
# --------------------------------------------------------------------------------------------


def protocol_table_md(summary: Mapping[str, Any], protocol: Protocol) -> str:
  """The docs/design.md section 5 figures as a markdown table, with step-0 and step-K reference rows."""
  num_steps = len(summary["halt_probs"])
  k_max = num_steps - 1
  nll_S, acc_S = summary["nll_per_step"], summary["accuracy_per_step"]
  if protocol.fixed_step is None:
    mix_name, thr_name = "mix (own halting)", f"threshold (tau = {protocol.tau:g})"
  else:
    step = protocol.fixed_step
    mix_name, thr_name = f"mix (fixed step {step})", f"threshold (fixed step {step})"
  rows = [
    [mix_name, num(summary["nll_mix"]), "–", num(summary["expected_pauses"]), num(summary["compute_mix"])],
    [
      thr_name,
      num(summary["threshold_nll"]),
      num(summary["threshold_accuracy"]),
      num(summary["threshold_pauses"]),
      num(summary["compute_threshold"]),
    ],
    ["step 0 (never pause)", num(nll_S[0]), num(acc_S[0]), "0", "1"],
  ]
  if k_max > 0:
    rows.append([f"step K (always {k_max} pauses)", num(nll_S[-1]), num(acc_S[-1]), str(k_max), str(k_max + 1)])
  return md_table(["protocol", "NLL (nats/token)", "accuracy", "pauses/token", "compute/token"], rows)


def per_step_table_md(summary: Mapping[str, Any]) -> str:
  """Per step k: mean halting probability, share of threshold answers, accuracy and NLL at k."""
  rows = [
    [
      str(k),
      num(summary["halt_probs"][k]),
      num(summary["threshold_step_probs"][k]),
      num(summary["accuracy_per_step"][k]),
      num(summary["nll_per_step"][k]),
    ]
    for k in range(len(summary["halt_probs"]))
  ]
  return md_table(
    ["step k", "P(halt at k), own halting", "share answering at k, threshold", "accuracy at k", "NLL at k"], rows
  )


def difficulty_table_md(stats: analysis.DifficultyStats) -> str:
  """One row per difficulty level, then the rank correlations."""
  rows = [
    [
      str(g.key),
      g.name,
      str(g.count),
      num(g.mean_pauses),
      num(g.pause_rate),
      num(g.std_pauses),
      num(g.mean_expected_pauses),
      num(g.accuracy_step0),
      num(g.accuracy),
      signed(g.gain),
    ]
    for g in stats.levels
  ]
  table = md_table(
    [
      "level",
      "name",
      "positions",
      "mean pauses k*",
      "pause rate",
      "std k*",
      "E[pauses]",
      "accuracy step 0",
      "accuracy at k*",
      "gain",
    ],
    rows,
  )
  undefined = (
    "; n/a = undefined, the pauses are the same everywhere"
    if any(math.isnan(x) for x in (stats.spearman_levels, stats.spearman_levels_expected, stats.spearman_positions))
    else ""
  )
  return (
    f"{table}\n\nSpearman rank correlation with the level, over levels: mean k* "
    f"**{num(stats.spearman_levels)}**, mean E[pauses] {num(stats.spearman_levels_expected)}; "
    f"over single positions, k*: {num(stats.spearman_positions)}{undefined}."
  )


def group_columns(*, accuracies: bool = False) -> list[str]:
  """The column names of :func:`group_cells`."""
  head = ["positions", "mean pauses k*", "pause rate", "std k*", "E[pauses]"]
  return head + (["accuracy step 0", "accuracy at k*", "gain"] if accuracies else ["accuracy gain"])


def group_cells(g: analysis.GroupStats, *, accuracies: bool = False) -> list[str]:
  """One group's pause figures as table cells (:func:`group_columns`): its positions, mean
  k*, pause rate, std k*, mean E[pauses], with ``accuracies`` the accuracy at step 0 and at
  k*, and the accuracy gain."""
  cells = [str(g.count), num(g.mean_pauses), num(g.pause_rate), num(g.std_pauses), num(g.mean_expected_pauses)]
  return cells + ([num(g.accuracy_step0), num(g.accuracy)] if accuracies else []) + [signed(g.gain)]


def _token_rows(groups: Sequence[analysis.GroupStats]) -> list[list[str]]:
  return [[md_code(g.name), str(g.key), *group_cells(g)] for g in groups]


def token_tables_md(stats: analysis.TokenStats) -> str:
  """Most/least pausing tokens, keyed by the token read and by the token predicted."""
  header = ["token", "id", *group_columns()]
  parts = []
  for title, groups in (
    ("Most pausing after reading the token", stats.most_after),
    ("Least pausing after reading the token", stats.least_after),
    ("Most pausing before predicting the token", stats.most_before),
    ("Least pausing before predicting the token", stats.least_before),
  ):
    body = (
      md_table(header, _token_rows(groups))
      if groups
      else (f"_No token occurs at {stats.min_count} or more positions._")
    )
    parts.append(f"**{title}** (tokens with at least {stats.min_count} positions)\n\n{body}")
  if stats.ambiguous_after:
    parts.append(
      f"**Most ambiguous contexts**: tokens after which the next token is hardest to "
      f"predict at step 0 (mean -log c_0); std k* shows whether the model pauses after "
      f"them in some contexts and not others. Spearman(step-0 NLL, mean k*) over tokens "
      f"with at least {stats.min_count} positions: {num(stats.spearman_ambiguity)}.\n\n"
      + md_table(
        header + ["step-0 NLL"],
        [row + [num(g.nll_step0)] for row, g in zip(_token_rows(stats.ambiguous_after), stats.ambiguous_after)],
      )
    )
  return "\n\n".join(parts)


def curve_table_md(eval_rows: Sequence[Mapping[str, Any]]) -> str:
  """The eval curve (thinned to a dozen rows)."""
  rows = [
    [
      str(r["step"]),
      count(r.get("train_tokens")),
      num(r.get("eval/nll_mix")),
      num(r.get("eval/expected_pauses")),
      num(r.get("eval/threshold_nll")),
      num(r.get("eval/accuracy")),
      num(r.get("eval/threshold_pauses")),
    ]
    for r in _thin(eval_rows, _MAX_CURVE_ROWS)
  ]
  return md_table(
    ["step", "train tokens", "mix NLL", "E[pauses]", "threshold NLL", "accuracy", "threshold pauses"], rows
  )
