"""An in-memory tokenised corpus read as an endless stream by index arithmetic.

The corpus is one flat int32 token array plus document offsets. Epoch e of the training
stream is every document once, in the order keyed_rng(TEXT_EPOCH_ORDER, seed, e) gives;
the stream is epoch 0, epoch 1, ... back to back. Stream position t therefore lies in
epoch t // T (T = corpus tokens) at offset t % T, and a binary search over the epoch's
cumulative document lengths finds its document: row g of the stream (positions
[g*N, g*N + N], see packing.py) is computed directly, for any g, without reading the rows
before it. Rows never need padding.

The eval stream is the held-out documents once, in corpus order, padded after the end.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cyb_jax.data import packing
from cyb_jax.data import seeding


@dataclasses.dataclass(frozen=True)
class FlatCorpus:
  """Documents as one array: document d is tokens_T[starts_D1[d]:starts_D1[d + 1]]."""

  tokens_T: np.ndarray  # int32
  starts_D1: np.ndarray  # int64, starts_D1[0] = 0, starts_D1[-1] = T

  @classmethod
  def from_documents(cls, docs: list[np.ndarray]) -> FlatCorpus:
    """Concatenates documents (empty ones are dropped: they hold no next-token pair)."""
    docs = [np.asarray(d, np.int32) for d in docs if len(d)]
    lengths = np.array([len(d) for d in docs], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate(docs) if docs else np.zeros(0, np.int32)
    return cls(tokens_T=tokens, starts_D1=starts)

  @property
  def num_docs(self) -> int:
    return len(self.starts_D1) - 1

  @property
  def num_tokens(self) -> int:
    return int(self.starts_D1[-1])

  def document(self, d: int) -> np.ndarray:
    return self.tokens_T[self.starts_D1[d] : self.starts_D1[d + 1]]


class ShuffledStream:
  """The training stream of a corpus: epochs of shuffled documents, back to back."""

  def __init__(self, corpus: FlatCorpus, seed: int):
    if corpus.num_docs == 0:
      raise ValueError("The training corpus has no tokens.")
    self.corpus = corpus
    self.seed = seed
    self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(order_D: document of each slot, cum_D1: stream offset of each slot within the epoch)."""
    if epoch not in self._epochs:
      if len(self._epochs) >= 4:
        self._epochs.pop(min(self._epochs))
      order = seeding.keyed_rng(seeding.TEXT_EPOCH_ORDER, self.seed, epoch).permutation(self.corpus.num_docs)
      lengths = np.diff(self.corpus.starts_D1)[order]
      self._epochs[epoch] = order, np.concatenate([[0], np.cumsum(lengths)])
    return self._epochs[epoch]

  def tokens_at(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and document ids at stream positions `pos` (any shape, int64).

    The document id of a position is epoch * D + slot, unique along the whole stream.
    """
    total, num_docs = self.corpus.num_tokens, self.corpus.num_docs
    epoch, offset = np.divmod(pos, total)
    tokens = np.empty(pos.shape, np.int32)
    doc_ids = np.empty(pos.shape, np.int64)
    for e in np.unique(epoch):
      at = epoch == e
      order, cum = self.epoch(int(e))
      slot = np.searchsorted(cum, offset[at], side="right") - 1
      doc = order[slot]
      tokens[at] = self.corpus.tokens_T[self.corpus.starts_D1[doc] + offset[at] - cum[slot]]
      doc_ids[at] = e * num_docs + slot
    return tokens, doc_ids

  def rows(self, first_row: int, num_rows: int, seq_len: int, pad_id: int) -> packing.Batch:
    """Rows first_row .. first_row + num_rows - 1 of the packed stream (packing.pack_windows arrays)."""
    tokens, doc_ids = self.tokens_at(packing.window_positions(first_row, num_rows, seq_len))
    return packing.pack_windows(tokens, doc_ids, pad_id)


def ordered_rows(corpus: FlatCorpus, num_rows: int, seq_len: int, pad_id: int) -> packing.Batch:
  """The first `num_rows` rows of the corpus read once in order, padded after its end."""
  pos_RxW = packing.window_positions(0, num_rows, seq_len)
  inside = pos_RxW < corpus.num_tokens
  safe = np.where(inside, pos_RxW, 0)
  tokens = np.where(inside, corpus.tokens_T[safe] if corpus.num_tokens else pad_id, pad_id)
  doc_ids = np.where(inside, np.searchsorted(corpus.starts_D1, safe, side="right") - 1, packing.PAD_DOC)
  return packing.pack_windows(tokens, doc_ids, pad_id)
