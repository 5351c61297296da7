r"""The paper's word-level observations, one column per model, from ``cyb-analyze`` word views (issue 14, item 5).

  python tools/words_summary.py --analysis="4 layers, CYB-DP + warm-up:/tmp/a/brown_L4_dp_w400" \
      --analysis="4 layers, CYB-DP:/tmp/a/brown_L4_dp" --out=docs/results/brown_words

Each ``--analysis=LABEL:DIR`` is the (local) output folder of ``cyb-analyze --tagged_text=...`` on a text
run (its ``words.json``). For every model the table gives the threshold pause rate (share of
positions with k* >= 1) and the accuracy gain of pausing (accuracy at k* minus at step 0) at:
word-final and word-internal pieces; after plural (``nns``) and singular (``nn``) nouns; after
the first piece of a contraction ending in n't (the paper: never a pause there), of any
apostrophe word, of other multi-piece words, and after whole words; and the mean std of k* over
ambiguous pieces (a whole word in some places, a word's start in others) against the other
frequent pieces. Writes ``words_summary.md`` and ``pause_rate_by_tag.png`` (the most frequent
tags, one bar per model) into ``--out``.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app
from absl import flags

from cyb_jax import files
from cyb_jax.analysis import words as wa

_ANALYSES = flags.DEFINE_multi_string("analysis", [], "LABEL:DIR of a cyb-analyze --tagged_text output.")
_OUT = flags.DEFINE_string("out", None, "Folder for words_summary.md and the plot.")
_TAGS = flags.DEFINE_integer("tags", 16, "Most frequent tags in the plot.")

# (row label, section of words.json, group name); the contractions' names are word_analysis's.
ROWS = (
  ("word-final piece", "final_vs_internal", wa.WORD_FINAL),
  ("word-internal piece", "final_vs_internal", wa.WORD_INTERNAL),
  ("after a plural noun (`nns`)", "by_tag", "nns"),
  ("after a singular noun (`nn`)", "by_tag", "nn"),
  ("first piece of an n't contraction", "contractions", wa.NT_START),
  ("first piece of an apostrophe word", "contractions", wa.APOSTROPHE_START),
  ("first piece of another multi-piece word", "contractions", wa.OTHER_START),
  ("after a whole word", "contractions", wa.WHOLE_WORD),
)


def _load(spec: str) -> tuple[str, dict]:
  label, sep, folder = spec.rpartition(":")
  if not sep or not label or not folder:
    raise app.UsageError(f"--analysis={spec!r} must be LABEL:DIR, e.g. '4 layers:/tmp/analysis'")
  path = os.path.join(folder, "words.json")
  if not os.path.exists(path):
    raise app.UsageError(f"--analysis={spec!r}: {path} does not exist (run cyb-analyze --tagged_text there first)")
  with open(path) as f:
    words = json.load(f)["words"]
  if not words["tagged"]:
    raise app.UsageError(f"--analysis={spec!r}: {path} has no tags (run cyb-analyze with --tagged_text)")
  return label, words


def _group(words: dict, section: str, name: str) -> dict | None:
  return next((g for g in words[section] if g["name"] == name), None)


def summary_md(analyses: list[tuple[str, dict]]) -> str:
  """The table: one row per observation, per model its positions, pause rate and gain."""
  head = "| where | " + " | ".join(label for label, _ in analyses) + " |"
  lines = [
    "Threshold pause rate (share of positions with k* >= 1), with the positions and the accuracy "
    "gain of pausing (accuracy at k* minus accuracy at step 0) in brackets.",
    "",
    head,
    "|---|" + "---|" * len(analyses),
  ]
  for label, section, name in ROWS:
    cells = []
    for _, words in analyses:
      g = _group(words, section, name)
      cells.append("n/a" if g is None else f"{g['pause_rate']:.3f} ({g['count']:,}, {g['gain']:+.3f})")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines.append(
    "| mean std of k*: ambiguous pieces / other frequent pieces | "
    + " | ".join(f"{w['mean_std_ambiguous']:.3f} / {w['mean_std_other']:.3f}" for _, w in analyses)
    + " |"
  )
  docs = {f"{w['aligned_docs']}/{w['num_docs']}" for _, w in analyses}
  lines += ["", f"Eval documents aligned with the tagged copy: {', '.join(sorted(docs))}."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not _ANALYSES.value or not _OUT.value:
    raise app.UsageError("give --analysis=LABEL:DIR (one or more) and --out")
  analyses = [_load(s) for s in _ANALYSES.value]
  text = summary_md(analyses)
  files.write_text(os.path.join(_OUT.value, "words_summary.md"), "# Pauses by word and tag, by model\n\n" + text)

  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  by_count = sorted(analyses[0][1]["by_tag"], key=lambda g: -g["count"])[: _TAGS.value]
  tags = [g["name"] for g in by_count]
  width = 0.8 / len(analyses)
  fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(tags) + 2), 4.5))
  for i, (label, words) in enumerate(analyses):
    rates = [(_group(words, "by_tag", t) or {"pause_rate": np.nan})["pause_rate"] for t in tags]
    ax.bar(np.arange(len(tags)) + i * width, rates, width, label=label)
  ax.set_xticks(np.arange(len(tags)) + 0.4 - width / 2, tags)
  ax.set_xlabel("part-of-speech tag of the word just read (most frequent first)")
  ax.set_ylabel("threshold pause rate after it")
  ax.set_title("Where each model pauses, by tag")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, os.path.join(_OUT.value, "pause_rate_by_tag.png"), dpi=120)
  plt.close(fig)
  print(text)


if __name__ == "__main__":
  app.run(main)
