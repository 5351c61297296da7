r"""Where does a trained model pause? Per-token and per-difficulty pause statistics (``cyb-analyze``).

  cyb-analyze --workdir=/tmp/cyb_default
  cyb-analyze --workdir=/tmp/text_run --step=2000 --tau=0.3 --min_count=50 --top=30
  cyb-analyze --workdir=/tmp/brown_run --tagged_text=/data/brown/brown_tagged.txt

Loads the run's checkpoint (the newest unless --step), runs the model on the run's eval set,
prints the tables and writes <out>/pause_stats.json, <out>/pause_stats.md and <out>/plots/.
For a text run it also writes the word view (:mod:`cyb_jax.word_report`): <out>/words.json
and <out>/words.md (pauses by word, word-final vs word-internal pieces, contractions,
ambiguous pieces) and, with --tagged_text (the run's text with every word as word/tag),
pauses by part-of-speech tag and <out>/plots/pauses_by_tag.png.
"""

import os

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (as given to cyb-train).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_TAU = flags.DEFINE_float("tau", None, "Threshold on P(<don't know>) (default: the run's eval.tau).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <workdir>/analysis/step_<step>).")
_MIN_COUNT = flags.DEFINE_integer("min_count", 20, "Fewest positions for a token to be ranked.")
_TOP = flags.DEFINE_integer("top", 20, "Tokens listed as most / least pausing.")
_TAGGED_TEXT = flags.DEFINE_string(
    "tagged_text", None, "Text runs: the tagged copy of the run's text files (path or glob; every "
    "word as word/tag, line by line as the text), for pauses by part-of-speech tag.")


def analyze_run(workdir: str, *, step: int | None = None, tau: float | None = None,
                out: str | None = None, min_count: int = 20, top: int = 20,
                tagged_text: str | None = None) -> str:
  """Loads a run and writes its pause statistics (and, for text runs, the word view); returns the markdown."""
  from cyb_jax import components  # pylint: disable=g-import-not-at-top
  from cyb_jax import evaluation  # pylint: disable=g-import-not-at-top
  from cyb_jax import files  # pylint: disable=g-import-not-at-top
  from cyb_jax import report  # pylint: disable=g-import-not-at-top
  from cyb_jax import word_report  # pylint: disable=g-import-not-at-top
  from cyb_jax.data import config as data_config_lib  # pylint: disable=g-import-not-at-top
  run = components.load_run(workdir, step)
  is_text = data_config_lib.parse_source(run.config.data.source).kind == "text"
  if tagged_text is not None and not is_text:
    raise ValueError(f"--tagged_text={tagged_text!r} needs a text run; {workdir!r} has "
                     f"data.source={run.config.data.source!r}.")
  if is_text and run.data.eval_batches:  # reads (and checks) the tagged copy before evaluating
    docs, tagged_docs = word_report.eval_documents(run.config.data, tagged_text)
  protocol = run.protocol if tau is None else run.protocol._replace(tau=tau)
  out = out or os.path.join(workdir, "analysis", f"step_{run.step}")
  facts = {"workdir": os.fspath(files.resolve(workdir)), "step": run.step, "loss": run.config.loss.name,
           "max_pauses": run.model_cfg.max_pauses, "pause_layout": run.model_cfg.pause_layout}
  chunk = components.vocab_chunk(run.config)
  text = report.write_analysis(
      out, model_cfg=run.model_cfg, params=run.params, eval_batches=run.data.eval_batches,
      info=run.data.info, protocol=protocol, min_count=min_count, top=top, vocab_chunk=chunk, run=facts)
  written = f"{out}/pause_stats.json, {out}/pause_stats.md and {out}/plots/"
  if is_text and run.data.eval_batches:
    # A second pass over the eval set: report.write_analysis keeps its per-position stats to itself.
    evaluated = evaluation.eval_set_stats(run.model_cfg, run.params, run.data.eval_batches, protocol,
                                          vocab_chunk=chunk)
    words = word_report.run_position_words(run.data.info, docs, tagged_docs, evaluated.inputs)
    text += "\n\n" + word_report.write_word_analysis(
        out, evaluated.stats, words, run.data.info.piece, min_count=min_count, top=top,
        tagged=tagged_text is not None, run={**facts, "tagged_text": tagged_text})
    written = f"{out}/pause_stats.json, {out}/pause_stats.md, {out}/words.json, {out}/words.md and {out}/plots/"
  return f"{text}\n\nWrote {written}."


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(analyze_run(_WORKDIR.value, step=_STEP.value, tau=_TAU.value, out=_OUT.value,
                    min_count=_MIN_COUNT.value, top=_TOP.value, tagged_text=_TAGGED_TEXT.value))


def run():
  """The ``cyb-analyze`` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
