"""A trained run's folder analysed: its eval set evaluated once, pause_stats and the word view.

:func:`analyze_run` is what ``cyb-analyze`` does (:mod:`cyb_jax.cli.analyze` parses the flags).
"""

from __future__ import annotations

import os

from cyb_jax import files
from cyb_jax.analysis import evaluation
from cyb_jax.analysis import report
from cyb_jax.analysis import word_report
from cyb_jax.data import config as data_config_lib
from cyb_jax.training import components


def analyze_run(
  workdir: str,
  *,
  step: int | None = None,
  tau: float | None = None,
  out: str | None = None,
  min_count: int = 20,
  top: int = 20,
  tagged_text: str | None = None,
  eval_batches: int | None = None,
) -> str:
  """Loads a run and writes its pause statistics (and, for text runs, the word view); returns the markdown.

  ``eval_batches`` analyses that many batches of the run's held-out set instead of its own
  ``data.eval_batches`` (e.g. more, for rare words); the default folder is then
  ``analysis/step_<step>_eval<N>``.
  """
  run = components.load_run(workdir, step, eval_batches=eval_batches)
  is_text = data_config_lib.parse_source(run.config.data.source).kind == "text"
  if tagged_text is not None and not is_text:
    raise ValueError(
      f"--tagged_text={tagged_text!r} needs a text run; {workdir!r} has data.source={run.config.data.source!r}."
    )
  tagged_docs = None
  if tagged_text is not None and run.data.eval_batches:  # reads (and checks) the tagged copy before evaluating
    tagged_docs = word_report.tagged_eval_documents(run.data.eval_text, tagged_text)
  protocol = run.protocol if tau is None else run.protocol._replace(tau=tau)
  own = "" if eval_batches is None else f"_eval{eval_batches}"  # never overwrites the default analysis
  out = out or os.path.join(workdir, "analysis", f"step_{run.step}{own}")
  facts = {
    "workdir": os.fspath(files.resolve(workdir)),
    "step": run.step,
    "eval_batches": len(run.data.eval_batches),
    "loss": run.config.loss.name,
    "max_pauses": run.model_cfg.max_pauses,
    "pause_layout": run.model_cfg.pause_layout,
  }
  evaluated = evaluation.eval_set_stats(
    run.model_cfg, run.params, run.data.eval_batches, protocol, vocab_chunk=components.vocab_chunk(run.config)
  )
  text = report.write_analysis(
    out, evaluated=evaluated, info=run.data.info, protocol=protocol, min_count=min_count, top=top, run=facts
  )
  written = f"{out}/pause_stats.json, {out}/pause_stats.md and {out}/plots/"
  if is_text and run.data.eval_batches:
    words = word_report.run_position_words(run.data.info, run.data.eval_text.docs, tagged_docs, evaluated.inputs)
    text += "\n\n" + word_report.write_word_analysis(
      out,
      evaluated.stats,
      words,
      run.data.info.piece,
      min_count=min_count,
      top=top,
      tagged=tagged_text is not None,
      run={**facts, "tagged_text": tagged_text},
    )
    written = f"{out}/pause_stats.json, {out}/pause_stats.md, {out}/words.json, {out}/words.md and {out}/plots/"
  return f"{text}\n\nWrote {written}."
