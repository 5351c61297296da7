r"""Where does a trained model pause? Per-token and per-difficulty pause statistics (``cyb-analyze``).

  cyb-analyze --workdir=/tmp/cyb_default
  cyb-analyze --workdir=/tmp/text_run --step=2000 --tau=0.3 --min_count=50 --top=30
  cyb-analyze --workdir=/tmp/brown_run --tagged_text=/data/brown/brown_tagged.txt --eval_batches=64

Loads the run's checkpoint (the newest unless --step), runs the model on the run's eval set,
prints the tables and writes <out>/pause_stats.json, <out>/pause_stats.md and <out>/plots/.
For a text run it also writes the word view (:mod:`cyb_jax.analysis.word_report`): <out>/words.json
and <out>/words.md (pauses by word, word-final vs word-internal pieces, contractions,
ambiguous pieces) and, with --tagged_text (the run's text with every word as word/tag),
pauses by part-of-speech tag and <out>/plots/pauses_by_tag.png.
"""

from absl import app
from absl import flags

from cyb_jax.experiment.analyze_run import analyze_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (as given to cyb-train).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_TAU = flags.DEFINE_float("tau", None, "Threshold on P(<don't know>) (default: the run's eval.tau).")
_OUT = flags.DEFINE_string(
  "out", None, "Output folder (default: <workdir>/analysis/step_<step>, with _eval<N> for --eval_batches=N)."
)
_MIN_COUNT = flags.DEFINE_integer("min_count", 20, "Fewest positions for a token to be ranked.")
_TOP = flags.DEFINE_integer("top", 20, "Tokens listed as most / least pausing.")
_TAGGED_TEXT = flags.DEFINE_string(
  "tagged_text",
  None,
  "Text runs: the tagged copy of the run's text files (path or glob; every "
  "word as word/tag, line by line as the text), for pauses by part-of-speech tag.",
)

_EVAL_BATCHES = flags.DEFINE_integer(
  "eval_batches",
  None,
  "Batches of the run's held-out set to analyse (default: the run's data.eval_batches); "
  "more batches of the same documents, in the same order, e.g. to count rare words.",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(
    analyze_run(
      _WORKDIR.value,
      step=_STEP.value,
      tau=_TAU.value,
      out=_OUT.value,
      min_count=_MIN_COUNT.value,
      top=_TOP.value,
      tagged_text=_TAGGED_TEXT.value,
      eval_batches=_EVAL_BATCHES.value,
    )
  )


def run():
  """The ``cyb-analyze`` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
