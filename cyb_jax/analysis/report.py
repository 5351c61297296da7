"""What a person reads after a run: ``report.md`` with PNG plots and pause tables.

:func:`write_report` (called by the trainer at the end of a run) writes ``<workdir>/report.md``
and ``<workdir>/plots/*.png``:

* the run (loss, K, layout, model size, steps and training tokens);
* the final evaluation by the protocols of docs/design.md section 5 (mix and threshold NLL, accuracy,
  pauses and compute per token = 1 + pauses), recomputed from the parameters on the eval set,
  beside the no-pause (step 0) and all-pauses (step K) readouts;
* per step k: halting probability, share of threshold answers, accuracy and NLL at k;
* the eval curve from ``metrics.jsonl`` (loss and pauses against training tokens);
* where the model pauses: per difficulty level (synthetic data) or per token (text).

:func:`write_analysis` writes the same pause statistics as ``pause_stats.json``, a markdown
table and plots into any folder (``launch/analyze.py``). The tables are
:mod:`cyb_jax.analysis.tables`, the plots :mod:`cyb_jax.analysis.plots`; pause-marked samples
(``launch/generate.py``) are :mod:`cyb_jax.model.samples`.

Everything here runs on the host of process 0; the model evaluation is
:func:`cyb_jax.analysis.evaluation.eval_set_stats` over the process-local eval batches, reduced by
:func:`cyb_jax.analysis.evaluation.summarize` (the trainer's reduction).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from cyb_jax import analysis
from cyb_jax import files
from cyb_jax import losses
from cyb_jax import metrics_writer
from cyb_jax.analysis import evaluation
from cyb_jax.analysis import plots
from cyb_jax.analysis import tables as tables
from cyb_jax.model import ModelConfig

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
METRICS_FILE = metrics_writer.METRICS_FILE
STATS_JSON = "pause_stats.json"
STATS_MD = "pause_stats.md"


@dataclasses.dataclass(frozen=True)
class PauseAnalysis:
  """Everything computed from a model on an eval set (see :func:`analyze`).

  summary: :func:`evaluation.summarize` figures; difficulty: per-level stats (labelled data) or
  None; tokens: per-token stats.
  """

  summary: dict[str, Any]
  difficulty: analysis.DifficultyStats | None
  tokens: analysis.TokenStats


def analyze(evaluated: evaluation.EvalSetStats, info, *, min_count: int = 20, top: int = 10) -> PauseAnalysis:
  """An eval set's per-position outcomes reduced to protocol figures, levels and tokens.

  Args:
    evaluated: :func:`cyb_jax.analysis.evaluation.eval_set_stats` of the model on its eval set
      (``difficulty`` enables the per-level table).
    info: the run's ``DataInfo`` (``piece`` names tokens, ``difficulty_names`` names levels).
    min_count, top: selection of the most/least pausing tokens.
  """
  difficulty = None
  if evaluated.difficulty is not None and info.difficulty_names:
    difficulty = analysis.by_difficulty(evaluated.stats, evaluated.difficulty, info.difficulty_names)
  tokens = analysis.by_token(
    evaluated.stats, evaluated.inputs, evaluated.targets, piece=info.piece, min_count=min_count, top=top
  )
  return PauseAnalysis(summary=evaluation.summarize(evaluated.stats), difficulty=difficulty, tokens=tokens)


def _num_params(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def write_report(
  workdir: str,
  *,
  model_cfg: ModelConfig,
  params,
  eval_batches: Sequence[Mapping[str, Any]],
  info,
  loss_name: str,
  protocol: evaluation.Protocol,
  step: int | None = None,
  vocab_chunk: int | None = None,
  min_count: int = 20,
  top: int = 10,
) -> str:
  """Writes ``<workdir>/report.md`` and ``<workdir>/plots/*.png``; returns the report's path.

  Args:
    workdir: the run folder (``metrics.jsonl`` is read from it if present).
    model_cfg, params: the final model.
    eval_batches: the run's eval set (may be empty: the report then has no final evaluation).
    info: the run's ``DataInfo``.
    loss_name: ``config.loss.name`` (for the reader).
    protocol: the evaluation protocol (:func:`cyb_jax.analysis.evaluation.protocol_of`).
    step: the parameters' training step (default: the last step in ``metrics.jsonl``).
    vocab_chunk: evaluate from hidden states in vocabulary chunks of this width (None: full logits).
    min_count, top: selection of the most/least pausing tokens (text data).

  Plots: ``eval_curve.png`` (if ``metrics.jsonl`` has rows), ``halting.png`` and
  ``pauses_by_difficulty.png`` (labelled data) or ``pauses_by_token.png`` (if there is an eval set).
  """
  losses.check_protocol(protocol.tau, protocol.fixed_step, model_cfg.num_steps)
  train_rows, eval_rows = metrics_writer.train_and_eval_rows(workdir)
  if step is None:
    step = max((r["step"] for r in train_rows + eval_rows), default=None)
  tokens_seen = max(
    (r["train_tokens"] for r in train_rows + eval_rows if r.get("train_tokens") is not None), default=None
  )
  workdir = os.fspath(files.resolve(workdir))
  plots_dir = os.path.join(workdir, PLOTS_DIR)
  result = None
  if eval_batches:
    evaluated = evaluation.eval_set_stats(model_cfg, params, eval_batches, protocol, vocab_chunk=vocab_chunk)
    result = analyze(evaluated, info, min_count=min_count, top=top)

  k_max = model_cfg.max_pauses
  md = [f"# Run report: `{files.resolve(workdir).name}`", ""]
  run_rows = [
    ["loss", tables.loss_description(loss_name, protocol)],
    ["max pauses K", str(k_max)],
    ["pause layout", f"`{model_cfg.pause_layout}`" + ("" if k_max else " (unused: K = 0)")],
    [
      "model",
      f"{model_cfg.num_layers} layers, d_model {model_cfg.d_model}, {model_cfg.num_heads} heads, "
      f"mlp {model_cfg.mlp_dim}, V = {model_cfg.vocab_size} (+ DK), {tables.count(_num_params(params))} "
      "parameters",
    ],
    ["training steps", "n/a" if step is None else str(step)],
    ["training tokens seen", tables.count(tokens_seen)],
    [
      "eval set",
      (
        f"{len(eval_batches)} batches, {result.summary['num_positions']} scored positions"
        if eval_batches
        else "none (data.eval_batches = 0)"
      ),
    ],
    ["threshold tau", f"{protocol.tau:g}"],
  ]
  md += [tables.md_table(["", ""], run_rows), ""]

  md += ["## Final evaluation", ""]
  if result is None:
    md += ["_No eval set (data.eval_batches = 0): nothing to evaluate._", ""]
  else:
    md += [
      "Protocols of docs/design.md section 5, recomputed from the final parameters on the "
      "eval set. Compute per token = 1 + pauses.",
      "",
      tables.protocol_table_md(result.summary, protocol),
      "",
      f"Accuracy gained by pausing (threshold halting vs step 0): "
      f"**{tables.signed(result.summary['accuracy_gain'])}**.",
      "",
    ]
    md += ["### Per step", "", tables.per_step_table_md(result.summary), ""]
    halting = plots.plot_halting(os.path.join(plots_dir, "halting.png"), result.summary, protocol)
    md += [f"![halting distribution]({files.relative(halting, workdir)})", ""]

  md += ["## Training curve", ""]
  curve = plots.plot_curves(os.path.join(plots_dir, "eval_curve.png"), train_rows, eval_rows)
  if curve is None:
    md += [f"_{METRICS_FILE} has no rows._", ""]
  else:
    md += [f"![loss and pauses against training tokens]({files.relative(curve, workdir)})", ""]
    md += [tables.curve_table_md(eval_rows) if eval_rows else f"_{METRICS_FILE} has no eval rows._", ""]

  if result is not None and result.difficulty is not None:
    md += [
      "## Pauses by difficulty",
      "",
      "Threshold pauses k* per difficulty level of the predicted token; a model that pauses "
      "where it helps pauses more on harder levels and gains accuracy there.",
      "",
      tables.difficulty_table_md(result.difficulty),
      "",
    ]
    plot = plots.plot_difficulty(os.path.join(plots_dir, "pauses_by_difficulty.png"), result.difficulty)
    md += [f"![pauses by difficulty]({files.relative(plot, workdir)})", ""]
  elif result is not None:
    md += [
      "## Pauses by token",
      "",
      'Threshold pauses k* grouped by the token just read ("pause after X") and by the token being predicted.',
      "",
      tables.token_tables_md(result.tokens),
      "",
    ]
    plot = plots.plot_tokens(os.path.join(plots_dir, "pauses_by_token.png"), result.tokens)
    md += [f"![pauses by token]({files.relative(plot, workdir)})", ""]

  path = os.path.join(workdir, REPORT_FILE)
  files.write_text(path, "\n".join(md))
  logging.info("Wrote %s", path)
  return path


# --------------------------------------------------------------------------------------------
# launch/analyze.py
# --------------------------------------------------------------------------------------------


def write_analysis(
  out_dir: str,
  *,
  evaluated: evaluation.EvalSetStats,
  info,
  protocol: evaluation.Protocol,
  min_count: int = 20,
  top: int = 20,
  run: Mapping[str, Any] | None = None,
) -> str:
  """Pause statistics of a model over its eval set (``evaluated``), written to ``out_dir``.

  Writes ``pause_stats.json`` (the summary, the per-level table for labelled data and the
  per-token tables: every token plus the most/least pausing lists; NaN as null),
  ``pause_stats.md`` and ``plots/halting.png``, ``plots/pauses_by_token.png`` and, for
  labelled data, ``plots/pauses_by_difficulty.png``.

  Args:
    out_dir: output folder (created).
    evaluated: :func:`cyb_jax.analysis.evaluation.eval_set_stats` of the model under ``protocol``.
    run: facts to record under ``"run"`` in the JSON (workdir, step, loss, ...).
    Others as in :func:`analyze`.

  Returns:
    The markdown tables, for printing.
  """
  result = analyze(evaluated, info, min_count=min_count, top=top)
  out_dir = os.fspath(files.resolve(out_dir))
  plots_dir = os.path.join(out_dir, PLOTS_DIR)
  record = {
    "run": dict(run or {}),
    "tau": protocol.tau,
    "fixed_step": protocol.fixed_step,
    "summary": result.summary,
    "by_difficulty": result.difficulty,
    "by_token": result.tokens,
  }
  files.write_json(os.path.join(out_dir, STATS_JSON), tables.jsonable(record), indent=1)
  md = ["# Pause statistics", ""]
  if run:
    md += [", ".join(f"{k}: {v}" for k, v in run.items()), ""]
  md += [tables.protocol_table_md(result.summary, protocol), "", tables.per_step_table_md(result.summary), ""]
  plots.plot_halting(os.path.join(plots_dir, "halting.png"), result.summary, protocol)
  if result.difficulty is not None:
    md += ["## By difficulty", "", tables.difficulty_table_md(result.difficulty), ""]
    plots.plot_difficulty(os.path.join(plots_dir, "pauses_by_difficulty.png"), result.difficulty)
  md += ["## By token", "", tables.token_tables_md(result.tokens), ""]
  plots.plot_tokens(os.path.join(plots_dir, "pauses_by_token.png"), result.tokens)
  text = "\n".join(md)
  files.write_text(os.path.join(out_dir, STATS_MD), text)
  return text
