"""The word-level pause view of a text run: ``words.json``, ``words.md`` and ``plots/pauses_by_tag.png``.

:func:`tagged_eval_documents` reads the tagged copy (``word/tag``) of a text run's eval
documents (``DataBundle.eval_text``: the files, ``doc_per`` and held-out split of
:mod:`cyb_jax.data.pipeline`), cut into documents the same way; :func:`run_position_words`
encodes the eval documents with the run's tokenizer (:func:`run_tokenizer`: the trainer's,
a project-trained SentencePiece model or a pretrained folder's ``tokenizer.json`` /
``tokenizer.model``) and checks that they are exactly the tokens of the eval batches; words are
grouped from each token's text in bytes (:func:`token_text`), so any of these tokenizers works.
:func:`write_word_analysis` writes the statistics of :mod:`cyb_jax.analysis.words`;
:func:`words_md` and :func:`plot_tags` render them.
Used by ``cyb-analyze --tagged_text=PATH`` (``cyb_jax/cli/analyze.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from cyb_jax import files
from cyb_jax.analysis import plots
from cyb_jax.analysis import tables as tables
from cyb_jax.analysis import words as wa
from cyb_jax.data import pipeline
from cyb_jax.data import text
from cyb_jax.data import tokenizer as tokenizer_lib

WORDS_JSON = "words.json"
WORDS_MD = "words.md"
TAG_PLOT = os.path.join("plots", "pauses_by_tag.png")
_TAGS_PLOTTED = 20


def tagged_eval_documents(eval_text: pipeline.EvalText | None, tagged_text: str) -> list[list[tuple[str, str]]]:
  """The ``(word, tag)`` pairs of a text run's eval documents, read from their tagged copy.

  Args:
    eval_text: the run's ``DataBundle.eval_text`` (None for a source that is not text).
    tagged_text: a path/glob of the tagged copy of the run's text files (as many files,
      sorted alike, each line the same words as ``word/tag``), cut into documents by the
      run's ``data.doc_per``.

  Raises:
    ValueError: for a run that is not a text run, a malformed tagged token (naming file and
      line) or a tagged copy with another number of documents (naming its files and the text).
  """
  if eval_text is None:
    raise ValueError(f"--tagged_text={tagged_text!r}: the word view needs a text run (data.source text:PATH).")
  tagged_files = text.find_text_files(tagged_text)
  all_tagged = wa.read_tagged_documents(tagged_files, eval_text.doc_per)
  if len(all_tagged) != eval_text.num_docs:
    raise ValueError(
      f"The tagged copy {tagged_files} has {len(all_tagged)} documents "
      f"(data.doc_per={eval_text.doc_per!r}) but the text {eval_text.source!r} has {eval_text.num_docs}."
    )
  return [all_tagged[i] for i in eval_text.doc_indices]


def run_tokenizer(info) -> tokenizer_lib.Tokenizer | tokenizer_lib.HFTokenizer:
  """The tokenizer a text run encoded its data with, reloaded from ``info.tokenizer_path``.

  ``.../tokenizer.json`` came from a pretrained folder (``init_from=hf:PATH`` or data.tokenizer
  a folder): that folder, read as the trainer reads it
  (:func:`cyb_jax.data.tokenizer.load_pretrained_tokenizer`). Any other path is a SentencePiece
  model, with BOS exactly when the run's documents have one (a folder's ``tokenizer.model`` may
  have ``add_bos_token`` false).

  Raises:
    ValueError: for a run without a tokenizer (the synthetic task).
  """
  path = info.tokenizer_path
  if not path:
    raise ValueError("The word view needs a text run's tokenizer; this run has none (DataInfo.tokenizer_path).")
  if epath.Path(path).name == "tokenizer.json":
    return tokenizer_lib.load_pretrained_tokenizer(epath.Path(path).parent)
  return tokenizer_lib.Tokenizer(epath.Path(path).read_bytes(), path, add_bos=info.bos_id is not None)


def _nested_types(node) -> set[str]:
  """Every ``"type"`` named in a tokenizer.json component (Sequence components nest)."""
  children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
  own = {node["type"]} if isinstance(node, dict) and isinstance(node.get("type"), str) else set()
  return own.union(*(_nested_types(c) for c in children))


def token_text(tok) -> tuple[Callable[[int], bytes], set[int]]:
  """(id -> the token's text in bytes, the ids that belong to no word) of a run's tokenizer.

  SentencePiece (:class:`cyb_jax.data.tokenizer.Tokenizer`): its piece, "▁" a space and
  ``<0xHH>`` a byte; BOS, EOS, the newline piece and pad are special. ``tokenizer.json``
  (:class:`~cyb_jax.data.tokenizer.HFTokenizer`): a byte-level BPE vocabulary (a ``ByteLevel``
  pre-tokenizer or decoder: GPT-2, SmolLM2, Llama 3, Qwen2) maps each character back to its
  byte ("Ġ" a space); any other (Llama 2, Gemma) reads like SentencePiece, as do its added
  tokens; a byte-level vocabulary's added token is its literal text. BOS, EOS, pad and the added
  tokens marked special (but a byte piece ``<0xHH>``) are special.
  """
  special = {i for i in (tok.bos_id, tok.eos_id, tok.newline_id, tok.pad_id) if i is not None}
  if isinstance(tok, tokenizer_lib.Tokenizer):
    return (lambda i: wa.sentencepiece_bytes(tok.piece(i))), special
  spec = json.loads(epath.Path(tok.path).read_text())
  byte_level = "ByteLevel" in _nested_types([spec.get("pre_tokenizer"), spec.get("decoder")])
  added = {int(a["id"]): str(a["content"]) for a in spec.get("added_tokens") or []}
  special |= {int(a["id"]) for a in spec.get("added_tokens") or [] if a.get("special")}
  special -= {i for i, a in added.items() if wa.is_byte_piece(a)}  # <0xHH> added as special: still text
  import tokenizers  # pylint: disable=g-import-not-at-top  (as in cyb_jax.data.tokenizer)

  raw = tokenizers.Tokenizer.from_str(json.dumps(spec))
  of_piece = wa.byte_level_bytes if byte_level else wa.sentencepiece_bytes

  def text(i: int) -> bytes:
    if i in added:  # its literal text ("▁" a space and <0xHH> a byte outside byte-level vocabularies)
      return added[i].encode("utf-8") if byte_level else wa.sentencepiece_bytes(added[i])
    token = raw.id_to_token(int(i))
    return b"" if token is None else of_piece(token)

  return text, special


def run_position_words(info, docs: Sequence[str], tagged_docs, inputs: np.ndarray) -> wa.PositionWords:
  """The words (and tags) of every position of a text run's eval set.

  Args:
    info: the run's ``DataInfo`` (its tokenizer is reloaded: :func:`run_tokenizer`).
    docs: the run's eval documents (``DataBundle.eval_text.docs``).
    tagged_docs: None, or :func:`tagged_eval_documents`.
    inputs: int ``[R, N]``, the eval set's input tokens (``EvalSetStats.inputs``).

  Raises:
    ValueError: if the eval batches are not the re-encoded eval documents read in order.
  """
  tok = run_tokenizer(info)
  doc_ids = tok.encode_documents(list(docs))
  inputs_M = np.asarray(inputs).reshape(-1)
  stream_T = np.concatenate(doc_ids) if doc_ids else np.zeros(0, np.int32)
  n = min(inputs_M.size, stream_T.size)
  if not np.array_equal(inputs_M[:n], stream_T[:n]):
    bad = int(np.flatnonzero(inputs_M[:n] != stream_T[:n])[0])
    raise ValueError(
      f"The eval batches are not the run's eval documents read in order (first "
      f"difference at position {bad}); was the run trained on other files, or on "
      "several processes?"
    )
  text, special = token_text(tok)
  return wa.position_words(doc_ids, inputs_M.size, tok.piece, special, tagged_docs, token_bytes=text)


def _rows(groups: Sequence[Any], first: str = "name") -> list[list[str]]:
  return [
    [tables.md_code(g.name) if first == "code" else g.name, *tables.group_cells(g, accuracies=True)] for g in groups
  ]


_HEADER = tables.group_columns(accuracies=True)


def words_md(ws: wa.WordStats) -> str:
  """The word view as markdown: position kinds, contractions, words, tags, ambiguous pieces."""
  md = [
    "Pauses at a position are taken after reading its input piece, before predicting the next "
    'piece: "after word w" = at the last piece of w.',
    "",
  ]
  md += [
    "### Word-final vs word-internal pieces",
    "",
    tables.md_table(["input piece"] + _HEADER, _rows(ws.final_vs_internal)),
    "",
    "By the piece's place in its word:",
    "",
    tables.md_table(["input piece"] + _HEADER, _rows(ws.kinds)),
    "",
  ]
  md += [
    "### Contractions",
    "",
    "After the first piece of a word split into several pieces (e.g. "
    "`was` of wasn't), by whether the word has an apostrophe, vs after whole words (the paper "
    "reports no pauses after the first piece of contractions).",
    "",
    tables.md_table(["input piece"] + _HEADER, _rows(ws.contractions)),
    "",
  ]
  for title, groups in (
    ("Words after which the model pauses most", ws.most_words),
    ("Words after which the model pauses least", ws.least_words),
  ):
    body = (
      tables.md_table(["word"] + _HEADER, _rows(groups, "code"))
      if groups
      else f"_No word occurs at {ws.min_count} or more positions._"
    )
    md += [f"### {title} (at least {ws.min_count} positions)", "", body, ""]
  md += ["### By part-of-speech tag", ""]
  if not ws.tagged:
    md += ["_No tagged copy (`--tagged_text`)._", ""]
  else:
    md += [
      f"{ws.aligned_docs} of {ws.num_docs} eval documents aligned with the tagged copy; "
      f"{len(ws.skipped_docs)} skipped (their words differ from the tagged words).",
      "",
    ]
    pair = [g for g in (ws.tag("nns"), ws.tag("nn")) if g is not None]
    if pair:
      md += [
        "**After plural (`nns`) vs singular (`nn`) nouns:**",
        "",
        tables.md_table(["tag"] + _HEADER, _rows(pair, "code")),
        "",
      ]
    frequent = [g for g in ws.by_tag if g.count >= ws.min_count]
    md += [
      f"All tags with at least {ws.min_count} positions, by count (tags as grouped: Brown "
      "`-tl`/`-hl`/`-nc` suffixes and `fw-` dropped):",
      "",
      tables.md_table(["tag"] + _HEADER, _rows(frequent, "code")) if frequent else "_none_",
      "",
    ]
  md += [
    f"### Ambiguous pieces (whole word and word start, each at least {ws.min_side} times)",
    "",
    f"Mean std of k* over these pieces: **{tables.num(ws.mean_std_ambiguous)}**; over the other "
    f"pieces with at least {ws.min_count} positions: {tables.num(ws.mean_std_other)}.",
    "",
  ]
  if ws.ambiguous:
    md += [
      tables.md_table(
        [
          "piece",
          "positions",
          "std k*",
          "mean k*",
          "E[pauses]",
          "as whole word: n",
          "pause rate",
          "as word start: n",
          "pause rate",
        ],
        [
          [
            tables.md_code(a.overall.name),
            str(a.overall.count),
            tables.num(a.overall.std_pauses),
            tables.num(a.overall.mean_pauses),
            tables.num(a.overall.mean_expected_pauses),
            str(a.as_whole.count),
            tables.num(a.as_whole.pause_rate),
            str(a.as_start.count),
            tables.num(a.as_start.pause_rate),
          ]
          for a in ws.ambiguous[: ws.top]
        ],
      ),
      "",
    ]
  return "\n".join(md)


def plot_tags(path: str, ws: wa.WordStats) -> str:
  """Bars of mean k* (± std), E[pauses] and pause rate after words of the most frequent tags."""
  groups = [g for g in ws.by_tag if g.count >= ws.min_count][:_TAGS_PLOTTED]
  fig = plots.new_figure(max(6.0, 0.45 * len(groups) + 2), 4.0)
  ax = fig.subplots()
  x = np.arange(len(groups))
  width = 0.27
  ax.bar(
    x - width,
    [g.mean_pauses for g in groups],
    width,
    yerr=[g.std_pauses for g in groups],
    capsize=2,
    label="mean pauses k* (± std)",
  )
  ax.bar(x, [g.mean_expected_pauses for g in groups], width, label="E[pauses], own halting")
  ax.bar(x + width, [g.pause_rate for g in groups], width, label="pause rate (k* > 0)")
  ax.set_xticks(x, [f"{g.name}\n{g.count}" for g in groups], fontsize=7)
  ax.set(
    ylabel="after the word's last piece",
    title=f"Pauses after words by tag (tags with n ≥ {ws.min_count}, most frequent first)",
  )
  ax.set_ylim(bottom=0)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  if not groups:
    ax.text(0.5, 0.5, "no tag frequent enough", ha="center", va="center", transform=ax.transAxes)
  return plots.save(fig, path)


def write_word_analysis(
  out_dir: str,
  stats,
  words: wa.PositionWords,
  piece,
  *,
  min_count: int = 20,
  top: int = 20,
  tagged: bool = False,
  run: Mapping[str, Any] | None = None,
) -> str:
  """Writes ``words.json``, ``words.md`` and, with a tagged copy, ``plots/pauses_by_tag.png``.

  Args:
    out_dir: output folder (created).
    stats: ``PositionStats`` of the eval set (``EvalSetStats.stats``).
    words: :func:`run_position_words` of the same positions.
    piece: id -> piece (``DataInfo.piece``).
    min_count, top: selection of the ranked words and pieces.
    tagged: whether ``words`` came with a tagged copy.
    run: facts recorded under ``"run"`` in the JSON.

  Returns:
    The markdown.
  """
  ws = wa.word_stats(stats, words, piece, min_count=min_count, top=top, tagged=tagged)
  out_dir = os.fspath(files.resolve(out_dir))
  record = {"run": dict(run or {}), "words": ws}
  files.write_json(os.path.join(out_dir, WORDS_JSON), tables.jsonable(record), indent=1)
  md = "\n".join(["# Pauses by word" + (" and tag" if tagged else ""), "", words_md(ws)])
  if tagged:
    plot_tags(os.path.join(out_dir, TAG_PLOT), ws)
    md += f"\n![pauses by tag]({TAG_PLOT})\n"
  files.write_text(os.path.join(out_dir, WORDS_MD), md)
  return md
