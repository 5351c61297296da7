"""`make_data`: from a data config to a training iterator, a fixed eval set and vocabulary facts.

Every batch is a dict of numpy arrays, all [B, N] (B = this process's rows, N = seq_len):

  inputs      int32    token ids fed to the model
  targets     int32    the next token (pad_id where weights is 0)
  weights     float32  1 where the target is the real next token of the same document
  segment_ids int32    0 = padding, 1, 2, ... = the documents packed in the row
  positions   int32    position within the segment, restarting at 0 per segment
  difficulty  int32    synthetic source only: level of the TARGET token, -1 where weights is 0

Process p of P gets global rows [p*B/P, (p+1)*B/P) of every global batch. Batch i is a pure
function of (config, seed, i) (for TFDS also of the process count, since each process reads
its own shard of the records); the eval set does not depend on the seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import NamedTuple

import ml_collections
import numpy as np
from absl import logging

from cyb_jax.data import config as config_lib
from cyb_jax.data import flat_stream
from cyb_jax.data import iterators
from cyb_jax.data import packing
from cyb_jax.data import seeding
from cyb_jax.data import streaming
from cyb_jax.data import synthetic
from cyb_jax.data import text
from cyb_jax.data import tfds_source
from cyb_jax.data import tokenizer as tokenizer_lib

_TFDS_EVAL_CHUNK = 256  # eval records read (and tokenised) at a time


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the reports need to know about the data.

  vocab_size: V, the number of token ids (the model adds DK as id V).
  pad_id: the id on padding (always with weight 0).
  bos_id, eos_id: document start/end ids, or None where the source has none.
  decode: ids -> text (padding, BOS and EOS dropped).
  encode: text -> int32 ids of a document prefix (BOS first, no EOS), e.g. a prompt.
  piece: id -> a printable string for that token.
  difficulty_names: names of the `difficulty` levels (index = level), None without labels.
  tokenizer_path: the SentencePiece model used, None for the synthetic task.
  """

  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int | None
  decode: Callable[[Sequence[int]], str]
  encode: Callable[[str], np.ndarray]
  piece: Callable[[int], str]
  difficulty_names: tuple[str, ...] | None
  tokenizer_path: str | None


@dataclasses.dataclass(frozen=True, eq=False)
class EvalText:
  """A text source's held-out documents, for views that need the words behind the eval tokens.

  A run keeps them for its whole life: a small share of memory beside the tokenised corpus.

  source: the data.source they were read from (``text:PATH_OR_GLOB``).
  doc_per: how the files were cut into documents (data.doc_per).
  docs: the eval documents, in the eval set's order (global, not this process's rows).
  doc_indices: int [len(docs)], their indices among all `num_docs` documents of the source.
  num_docs: the number of documents of the source (train and eval).
  """

  source: str
  doc_per: str
  docs: list[str]
  doc_indices: np.ndarray
  num_docs: int


@dataclasses.dataclass(frozen=True)
class DataBundle:
  """train: resumable process-local batches; eval_batches: the fixed process-local eval set;
  eval_text: the eval set's documents for a text source, None for the others."""

  train: iterators.TrainIterator
  eval_batches: list[packing.Batch]
  info: DataInfo
  eval_text: EvalText | None = None


def make_data(
  data_config: ml_collections.ConfigDict, *, seed: int, workdir: str, process_index: int = 0, process_count: int = 1
) -> DataBundle:
  """Builds the data of a run.

  Args:
    data_config: a config shaped like `default_data_config()`.
    seed: non-negative int; sets the training order (not the eval set).
    workdir: the run's folder, local or gs:// (any etils.epath path); a trained tokenizer is
      saved (and on resume reused) there. Nothing is written anywhere else, and nothing at
      all for an invalid config. Text globs, the TFDS data_dir and data.tokenizer may be
      gs:// paths too.
    process_index, process_count: this JAX process and the number of processes.

  Returns:
    A DataBundle; see the module docstring for the batch format.

  Raises:
    ValueError: naming the bad value, for any invalid field or unusable data.
  """
  spec = config_lib.validate_data_config(data_config, process_count=process_count)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative integer.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count}).")
  seed = int(seed)
  local_rows = data_config.batch_size // process_count
  first_local_row = process_index * local_rows
  fingerprint = {
    "source": data_config.source,
    "seed": seed,
    "seq_len": data_config.seq_len,
    "batch_size": data_config.batch_size,
  }
  if spec.kind == "synthetic":
    return _synthetic(data_config, seed, first_local_row, local_rows, fingerprint)
  if spec.kind == "text":
    return _text(data_config, spec, seed, workdir, process_index, first_local_row, local_rows, fingerprint)
  return _tfds(data_config, spec, seed, workdir, process_index, process_count, fingerprint)


def _eval_slices(
  global_eval: packing.Batch, cfg: ml_collections.ConfigDict, first_local_row: int, local_rows: int
) -> list[packing.Batch]:
  """Splits eval_batches * batch_size global rows into batches and keeps this process's rows."""
  out = []
  for j in range(cfg.eval_batches):
    start = j * cfg.batch_size + first_local_row
    out.append(packing.slice_rows(global_eval, start, start + local_rows))
  return out


def _synthetic(cfg, seed, first_local_row, local_rows, fingerprint) -> DataBundle:
  s = cfg.synthetic
  task = dict(seq_len=cfg.seq_len, min_digits=s.min_digits, max_digits=s.max_digits, mul_fraction=s.mul_fraction)
  fingerprint = {**fingerprint, "synthetic": dict(s)}

  def batch_at(i: int) -> packing.Batch:
    first = i * cfg.batch_size + first_local_row
    return synthetic.synthetic_batch(
      stream=seeding.SYNTHETIC_TRAIN, keys=(seed,), rows=range(first, first + local_rows), **task
    )

  def eval_batch(j: int) -> packing.Batch:
    first = j * cfg.batch_size + first_local_row
    return synthetic.synthetic_batch(
      stream=seeding.SYNTHETIC_EVAL, keys=(seeding.FIXED_KEY,), rows=range(first, first + local_rows), **task
    )

  info = DataInfo(
    vocab_size=synthetic.VOCAB_SIZE,
    pad_id=synthetic.PAD_ID,
    bos_id=None,
    eos_id=None,
    decode=synthetic.decode,
    encode=synthetic.encode,
    piece=synthetic.piece,
    difficulty_names=synthetic.DIFFICULTY_NAMES,
    tokenizer_path=None,
  )
  return DataBundle(
    train=iterators.IndexedIterator(batch_at, fingerprint),
    eval_batches=[eval_batch(j) for j in range(cfg.eval_batches)],
    info=info,
  )


def _text_info(tok: tokenizer_lib.Tokenizer) -> DataInfo:
  return DataInfo(
    vocab_size=tok.vocab_size,
    pad_id=tok.pad_id,
    bos_id=tok.bos_id,
    eos_id=tok.eos_id,
    decode=tok.decode,
    encode=lambda s: tok.encode_documents([s], add_eos=False)[0],
    piece=tok.piece,
    difficulty_names=None,
    tokenizer_path=tok.path,
  )


class _TextSplit(NamedTuple):
  """A text source's documents, in reading order, and which are held out."""

  files: list[str]  # the text files, sorted
  docs: list[str]  # every document of `files`, cut by data.doc_per
  train_idx: np.ndarray  # int [train docs]: indices into `docs`
  eval_idx: np.ndarray  # int [eval docs]: indices into `docs`, in the eval set's order


def _text_split(cfg, path: str) -> _TextSplit:
  """The documents of ``text:path`` and the train/eval split a run of data config ``cfg`` uses
  (no eval documents when ``cfg.eval_batches`` is 0)."""
  files = text.find_text_files(path)
  docs = text.read_documents(files, cfg.doc_per)
  train_idx, eval_idx = text.split_train_eval(len(docs), cfg.eval_fraction if cfg.eval_batches else 0.0)
  return _TextSplit(files, docs, train_idx, eval_idx)


def _text(cfg, spec, seed, workdir, process_index, first_local_row, local_rows, fingerprint) -> DataBundle:
  files, docs, train_idx, eval_idx = _text_split(cfg, spec.path)
  train_docs = [docs[i] for i in train_idx]
  tok = tokenizer_lib.load_or_train(
    tokenizer_path=cfg.tokenizer,
    workdir=workdir,
    vocab_size=cfg.spm_vocab_size,
    model_type=cfg.spm_model_type,
    process_index=process_index,
    training_lines=lambda: text.tokenizer_training_lines(train_docs, cfg.spm_max_sentences),
  )
  eval_docs = [docs[i] for i in eval_idx]
  train_corpus = flat_stream.FlatCorpus.from_documents(tok.encode_documents(train_docs))
  eval_corpus = flat_stream.FlatCorpus.from_documents(tok.encode_documents(eval_docs))
  logging.info(
    "Text data: %d files, %d train documents (%d tokens), %d eval documents (%d tokens), V=%d.",
    len(files),
    train_corpus.num_docs,
    train_corpus.num_tokens,
    eval_corpus.num_docs,
    eval_corpus.num_tokens,
    tok.vocab_size,
  )
  stream = flat_stream.ShuffledStream(train_corpus, seed)

  def batch_at(i: int) -> packing.Batch:
    return stream.rows(i * cfg.batch_size + first_local_row, local_rows, cfg.seq_len, tok.pad_id)

  global_eval = flat_stream.ordered_rows(eval_corpus, cfg.eval_batches * cfg.batch_size, cfg.seq_len, tok.pad_id)
  fingerprint = {
    **fingerprint,
    "doc_per": cfg.doc_per,
    "eval_fraction": cfg.eval_fraction,
    "train_tokens": train_corpus.num_tokens,
  }
  return DataBundle(
    train=iterators.IndexedIterator(batch_at, fingerprint),
    eval_batches=_eval_slices(global_eval, cfg, first_local_row, local_rows),
    info=_text_info(tok),
    eval_text=EvalText(cfg.source, cfg.doc_per, eval_docs, eval_idx, len(docs)),
  )


def _tfds(cfg, spec, seed, workdir, process_index, process_count, fingerprint) -> DataBundle:
  train_source = tfds_source.open_split(spec.tfds_name, cfg.tfds_train_split, cfg.tfds_data_dir)
  eval_source = (
    tfds_source.open_split(spec.tfds_name, cfg.tfds_eval_split, cfg.tfds_data_dir) if cfg.eval_batches else None
  )
  key = cfg.tfds_text_key
  tfds_source.record_text(train_source[0], key)  # fail fast on a wrong key, before any training or writing
  order = tfds_source.ShardedOrder(len(train_source), seed, process_index, process_count)
  tok = tokenizer_lib.load_or_train(
    tokenizer_path=cfg.tokenizer,
    workdir=workdir,
    vocab_size=cfg.spm_vocab_size,
    model_type=cfg.spm_model_type,
    process_index=process_index,
    training_lines=lambda: text.tokenizer_training_lines(
      tfds_source.evenly_spaced_texts(train_source, key, cfg.spm_max_sentences), cfg.spm_max_sentences
    ),
  )

  def doc_at(q: int) -> np.ndarray:
    body = tfds_source.record_text(train_source[order.record(q)], key)
    return tok.encode_documents([body])[0] if body.strip() else np.zeros(0, np.int32)

  local_rows = cfg.batch_size // process_count
  packer = streaming.StreamPacker(
    doc_at, num_rows=local_rows, seq_len=cfg.seq_len, pad_id=tok.pad_id, max_empty_docs=order.per_epoch
  )
  fingerprint = {
    **fingerprint,
    "process_count": process_count,
    "tfds_train_split": cfg.tfds_train_split,
    "tfds_text_key": key,
  }
  eval_batches = []
  if eval_source is not None:
    need = cfg.eval_batches * cfg.batch_size * cfg.seq_len + 1
    docs, have, start = [], 0, 0
    while have < need and start < len(eval_source):
      texts = [t for t in tfds_source.leading_texts(eval_source, key, start, _TFDS_EVAL_CHUNK) if t.strip()]
      start += _TFDS_EVAL_CHUNK
      docs.extend(tok.encode_documents(texts))
      have = sum(len(d) for d in docs)
    eval_corpus = flat_stream.FlatCorpus.from_documents(docs)
    global_eval = flat_stream.ordered_rows(eval_corpus, cfg.eval_batches * cfg.batch_size, cfg.seq_len, tok.pad_id)
    eval_batches = _eval_slices(global_eval, cfg, process_index * local_rows, local_rows)
  return DataBundle(
    train=iterators.StreamIterator(packer, fingerprint, process_index), eval_batches=eval_batches, info=_text_info(tok)
  )
