"""Packing a token stream into fixed-length training rows (pure numpy functions).

The model of the data: documents are concatenated into one stream, and row g of the
stream holds stream positions [g*N, g*N + N] (N = seq_len): N inputs and, one to the
right, N targets. Consecutive rows therefore overlap by one token, the last target of
row g being the first input of row g+1, so every next-token pair of the stream lies in
exactly one row: a document longer than N simply continues in the next row, and
nothing is truncated or dropped. A pair whose two tokens belong to different documents
(or to padding) gets weight 0.

A *window* is the N+1 tokens of one row plus, per token, the id of the document it
came from (any integer unique among the documents of the window; -1 = padding).
`pack_windows` turns windows into the batch arrays the trainer consumes.
"""

from __future__ import annotations

import numpy as np

Batch = dict[str, np.ndarray]
PAD_DOC = -1  # document id of padding tokens in a window
BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


def window_positions(first_row: int, num_rows: int, seq_len: int) -> np.ndarray:
  """Stream positions of rows first_row .. first_row+num_rows-1.

  Returns:
    pos_RxW int64 with pos[r, j] = (first_row + r) * seq_len + j, j = 0..seq_len.
  """
  rows_R = first_row + np.arange(num_rows, dtype=np.int64)
  return rows_R[:, None] * seq_len + np.arange(seq_len + 1, dtype=np.int64)[None, :]


def pack_windows(tokens_RxW: np.ndarray, doc_RxW: np.ndarray, pad_id: int) -> Batch:
  """Turns row windows into training arrays.

  Args:
    tokens_RxW: int token ids, W = N + 1 (N inputs followed by one lookahead token).
    doc_RxW: int document ids of those tokens; PAD_DOC (-1) marks padding.
    pad_id: the id written to `inputs`/`targets` wherever there is no real token.

  Returns:
    A dict of [R, N] arrays:
      inputs      int32   tokens[:, :N] (pad_id on padding)
      targets     int32   tokens[:, 1:] where the pair is in one document, else pad_id
      weights     float32 1 where input and target belong to the same document, else 0
      segment_ids int32   1, 2, ... numbering the documents met along the row, 0 = padding
      positions   int32   offset of the token from the start of its segment in this row
                          (a document continued from the previous row restarts at 0)
  """
  tokens_RxW = np.asarray(tokens_RxW)
  doc_RxW = np.asarray(doc_RxW)
  if tokens_RxW.ndim != 2 or tokens_RxW.shape != doc_RxW.shape or tokens_RxW.shape[1] < 2:
    raise ValueError(
      f"Windows must be [rows, seq_len + 1] with matching document ids and seq_len >= 1; got "
      f"tokens {tokens_RxW.shape} and documents {doc_RxW.shape}."
    )
  num_rows, width = tokens_RxW.shape
  seq_len = width - 1
  doc_in_RxN = doc_RxW[:, :-1]
  real_RxN = doc_in_RxN != PAD_DOC
  same_doc_RxN = real_RxN & (doc_in_RxN == doc_RxW[:, 1:])

  inputs_RxN = np.where(real_RxN, tokens_RxW[:, :-1], pad_id)
  targets_RxN = np.where(same_doc_RxN, tokens_RxW[:, 1:], pad_id)

  # A segment starts at column 0 and wherever the document changes along the row.
  starts_RxN = np.ones((num_rows, seq_len), dtype=bool)
  starts_RxN[:, 1:] = doc_in_RxN[:, 1:] != doc_in_RxN[:, :-1]
  starts_RxN &= real_RxN
  segment_ids_RxN = np.where(real_RxN, np.cumsum(starts_RxN, axis=1), 0)
  col_RxN = np.broadcast_to(np.arange(seq_len), (num_rows, seq_len))
  segment_start_RxN = np.maximum.accumulate(np.where(starts_RxN, col_RxN, 0), axis=1)
  positions_RxN = np.where(real_RxN, col_RxN - segment_start_RxN, 0)

  return {
    "inputs": inputs_RxN.astype(np.int32),
    "targets": targets_RxN.astype(np.int32),
    "weights": same_doc_RxN.astype(np.float32),
    "segment_ids": segment_ids_RxN.astype(np.int32),
    "positions": positions_RxN.astype(np.int32),
  }


def concat_batches(batches: list[Batch]) -> Batch:
  """Stacks batches along rows (axis 0); all must have the same keys."""
  return {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}


def slice_rows(batch: Batch, start: int, stop: int) -> Batch:
  """Rows [start, stop) of every array of a batch (a process's share of a global batch)."""
  return {k: v[start:stop] for k, v in batch.items()}
