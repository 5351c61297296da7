"""What a person reads after a run: ``report.md`` with PNG plots, pause tables, pause-marked samples.

:func:`write_report` (called by the trainer at the end of a run) writes ``<workdir>/report.md``
and ``<workdir>/plots/*.png``:

* the run (loss, K, layout, model size, steps and training tokens);
* the final evaluation by the protocols of DESIGN section 5 (mix and threshold NLL, accuracy,
  pauses and compute per token = 1 + pauses), recomputed from the parameters on the eval set,
  beside the no-pause (step 0) and all-pauses (step K) readouts;
* per step k: halting probability, share of threshold answers, accuracy and NLL at k;
* the eval curve from ``metrics.jsonl`` (loss and pauses against training tokens);
* where the model pauses: per difficulty level (synthetic data) or per token (text).

:func:`write_analysis` writes the same pause statistics as ``pause_stats.json``, a markdown
table and plots into any folder (``launch/analyze.py``); :func:`sample_with_pauses` decodes
from a prompt and shows each pause inline (``launch/generate.py``).

Plots use matplotlib's object API on an Agg canvas (no pyplot state, no display needed).
Everything here runs on the host of process 0; the model evaluation is
:func:`cyb_jax.analysis.eval_set_stats` over the process-local eval batches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cyb_jax import analysis
from cyb_jax import decode
from cyb_jax.model import ModelConfig

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
METRICS_FILE = "metrics.jsonl"
STATS_JSON = "pause_stats.json"
STATS_MD = "pause_stats.md"
PAUSE_MARK = "·"  # one per pause in rendered samples

_MAX_CURVE_ROWS = 12  # eval rows listed in report.md (evenly thinned, last always kept)


# --------------------------------------------------------------------------------------------
# metrics.jsonl
# --------------------------------------------------------------------------------------------


def read_metrics(workdir: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """``(train_rows, eval_rows)`` of ``<workdir>/metrics.jsonl``, each sorted by step.

  A train row has a ``train/nll_mix`` or ``train/loss`` key, an eval row an ``eval/nll_mix``
  key (a row may be both). A missing file gives two empty lists; lines that are not JSON
  objects (e.g. a line cut short by a crash) are skipped with a warning.
  """
  path = os.path.join(workdir, METRICS_FILE)
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          logging.warning("%s:%d is not JSON; skipped.", path, line_no)
          continue
        if isinstance(row, dict) and "step" in row:
          rows.append(row)
        else:
          logging.warning("%s:%d is not a metrics row with a 'step'; skipped.", path, line_no)
  rows.sort(key=lambda r: r["step"])
  train = [r for r in rows if "train/nll_mix" in r or "train/loss" in r]
  evals = [r for r in rows if "eval/nll_mix" in r]
  return train, evals


# --------------------------------------------------------------------------------------------
# Formatting helpers.
# --------------------------------------------------------------------------------------------


def _num(x: Any, digits: int = 3, *, sign: bool = False) -> str:
  """A float with ``digits`` decimals (``n/a`` for None/NaN); a non-zero value that would
  print as zero is shown in scientific notation instead, so that 0.000 always means 0."""
  if x is None or not math.isfinite(float(x)):
    return "n/a"
  x = float(x)
  plus = "+" if sign else ""
  if x != 0 and abs(x) < 0.5 * 10**-digits:
    return f"{x:{plus}.1e}"
  return f"{x:{plus}.{digits}f}"


def _signed(x: Any, digits: int = 3) -> str:
  return _num(x, digits, sign=True)


def _count(n: float | None) -> str:
  """1234567 -> ``1.23M``."""
  if n is None:
    return "n/a"
  n = float(n)
  for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{suffix}"
  return f"{n:.0f}"


def _md_code(text: str) -> str:
  """``text`` as inline code that survives a markdown table (pipes and backticks escaped)."""
  text = text.replace("|", "\\|")
  fence = "``" if "`" in text else "`"
  pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
  return f"{fence}{pad}{text}{pad}{fence}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _loss_description(loss_name: str, fixed_step: int | None, num_steps: int) -> str:
  if fixed_step is None:
    return f"`{loss_name}` (the model decides when to answer)"
  step = fixed_step % num_steps
  return f"`{loss_name}` (fixed: always answers at step {step}, i.e. {step} pauses per token)"


def _thin(rows: Sequence[dict], limit: int) -> list[dict]:
  """At most ``limit`` rows, evenly spaced, first and last kept."""
  if len(rows) <= limit:
    return list(rows)
  idx = np.unique(np.round(np.linspace(0, len(rows) - 1, limit)).astype(int))
  return [rows[i] for i in idx]


def _jsonable(x: Any) -> Any:
  """Plain JSON values: NaN/inf become None, NumPy scalars/arrays plain numbers/lists."""
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return _jsonable(dataclasses.asdict(x))
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.integer, np.bool_)):
    return x.item()
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  return x


# --------------------------------------------------------------------------------------------
# Markdown sections.
# --------------------------------------------------------------------------------------------


def protocol_table_md(summary: Mapping[str, Any], *, tau: float, fixed_step: int | None) -> str:
  """The DESIGN section 5 figures as a markdown table, with step-0 and step-K reference rows."""
  num_steps = len(summary["halt_probs"])
  k_max = num_steps - 1
  nll_S, acc_S = summary["nll_per_step"], summary["accuracy_per_step"]
  if fixed_step is None:
    mix_name, thr_name = "mix (own halting)", f"threshold (tau = {tau:g})"
  else:
    step = fixed_step % num_steps
    mix_name, thr_name = f"mix (fixed step {step})", f"threshold (fixed step {step})"
  rows = [
      [mix_name, _num(summary["nll_mix"]), "–", _num(summary["expected_pauses"]),
       _num(summary["compute_mix"])],
      [thr_name, _num(summary["threshold_nll"]), _num(summary["threshold_accuracy"]),
       _num(summary["threshold_pauses"]), _num(summary["compute_threshold"])],
      ["step 0 (never pause)", _num(nll_S[0]), _num(acc_S[0]), "0", "1"],
  ]
  if k_max > 0:
    rows.append([f"step K (always {k_max} pauses)", _num(nll_S[-1]), _num(acc_S[-1]), str(k_max),
                 str(k_max + 1)])
  return _table(["protocol", "NLL (nats/token)", "accuracy", "pauses/token", "compute/token"], rows)


def per_step_table_md(summary: Mapping[str, Any]) -> str:
  """Per step k: mean halting probability, share of threshold answers, accuracy and NLL at k."""
  rows = [[str(k), _num(summary["halt_probs"][k]), _num(summary["threshold_step_probs"][k]),
           _num(summary["accuracy_per_step"][k]), _num(summary["nll_per_step"][k])]
          for k in range(len(summary["halt_probs"]))]
  return _table(["step k", "P(halt at k), own halting", "share answering at k, threshold",
                 "accuracy at k", "NLL at k"], rows)


def difficulty_table_md(stats: analysis.DifficultyStats) -> str:
  """One row per difficulty level, then the rank correlations."""
  rows = [[str(g.key), g.name, str(g.count), _num(g.mean_pauses), _num(g.pause_rate), _num(g.std_pauses),
           _num(g.mean_expected_pauses), _num(g.accuracy_step0), _num(g.accuracy), _signed(g.gain)]
          for g in stats.levels]
  table = _table(["level", "name", "positions", "mean pauses k*", "pause rate", "std k*", "E[pauses]",
                  "accuracy step 0", "accuracy at k*", "gain"], rows)
  undefined = "; n/a = undefined, the pauses are the same everywhere" if any(
      math.isnan(x) for x in (stats.spearman_levels, stats.spearman_levels_expected,
                              stats.spearman_positions)) else ""
  return (f"{table}\n\nSpearman rank correlation with the level, over levels: mean k* "
          f"**{_num(stats.spearman_levels)}**, mean E[pauses] {_num(stats.spearman_levels_expected)}; "
          f"over single positions, k*: {_num(stats.spearman_positions)}{undefined}.")


def _token_rows(groups: Sequence[analysis.GroupStats]) -> list[list[str]]:
  return [[_md_code(g.name), str(g.key), str(g.count), _num(g.mean_pauses), _num(g.pause_rate),
           _num(g.std_pauses), _num(g.mean_expected_pauses), _signed(g.gain)] for g in groups]


def token_tables_md(stats: analysis.TokenStats) -> str:
  """Most/least pausing tokens, keyed by the token read and by the token predicted."""
  header = ["token", "id", "positions", "mean pauses k*", "pause rate", "std k*", "E[pauses]", "accuracy gain"]
  parts = []
  for title, groups in (("Most pausing after reading the token", stats.most_after),
                        ("Least pausing after reading the token", stats.least_after),
                        ("Most pausing before predicting the token", stats.most_before),
                        ("Least pausing before predicting the token", stats.least_before)):
    body = _table(header, _token_rows(groups)) if groups else (
        f"_No token occurs at {stats.min_count} or more positions._")
    parts.append(f"**{title}** (tokens with at least {stats.min_count} positions)\n\n{body}")
  if stats.ambiguous_after:
    parts.append(
        f"**Most ambiguous contexts**: tokens after which the next token is hardest to "
        f"predict at step 0 (mean -log c_0); std k* shows whether the model pauses after "
        f"them in some contexts and not others. Spearman(step-0 NLL, mean k*) over tokens "
        f"with at least {stats.min_count} positions: {_num(stats.spearman_ambiguity)}.\n\n" +
        _table(header + ["step-0 NLL"],
               [row + [_num(g.nll_step0)] for row, g in
                zip(_token_rows(stats.ambiguous_after), stats.ambiguous_after)]))
  return "\n\n".join(parts)


def curve_table_md(eval_rows: Sequence[Mapping[str, Any]]) -> str:
  """The eval curve (thinned to a dozen rows)."""
  rows = [[str(r["step"]), _count(r.get("train_tokens")), _num(r.get("eval/nll_mix")),
           _num(r.get("eval/expected_pauses")), _num(r.get("eval/threshold_nll")),
           _num(r.get("eval/accuracy")), _num(r.get("eval/threshold_pauses"))]
          for r in _thin(eval_rows, _MAX_CURVE_ROWS)]
  return _table(["step", "train tokens", "mix NLL", "E[pauses]", "threshold NLL", "accuracy",
                 "threshold pauses"], rows)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib object API on an Agg canvas).
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path)
  return path


def plot_curves(path: str, train_rows: Sequence[Mapping[str, Any]],
                eval_rows: Sequence[Mapping[str, Any]]) -> str | None:
  """Loss and pauses against training tokens; None (no file) when there are no rows at all."""
  if not train_rows and not eval_rows:
    return None
  fig = _new_figure(10, 4)
  ax_loss, ax_pause = fig.subplots(1, 2)

  def series(rows, key):
    pts = [(r["train_tokens"], r[key]) for r in rows
           if key in r and r.get("train_tokens") is not None and r[key] is not None]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None

  train_style = dict(color="0.6", lw=1)
  mix_style = dict(color="C0", marker="o", ms=3)
  threshold_style = dict(color="C1", marker="s", ms=3, ls="--")
  for ax, curves in (
      (ax_loss, ((train_rows, "train/nll_mix", train_style, "train mix NLL"),
                 (eval_rows, "eval/nll_mix", mix_style, "eval mix NLL"),
                 (eval_rows, "eval/threshold_nll", threshold_style, "eval threshold NLL"))),
      (ax_pause, ((train_rows, "train/expected_pauses", train_style, "train E[pauses]"),
                  (eval_rows, "eval/expected_pauses", mix_style, "eval E[pauses]"),
                  (eval_rows, "eval/threshold_pauses", threshold_style, "eval threshold pauses")))):
    for rows, key, style, label in curves:
      s = series(rows, key)
      if s:
        ax.plot(*s, label=label, **style)
  ax_loss.set(xlabel="training tokens", ylabel="NLL (nats/token)",
              title="Loss" if eval_rows else "Loss (no eval rows: training only)")
  ax_pause.set(xlabel="training tokens", ylabel="pauses per token", title="Pauses")
  ax_pause.set_ylim(bottom=0)
  for ax in (ax_loss, ax_pause):
    ax.grid(alpha=0.3)
    if ax.get_lines():
      ax.legend(fontsize=8)
  return _save(fig, path)


def plot_halting(path: str, summary: Mapping[str, Any], *, tau: float, fixed_step: int | None) -> str:
  """Halting distribution per step (own halting and threshold), then accuracy and NLL per step."""
  num_steps = len(summary["halt_probs"])
  k_S = np.arange(num_steps)
  fig = _new_figure(13, 4)
  ax_halt, ax_acc, ax_nll = fig.subplots(1, 3)
  if fixed_step is None:
    width = 0.4
    ax_halt.bar(k_S - width / 2, summary["halt_probs"], width, label="own halting: mean P(halt at k)")
    ax_halt.bar(k_S + width / 2, summary["threshold_step_probs"], width,
                label=f"threshold tau={tau:g}: share answering at k")
    ax_halt.legend(fontsize=8, loc="upper right")
    title = "Halting distribution"
  else:
    ax_halt.bar(k_S, summary["threshold_step_probs"], 0.6, color="0.5")
    title = f"Halting: fixed at step {fixed_step % num_steps}"
  ax_halt.set(xlabel="step k (pauses taken)", ylabel="probability", title=title, xticks=k_S, ylim=(0, 1.3))
  ax_acc.plot(k_S, summary["accuracy_per_step"], "o-", color="C2")
  ax_acc.set(xlabel="step k", ylabel="accuracy", xticks=k_S, title="Accuracy of the answer at step k")
  ax_nll.plot(k_S, summary["nll_per_step"], "s-", color="C3")
  ax_nll.set(xlabel="step k", ylabel="NLL (nats/token)", xticks=k_S, title="NLL of the answer at step k")
  for ax in (ax_halt, ax_acc, ax_nll):
    ax.grid(alpha=0.3)
  return _save(fig, path)


def plot_difficulty(path: str, stats: analysis.DifficultyStats) -> str:
  """Mean pauses and accuracy (step 0 vs at k*) per difficulty level."""
  levels = stats.levels
  x = np.arange(len(levels))
  names = [f"{g.key}: {g.name}\n(n={g.count})" for g in levels]
  fig = _new_figure(11, 4)
  ax_p, ax_a = fig.subplots(1, 2)
  width = 0.4
  ax_p.bar(x - width / 2, [g.mean_pauses for g in levels], width,
           yerr=[g.std_pauses for g in levels], capsize=3, label="threshold pauses k* (± std)")
  ax_p.bar(x + width / 2, [g.mean_expected_pauses for g in levels], width, label="E[pauses], own halting")
  ax_p.set(ylabel="pauses per token", xticks=x,
           title=(f"Pauses by difficulty (Spearman with level: k* {_num(stats.spearman_levels, 2)}, "
                  f"E[pauses] {_num(stats.spearman_levels_expected, 2)})"))
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
  return _save(fig, path)


def plot_tokens(path: str, stats: analysis.TokenStats) -> str:
  """Horizontal bars: the most pausing tokens after reading them and before predicting them."""
  fig = _new_figure(11, max(3.0, 0.28 * max(len(stats.most_after), len(stats.most_before), 1) + 1.2))
  for ax, groups, title in zip(fig.subplots(1, 2), (stats.most_after, stats.most_before),
                               ("Most pausing after reading", "Most pausing before predicting")):
    groups = list(reversed(groups))  # largest on top
    y = np.arange(len(groups))
    height = 0.4
    ax.barh(y + height / 2, [g.mean_pauses for g in groups], height, xerr=[g.std_pauses for g in groups],
            capsize=2, color="C0")
    ax.barh(y - height / 2, [g.mean_expected_pauses for g in groups], height, color="C1")
    ax.set_yticks(y, [f"{g.name!r} (n={g.count})" for g in groups], fontsize=8)
    ax.set(xlabel="pauses per token", title=f"{title} (n ≥ {stats.min_count})")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    if not groups:
      ax.text(0.5, 0.5, "no token frequent enough", ha="center", va="center", transform=ax.transAxes)
    elif max(max(g.mean_pauses, g.mean_expected_pauses) for g in groups) < 1e-3:
      ax.text(0.5, 0.5, "(almost) no pauses at any of these tokens", ha="center", va="center",
              transform=ax.transAxes)
  legend = [Patch(color="C0", label="threshold pauses k* (± std)"), Patch(color="C1", label="E[pauses], own halting")]
  fig.legend(handles=legend, loc="outside lower center", ncols=2, fontsize=8)
  return _save(fig, path)


# --------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PauseAnalysis:
  """Everything computed from a model on an eval set (see :func:`analyze`).

  summary: :func:`analysis.summarize` figures; difficulty: per-level stats (labelled data) or
  None; tokens: per-token stats.
  """

  summary: dict[str, Any]
  difficulty: analysis.DifficultyStats | None
  tokens: analysis.TokenStats


def analyze(model_cfg: ModelConfig, params, eval_batches: Sequence[Mapping[str, Any]], info, *, tau: float,
            fixed_step: int | None, min_count: int = 20, top: int = 10,
            vocab_chunk: int | None = None) -> PauseAnalysis:
  """Per-position statistics over the eval set, reduced to protocol figures, levels and tokens.

  Args:
    model_cfg, params: the model.
    eval_batches: non-empty list of eval batches (``difficulty`` enables the per-level table).
    info: the run's ``DataInfo`` (``piece`` names tokens, ``difficulty_names`` names levels).
    tau, fixed_step: the threshold protocol, as in :func:`analysis.position_stats`.
    min_count, top: selection of the most/least pausing tokens.
    vocab_chunk: None or the chunk width for large vocabularies.
  """
  evaluated = analysis.eval_set_stats(model_cfg, params, eval_batches, tau, fixed_step, vocab_chunk=vocab_chunk)
  difficulty = None
  if evaluated.difficulty is not None and info.difficulty_names:
    difficulty = analysis.by_difficulty(evaluated.stats, evaluated.difficulty, info.difficulty_names)
  tokens = analysis.by_token(evaluated.stats, evaluated.inputs, evaluated.targets, piece=info.piece,
                             min_count=min_count, top=top)
  return PauseAnalysis(summary=analysis.summarize(evaluated.stats), difficulty=difficulty, tokens=tokens)


def _num_params(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def write_report(workdir: str, *, model_cfg: ModelConfig, params, eval_batches: Sequence[Mapping[str, Any]],
                 info, loss_name: str, tau: float, fixed_step: int | None, step: int | None = None,
                 vocab_chunk: int | None = None, min_count: int = 20, top: int = 10) -> str:
  """Writes ``<workdir>/report.md`` and ``<workdir>/plots/*.png``; returns the report's path.

  Args:
    workdir: the run folder (``metrics.jsonl`` is read from it if present).
    model_cfg, params: the final model.
    eval_batches: the run's eval set (may be empty: the report then shows the last eval row of
      ``metrics.jsonl`` if there is one).
    info: the run's ``DataInfo``.
    loss_name: ``config.loss.name``.
    tau: threshold of the threshold protocol.
    fixed_step: None for CYB losses, 0 for ``ce``, -1 for ``pause_ce``.
    step: the parameters' training step (default: the last step in ``metrics.jsonl``).
    vocab_chunk: evaluate from hidden states in vocabulary chunks of this width (None: full logits).
    min_count, top: selection of the most/least pausing tokens (text data).

  Plots: ``eval_curve.png`` (if ``metrics.jsonl`` has rows), ``halting.png`` and
  ``pauses_by_difficulty.png`` (labelled data) or ``pauses_by_token.png`` (if there is an eval set).
  """
  analysis.check_protocol(tau, fixed_step, model_cfg.num_steps)
  train_rows, eval_rows = read_metrics(workdir)
  if step is None:
    step = max((r["step"] for r in train_rows + eval_rows), default=None)
  tokens_seen = max((r["train_tokens"] for r in train_rows + eval_rows if r.get("train_tokens") is not None),
                    default=None)
  plots_dir = os.path.join(workdir, PLOTS_DIR)
  result = None
  if eval_batches:
    result = analyze(model_cfg, params, eval_batches, info, tau=tau, fixed_step=fixed_step,
                     min_count=min_count, top=top, vocab_chunk=vocab_chunk)
  elif eval_rows:
    row = eval_rows[-1]
    summary = {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
    if "threshold_accuracy" not in summary and "accuracy" in summary:
      summary["threshold_accuracy"] = summary["accuracy"]
    needed = ("nll_mix", "expected_pauses", "compute_mix", "threshold_nll", "threshold_accuracy",
              "threshold_pauses", "compute_threshold", "halt_probs", "accuracy_per_step", "nll_per_step",
              "threshold_step_probs")
    if all(k in summary for k in needed):
      result = PauseAnalysis(summary=summary, difficulty=None, tokens=None)

  k_max = model_cfg.max_pauses
  md = [f"# Run report: `{os.path.basename(os.path.abspath(workdir))}`", ""]
  run_rows = [
      ["loss", _loss_description(loss_name, fixed_step, model_cfg.num_steps)],
      ["max pauses K", str(k_max)],
      ["pause layout", f"`{model_cfg.pause_layout}`" + ("" if k_max else " (unused: K = 0)")],
      ["model", f"{model_cfg.num_layers} layers, d_model {model_cfg.d_model}, {model_cfg.num_heads} heads, "
                f"mlp {model_cfg.mlp_dim}, V = {model_cfg.vocab_size} (+ DK), {_count(_num_params(params))} "
                "parameters"],
      ["training steps", "n/a" if step is None else str(step)],
      ["training tokens seen", _count(tokens_seen)],
      ["eval set", (f"{len(eval_batches)} batches, {result.summary['num_positions']} scored positions"
                    if eval_batches else "none (data.eval_batches = 0)")],
      ["threshold tau", f"{tau:g}"],
  ]
  md += [_table(["", ""], run_rows), ""]

  md += ["## Final evaluation", ""]
  if result is None:
    md += ["_No eval set and no eval rows in metrics.jsonl: nothing to evaluate._", ""]
  else:
    source = ("recomputed from the final parameters on the eval set" if eval_batches else
              f"the last eval row of {METRICS_FILE} (step {eval_rows[-1]['step']})")
    md += [f"DESIGN section 5 protocols, {source}. Compute per token = 1 + pauses.", "",
           protocol_table_md(result.summary, tau=tau, fixed_step=fixed_step), ""]
    if "accuracy_gain" in result.summary:
      md += [f"Accuracy gained by pausing (threshold halting vs step 0): "
             f"**{_signed(result.summary['accuracy_gain'])}**.", ""]
    md += ["### Per step", "", per_step_table_md(result.summary), ""]
    halting = plot_halting(os.path.join(plots_dir, "halting.png"), result.summary, tau=tau, fixed_step=fixed_step)
    md += [f"![halting distribution]({os.path.relpath(halting, workdir)})", ""]

  md += ["## Training curve", ""]
  curve = plot_curves(os.path.join(plots_dir, "eval_curve.png"), train_rows, eval_rows)
  if curve is None:
    md += [f"_{METRICS_FILE} has no rows._", ""]
  else:
    md += [f"![loss and pauses against training tokens]({os.path.relpath(curve, workdir)})", ""]
    md += [curve_table_md(eval_rows) if eval_rows else f"_{METRICS_FILE} has no eval rows._", ""]

  if result is not None and result.difficulty is not None:
    md += ["## Pauses by difficulty", "",
           "Threshold pauses k* per difficulty level of the predicted token; a model that pauses "
           "where it helps pauses more on harder levels and gains accuracy there.", "",
           difficulty_table_md(result.difficulty), ""]
    plot = plot_difficulty(os.path.join(plots_dir, "pauses_by_difficulty.png"), result.difficulty)
    md += [f"![pauses by difficulty]({os.path.relpath(plot, workdir)})", ""]
  elif result is not None and result.tokens is not None:
    md += ["## Pauses by token", "",
           "Threshold pauses k* grouped by the token just read (\"pause after X\") and by the token "
           "being predicted.", "", token_tables_md(result.tokens), ""]
    plot = plot_tokens(os.path.join(plots_dir, "pauses_by_token.png"), result.tokens)
    md += [f"![pauses by token]({os.path.relpath(plot, workdir)})", ""]

  path = os.path.join(workdir, REPORT_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(md))
  os.replace(tmp, path)
  logging.info("Wrote %s", path)
  return path


# --------------------------------------------------------------------------------------------
# launch/analyze.py
# --------------------------------------------------------------------------------------------


def write_analysis(out_dir: str, *, model_cfg: ModelConfig, params, eval_batches: Sequence[Mapping[str, Any]],
                   info, tau: float, fixed_step: int | None, min_count: int = 20, top: int = 20,
                   vocab_chunk: int | None = None, run: Mapping[str, Any] | None = None) -> str:
  """Pause statistics of a model over an eval set, written to ``out_dir``.

  Writes ``pause_stats.json`` (the summary, the per-level table for labelled data and the
  per-token tables: every token plus the most/least pausing lists; NaN as null),
  ``pause_stats.md`` and ``plots/halting.png``, ``plots/pauses_by_token.png`` and, for
  labelled data, ``plots/pauses_by_difficulty.png``.

  Args:
    out_dir: output folder (created).
    run: facts to record under ``"run"`` in the JSON (workdir, step, loss, ...).
    Others as in :func:`analyze`.

  Returns:
    The markdown tables, for printing.
  """
  result = analyze(model_cfg, params, eval_batches, info, tau=tau, fixed_step=fixed_step, min_count=min_count,
                   top=top, vocab_chunk=vocab_chunk)
  os.makedirs(out_dir, exist_ok=True)
  plots_dir = os.path.join(out_dir, PLOTS_DIR)
  record = {"run": dict(run or {}), "tau": tau, "fixed_step": fixed_step, "summary": result.summary,
            "by_difficulty": result.difficulty, "by_token": result.tokens}
  with open(os.path.join(out_dir, STATS_JSON), "w") as f:
    json.dump(_jsonable(record), f, indent=1)
  md = ["# Pause statistics", ""]
  if run:
    md += [", ".join(f"{k}: {v}" for k, v in run.items()), ""]
  md += [protocol_table_md(result.summary, tau=tau, fixed_step=fixed_step), "",
         per_step_table_md(result.summary), ""]
  plot_halting(os.path.join(plots_dir, "halting.png"), result.summary, tau=tau, fixed_step=fixed_step)
  if result.difficulty is not None:
    md += ["## By difficulty", "", difficulty_table_md(result.difficulty), ""]
    plot_difficulty(os.path.join(plots_dir, "pauses_by_difficulty.png"), result.difficulty)
  md += ["## By token", "", token_tables_md(result.tokens), ""]
  plot_tokens(os.path.join(plots_dir, "pauses_by_token.png"), result.tokens)
  text = "\n".join(md)
  with open(os.path.join(out_dir, STATS_MD), "w") as f:
    f.write(text)
  return text


# --------------------------------------------------------------------------------------------
# launch/generate.py
# --------------------------------------------------------------------------------------------


def render_with_pauses(pieces: Sequence[str], pauses: Sequence[int], *, mark: str = PAUSE_MARK) -> str:
  """Text with ``mark`` repeated once per pause, placed where the pause happened.

  ``pauses[t]`` pauses were taken before emitting ``pieces[t]``, i.e. right after reading the
  previous token: ``render_with_pauses(["4", "6", ";"], [2, 0, 1]) == "··46·;"``. SentencePiece
  word starts ("▁") become spaces.
  """
  if len(pieces) != len(pauses):
    raise ValueError(f"{len(pieces)} pieces but {len(pauses)} pause counts.")
  return "".join(mark * int(p) + s.replace("▁", " ") for s, p in zip(pieces, pauses))


def sample_with_pauses(model_cfg: ModelConfig, params, info, prompt: str, *, num_samples: int = 1,
                       max_new_tokens: int = 64, halting: str = "threshold", threshold: float = 0.5,
                       temperature: float = 0.0, seed: int = 0, mark: str = PAUSE_MARK) -> str:
  """Decodes ``num_samples`` continuations of ``prompt`` and renders them with pauses inline.

  Uses :func:`cyb_jax.decode.generate` (one jitted program). Each sample is shown as
  ``[prompt]`` followed by the generated text, ``mark`` once per pause before the token it
  preceded, cut after the first end-of-document token; then its pause counts.

  Returns:
    The text to print.
  """
  prompt_P = np.asarray(info.encode(prompt), np.int32).reshape(-1)
  if prompt_P.size == 0:
    raise ValueError(f"prompt={prompt!r} encodes to no tokens; give a prompt (e.g. ';12+34=' for the "
                     "synthetic task).")
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples={num_samples!r} must be an int >= 1.")
  prompt_BxP = np.tile(prompt_P[None], (num_samples, 1))
  tokens_BxT, pauses_BxT = jax.device_get(decode.generate(
      model_cfg, params, prompt_BxP, jax.random.key(seed), max_new_tokens=max_new_tokens, halting=halting,
      threshold=threshold, temperature=temperature))
  out = [f"halting={halting} threshold={threshold:g} temperature={temperature:g} K={model_cfg.max_pauses} "
         f"({mark} = one pause)"]
  for b in range(num_samples):
    tokens_T, pauses_T = list(tokens_BxT[b]), list(pauses_BxT[b])
    if info.eos_id is not None and info.eos_id in tokens_T:
      cut = tokens_T.index(info.eos_id) + 1
      tokens_T, pauses_T = tokens_T[:cut], pauses_T[:cut]
    text = render_with_pauses([info.piece(int(t)) for t in tokens_T], pauses_T, mark=mark)
    hist = np.bincount(np.asarray(pauses_T, np.int64), minlength=model_cfg.num_steps)
    counts = ", ".join(f"{k}: {n}" for k, n in enumerate(hist))
    out += ["", f"--- sample {b + 1}: {int(np.sum(pauses_T))} pauses over {len(tokens_T)} tokens "
                f"({np.mean(pauses_T):.2f} per token; tokens by pauses taken: {counts})", f"[{prompt}]{text}"]
  return "\n".join(out)
