"""The user's own text files: finding them, cutting them into documents, and the held-out split.

`data.source = "text:PATH_OR_GLOB"` names UTF-8 files (`**` matches sub-folders; a folder
means every file under it). `data.doc_per` says what a document is:

  "line":      every line with non-blank content (the line break itself is not part of it);
  "paragraph": every run of non-blank lines between blank lines, joined by "\\n";
  "file":      a whole file, trailing line breaks removed.

Blank documents are skipped. The held-out split is a fixed function of the document
count and `eval_fraction` (it does not depend on the training seed): a fixed permutation
picks round(eval_fraction * D) documents, at least one.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from cyb_jax.data import seeding


def find_text_files(pattern: str) -> list[str]:
  """The files a path, folder or glob names, sorted.

  Raises:
    ValueError: naming the pattern when it matches no file.
  """
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    matches = glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
  else:
    matches = glob.glob(pattern, recursive=True)
  files = sorted(p for p in matches if os.path.isfile(p))
  if not files:
    raise ValueError(f"data.source text pattern {pattern!r} matches no files (checked from the current "
                     f"directory {os.getcwd()!r}).")
  return files


def split_into_documents(text: str, doc_per: str) -> list[str]:
  """Cuts one file's text into documents (see the module docstring); blank documents are dropped."""
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
  if doc_per == "line":
    return [line for line in lines if line.strip()]
  if doc_per == "paragraph":
    docs, current = [], []
    for line in lines + [""]:
      if line.strip():
        current.append(line)
      elif current:
        docs.append("\n".join(current))
        current = []
    return docs
  if doc_per == "file":
    doc = "\n".join(lines).rstrip("\n")
    return [doc] if doc.strip() else []
  raise ValueError(f"data.doc_per={doc_per!r} is not one of ('line', 'paragraph', 'file').")


def read_documents(files: list[str], doc_per: str) -> list[str]:
  """All documents of `files`, in file order.

  Raises:
    ValueError: naming a file that is not UTF-8 text, or the files when all are blank.
  """
  docs = []
  for path in files:
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except UnicodeDecodeError as e:
      raise ValueError(f"Text file {path!r} is not UTF-8 ({e}).") from None
    docs.extend(split_into_documents(text, doc_per))
  if not docs:
    shown = ", ".join(repr(p) for p in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    raise ValueError(f"The text files hold no documents (all blank): {shown}.")
  return docs


def split_train_eval(num_docs: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Indices of training and held-out documents, each sorted.

  Args:
    num_docs: D, the number of documents.
    eval_fraction: share held out; 0 holds out nothing.

  Returns:
    train_idx, eval_idx: disjoint sorted int64 arrays covering range(D).

  Raises:
    ValueError: if a held-out split is asked for and D < 2, or nothing would be left to train on.
  """
  if eval_fraction <= 0:
    return np.arange(num_docs), np.zeros(0, np.int64)
  num_eval = max(1, int(round(eval_fraction * num_docs)))
  if num_eval >= num_docs:
    raise ValueError(
        f"data.eval_fraction={eval_fraction} of {num_docs} document(s) leaves none to train on; add text, "
        "use a finer data.doc_per (\"line\" or \"paragraph\"), or set eval_batches=0 and eval_fraction=0.")
  order = seeding.keyed_rng(seeding.TEXT_EVAL_SPLIT, seeding.FIXED_KEY).permutation(num_docs)
  return np.sort(order[num_eval:]), np.sort(order[:num_eval])


def tokenizer_training_lines(docs: list[str], max_sentences: int, max_chars: int = 4096) -> list[str]:
  """At most `max_sentences` non-blank lines of `docs`, evenly spaced, for SentencePiece training.

  SentencePiece trains on sentences without line breaks, so documents are cut at "\\n"
  (the tokenizer encodes "\\n" as its own piece); lines longer than `max_chars` are cut
  into chunks, because SentencePiece skips over-long sentences.
  """
  lines = []
  for doc in docs:
    for line in doc.split("\n"):
      if line.strip():
        lines.extend(line[i:i + max_chars] for i in range(0, len(line), max_chars))
  if len(lines) > max_sentences:
    keep = np.linspace(0, len(lines) - 1, max_sentences).round().astype(np.int64)
    lines = [lines[i] for i in keep]
  return lines
