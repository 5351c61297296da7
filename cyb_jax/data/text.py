"""The user's own text files: finding them, cutting them into documents, and the held-out split.

`data.source = "text:PATH_OR_GLOB"` names UTF-8 files, local or in a bucket
(`text:gs://bucket/corpus/*.txt`; any etils.epath path); `**` matches sub-folders, a folder
means every file under it. `data.doc_per` says what a document is:

  "line":      every line with non-blank content (the line break itself is not part of it);
  "paragraph": every run of non-blank lines between blank lines, joined by "\\n";
  "file":      a whole file, trailing line breaks removed.

Blank documents are skipped. The held-out split is a fixed function of the document
count and `eval_fraction` (it does not depend on the training seed): a fixed permutation
picks round(eval_fraction * D) documents, at least one.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable

import fsspec
import numpy as np
from etils import epath

from cyb_jax.data import seeding

_WILDCARD = re.compile(r"[*?[]")


def _is_uri(path: str) -> bool:
  return "://" in path


def _split_pattern(pattern: str) -> tuple[str, list[str]]:
  """(root, rest): the leading path components without wildcards, and the remaining components.

  Raises:
    ValueError: for a wildcard in the bucket name of a URI.
  """
  if _is_uri(pattern):
    scheme, body = pattern.split("://", 1)
    parts = body.split("/")
    if _WILDCARD.search(parts[0]):
      raise ValueError(f"data.source text pattern {pattern!r} has a wildcard in the bucket name; name the bucket.")
    prefix = f"{scheme}://"
  else:
    parts, prefix = pattern.split("/"), ""
  n = 0
  while n < len(parts) and not _WILDCARD.search(parts[n]):
    n += 1
  root = prefix + "/".join(parts[:n])
  if not root:
    root = "/" if pattern.startswith("/") else "."
  return root, [p for p in parts[n:] if p]


def _segment_matches(pattern: str, name: str) -> bool:
  """One path component against one pattern component, as `glob` does: wildcards never match a leading dot."""
  if name.startswith(".") and not pattern.startswith(".") and _WILDCARD.search(pattern):
    return False
  return fnmatch.fnmatchcase(name, pattern)


def _matches(pattern: list[str], parts: tuple[str, ...]) -> bool:
  """Whether relative path components `parts` match `pattern` (components; "**" = any number of folders)."""
  if not pattern:
    return not parts
  if pattern[0] == "**":
    return _matches(pattern[1:], parts) or (
      bool(parts) and not parts[0].startswith(".") and _matches(pattern, parts[1:])
    )
  return bool(parts) and _segment_matches(pattern[0], parts[0]) and _matches(pattern[1:], parts[1:])


def _relative_parts(root: str, path: str) -> tuple[str, ...]:
  root = root.rstrip("/")
  rel = path[len(root) :] if root not in (".", "") else path
  return tuple(p for p in rel.split("/") if p)


def _files_under(root: epath.Path) -> Iterable[str]:
  """Every file below `root`, at any depth (one recursive listing on an object store)."""
  if _is_uri(str(root)):
    fs, base = fsspec.core.url_to_fs(str(root))
    return [fs.unstrip_protocol(key) for key in fs.find(base)]
  return [str(folder / name) for folder, _, names in root.walk() for name in names]


def find_text_files(pattern: str) -> list[str]:
  """The files a path, folder or glob names, sorted; local or in a bucket (`gs://bucket/*.txt`).

  Wildcards follow Python's `glob` (recursive `**`, no match of names starting with "."),
  also on object stores. A folder means every file under it.

  Raises:
    ValueError: naming the pattern when it matches no file.
  """
  path = epath.Path(pattern).expanduser()
  pattern = str(path) if not _is_uri(pattern) else pattern
  if path.is_dir():
    root, rest = str(path), ["**", "*"]
  else:
    root, rest = _split_pattern(pattern)
  if not rest:  # a plain path
    files = [pattern] if path.is_file() else []
  else:
    if "**" in rest:  # epath's glob refuses "**" (for gs://); list the folder once instead.
      files = [p for p in _files_under(epath.Path(root)) if _matches(rest, _relative_parts(root, p))]
    else:  # a glob may also match folders
      files = [
        str(p)
        for p in epath.Path(root).glob("/".join(rest))
        if _matches(rest, _relative_parts(root, str(p))) and p.is_file()
      ]
    files.sort()
  if not files:
    where = "" if _is_uri(pattern) else f" (checked from the current directory {os.getcwd()!r})"
    raise ValueError(f"data.source text pattern {pattern!r} matches no files{where}.")
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
      text = epath.Path(path).read_bytes().decode("utf-8")
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
      'use a finer data.doc_per ("line" or "paragraph"), or set eval_batches=0 and eval_fraction=0.'
    )
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
        lines.extend(line[i : i + max_chars] for i in range(0, len(line), max_chars))
  if len(lines) > max_sentences:
    keep = np.linspace(0, len(lines) - 1, max_sentences).round().astype(np.int64)
    lines = [lines[i] for i in keep]
  return lines
