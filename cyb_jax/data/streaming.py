"""Packing an endless stream of documents read one at a time, with a small resumable state.

For corpora too large to tokenise up front (TFDS). `doc_at(q)` returns the tokens of the
q-th document of this process's stream (a deterministic function of q). Rows follow the
same stream model as packing.py: row g holds stream positions [g*N, g*N + N], a long
document continues in the next row, and nothing is dropped.

The state is where the next row starts: document `doc` at token `offset`, plus the number
of batches produced. It is a few integers, whatever the document lengths; restoring it
re-reads (and re-tokenises) the document under the cursor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cyb_jax.data import packing


class StreamPacker:
  """Yields batches of `num_rows` rows of `seq_len` tokens from the documents `doc_at(0), doc_at(1), ...`."""

  def __init__(
    self, doc_at: Callable[[int], np.ndarray], *, num_rows: int, seq_len: int, pad_id: int, max_empty_docs: int
  ):
    """`max_empty_docs`: this many consecutive empty documents mean the source has no text (an error)."""
    self._doc_at = doc_at
    self.num_rows, self.seq_len, self.pad_id = num_rows, seq_len, pad_id
    self._max_empty = max_empty_docs
    self.doc, self.offset, self.batch_index = 0, 0, 0
    self._buffer: list[tuple[int, np.ndarray]] = []  # documents read ahead, starting at self.doc

  def _document(self, k: int) -> tuple[int, np.ndarray]:
    """The k-th buffered document (q, tokens), reading more as needed."""
    while len(self._buffer) <= k:
      q = self._buffer[-1][0] + 1 if self._buffer else self.doc
      empty = 0
      tokens = np.asarray(self._doc_at(q), np.int32)
      while not len(tokens):
        empty += 1
        if empty >= self._max_empty:
          raise ValueError(
            f"{empty} consecutive documents (from document {q - empty + 1}) have no tokens; "
            "the data source holds no text under the configured key."
          )
        q += 1
        tokens = np.asarray(self._doc_at(q), np.int32)
      self._buffer.append((q, tokens))
    return self._buffer[k]

  def next_batch(self) -> packing.Batch:
    """The next `num_rows` rows; advances the state by num_rows * seq_len stream tokens."""
    need = self.num_rows * self.seq_len + 1
    tokens, doc_ids, have, k = [], [], 0, 0
    while have < need:
      q, doc = self._document(k)
      piece = doc[self.offset :] if k == 0 else doc
      piece = piece[: need - have]
      tokens.append(piece)
      doc_ids.append(np.full(len(piece), q, np.int64))
      have += len(piece)
      k += 1
    stream_tokens, stream_docs = np.concatenate(tokens), np.concatenate(doc_ids)
    pos_RxW = packing.window_positions(0, self.num_rows, self.seq_len)
    batch = packing.pack_windows(stream_tokens[pos_RxW], stream_docs[pos_RxW], self.pad_id)
    self._advance(self.num_rows * self.seq_len)
    self.batch_index += 1
    return batch

  def _advance(self, num_tokens: int) -> None:
    """Moves the cursor num_tokens stream tokens forward, dropping finished documents."""
    while num_tokens:
      q, doc = self._document(0)
      step = min(num_tokens, len(doc) - self.offset)
      self.offset += step
      num_tokens -= step
      if self.offset == len(doc):
        self._buffer.pop(0)
        self.doc = self._buffer[0][0] if self._buffer else q + 1
        self.offset = 0
    # The cursor must sit on a document with tokens: skip empty ones now, so the state is canonical.
    self.doc = self._document(0)[0]

  def get_state(self) -> dict[str, int]:
    return {"doc": int(self.doc), "offset": int(self.offset), "batch_index": int(self.batch_index)}

  def set_state(self, state: dict) -> None:
    self.doc, self.offset, self.batch_index = int(state["doc"]), int(state["offset"]), int(state["batch_index"])
    self._buffer = []
