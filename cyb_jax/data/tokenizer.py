"""Tokenizers: SentencePiece (trained on the training text, or loaded) and pretrained ones.

`load_pretrained_tokenizer(folder)` reads a Hugging Face-format folder: `tokenizer.json` through
the `tokenizers` library (`HFTokenizer`), else a SentencePiece `tokenizer.model`. Both expose the
interface the data pipeline uses: `encode_documents`, `decode`, `piece`, `vocab_size`, `bos_id`,
`eos_id`, `pad_id`.

A trained tokenizer has pad = 0, unk = 1, bos = 2, eos = 3 and "\\n" = 4 (a user-defined
piece, so line breaks survive), byte fallback (no unknown characters) and identity
normalisation (decode(encode(text)) == text). Training is single-threaded, on sentences
chosen deterministically, so it gives the same model on every process and every run.

A document is encoded as BOS, then its lines each encoded as a SentencePiece sentence and
joined by the "\\n" id, then EOS. A given model without a "\\n" piece encodes a document as
one sentence (its own normalisation decides what happens to line breaks); a given model
without BOS/EOS/pad ids gets no BOS/EOS, and pads with its unk id (padding always has
weight 0).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import sentencepiece as spm
from etils import epath

if TYPE_CHECKING:  # imported where a tokenizer.json is loaded
  import tokenizers
from sentencepiece import sentencepiece_model_pb2

TOKENIZER_FILENAME = "tokenizer.model"
NEWLINE = "\n"


def _text_ids(ids, tok) -> list[int]:
  """``ids`` as a flat list without pad, BOS and EOS; ``ValueError`` for an id outside
  ``[0, tok.vocab_size)``."""
  ids = [int(i) for i in np.asarray(ids).reshape(-1)]
  ids = [i for i in ids if i not in (tok.pad_id, tok.bos_id, tok.eos_id)]
  for i in ids:
    if not 0 <= i < tok.vocab_size:
      raise ValueError(f"Token id {i} is outside the vocabulary [0, {tok.vocab_size}).")
  return ids


class Tokenizer:
  """A SentencePiece model with document encoding; ids lie in [0, vocab_size)."""

  def __init__(self, model_proto: bytes, path: str | None, *, add_bos: bool = True):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    self.path = path
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 and add_bos else None
    self.eos_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.unk_id()
    newline_id = self._sp.piece_to_id(NEWLINE)
    self.newline_id = newline_id if newline_id != self._sp.unk_id() else None

  def encode_documents(self, docs: Sequence[str], *, add_eos: bool = True) -> list[np.ndarray]:
    """Token ids of each document: [BOS] + lines joined by the newline id + [EOS], int32."""
    head = [self.bos_id] if self.bos_id is not None else []
    tail = [self.eos_id] if self.eos_id is not None and add_eos else []
    if self.newline_id is None:
      return [np.asarray(head + ids + tail, np.int32) for ids in self._sp.encode(list(docs))]
    lines_per_doc = [doc.split(NEWLINE) for doc in docs]
    flat_ids = self._sp.encode([line for lines in lines_per_doc for line in lines])
    out, i = [], 0
    for lines in lines_per_doc:
      ids = list(head)
      for j in range(len(lines)):
        if j:
          ids.append(self.newline_id)
        ids.extend(flat_ids[i])
        i += 1
      out.append(np.asarray(ids + tail, np.int32))
    return out

  def decode(self, ids) -> str:
    """Text of `ids`; pad, BOS and EOS are dropped, the newline id becomes "\\n"."""
    ids = _text_ids(ids, self)
    if self.newline_id is None:
      return self._sp.decode(ids)
    runs, current = [], []
    for i in ids:
      if i == self.newline_id:
        runs.append(current)
        current = []
      else:
        current.append(i)
    runs.append(current)
    return NEWLINE.join(self._sp.decode(run) for run in runs)

  def piece(self, token_id: int) -> str:
    """A printable string for one id: the SentencePiece piece, with "\\n" shown as "\\\\n"."""
    token_id = int(token_id)
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f"Token id {token_id} is outside the vocabulary [0, {self.vocab_size}).")
    return self._sp.id_to_piece(token_id).replace(NEWLINE, "\\n")


def train_sentencepiece(lines: Sequence[str], *, vocab_size: int, model_type: str) -> bytes:
  """Trains a SentencePiece model on `lines` (see module docstring); returns the model proto.

  `vocab_size` is a soft limit: a corpus too small for it gives a smaller vocabulary.

  Raises:
    ValueError: if there are no lines or SentencePiece rejects the settings.
  """
  if not lines:
    raise ValueError("No text to train a SentencePiece tokenizer on.")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0,
      unk_id=1,
      bos_id=2,
      eos_id=3,
      user_defined_symbols=[NEWLINE],
      byte_fallback=True,
      character_coverage=1.0,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      hard_vocab_limit=False,
      input_sentence_size=0,
      num_threads=1,
      minloglevel=2,
    )
  except RuntimeError as e:
    raise ValueError(
      f"SentencePiece training failed with data.spm_vocab_size={vocab_size}, data.spm_model_type={model_type!r}: {e}"
    ) from None
  return model.getvalue()


def _trainer_spec(model_proto: bytes):
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  return proto.trainer_spec


def load_or_train(
  *,
  tokenizer_path: str,
  workdir: str,
  vocab_size: int,
  model_type: str,
  training_lines: Callable[[], Sequence[str]],
  process_index: int,
) -> Tokenizer:
  """The tokenizer a run uses.

  - `tokenizer_path` given: that .model file, or a Hugging Face-format folder
    (`load_pretrained_tokenizer`: tokenizer.json or tokenizer.model, with its BOS/EOS).
  - otherwise `<workdir>/tokenizer.model` if it exists (a resumed run): it must have been
    trained with `model_type` and at most `vocab_size` pieces;
  - otherwise a model trained on `training_lines()`; process 0 writes it to
    `<workdir>/tokenizer.model` atomically (other processes train the identical model).

  Raises:
    ValueError: for an unreadable model, or a workdir tokenizer trained with other settings.
  """
  if tokenizer_path:
    path = os.path.expanduser(tokenizer_path)
    if epath.Path(path).is_dir():
      return load_pretrained_tokenizer(path)
    return Tokenizer(_read_model(epath.Path(path)), path)
  path = epath.Path(workdir) / TOKENIZER_FILENAME
  if path.exists():
    proto = _read_model(path)
    spec = _trainer_spec(proto)
    model_types = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
    # The trained size is at most the requested one (a soft limit on small corpora).
    if spec.vocab_size > vocab_size or model_types.get(spec.model_type) != model_type:
      raise ValueError(
        f"{path} was trained with vocab_size={spec.vocab_size}, model_type="
        f"{model_types.get(spec.model_type)!r}, but the config asks for data.spm_vocab_size={vocab_size}, "
        f"data.spm_model_type={model_type!r}; use a fresh workdir or set data.tokenizer={str(path)!r}."
      )
    return Tokenizer(proto, str(path))
  proto = train_sentencepiece(training_lines(), vocab_size=vocab_size, model_type=model_type)
  if process_index == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{TOKENIZER_FILENAME}.tmp"
    tmp.write_bytes(proto)
    tmp.rename(path)
  return Tokenizer(proto, str(path))


def _read_model(path: epath.Path) -> bytes:
  try:
    proto = path.read_bytes()
    spm.SentencePieceProcessor(model_proto=proto)
  except Exception as e:  # SentencePiece raises RuntimeError, the file system OSError.
    raise ValueError(f"Cannot load SentencePiece model {str(path)!r}: {e}") from None
  return proto


# ----------------------------------------------------------------------------------------------
# Pretrained tokenizers (Hugging Face-format folders).


class HFTokenizer:
  """A `tokenizers` tokenizer (tokenizer.json) with document encoding; ids in [0, vocab_size).

  A document is encoded as [BOS] + its text (line breaks are ordinary text) + [EOS], without the
  tokenizer's own post-processing, so BOS is added exactly once when `bos_id` is not None.
  """

  def __init__(
    self, tokenizer: tokenizers.Tokenizer, path: str | None, *, bos_id: int | None, eos_id: int | None, pad_id: int
  ):
    self._tok = tokenizer
    self.path = path
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
    self.newline_id = None

  def encode_documents(self, docs: Sequence[str], *, add_eos: bool = True) -> list[np.ndarray]:
    """Token ids of each document: [BOS] + ids + [EOS], int32."""
    head = [self.bos_id] if self.bos_id is not None else []
    tail = [self.eos_id] if self.eos_id is not None and add_eos else []
    encodings = self._tok.encode_batch(list(docs), add_special_tokens=False)
    return [np.asarray(head + e.ids + tail, np.int32) for e in encodings]

  def decode(self, ids) -> str:
    """Text of `ids`; pad, BOS and EOS are dropped."""
    ids = _text_ids(ids, self)
    return self._tok.decode(ids, skip_special_tokens=False)

  def piece(self, token_id: int) -> str:
    """A printable string for one id: its token, with "\n" shown as "\\n"."""
    token_id = int(token_id)
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f"Token id {token_id} is outside the vocabulary [0, {self.vocab_size}).")
    return self._tok.id_to_token(token_id).replace(NEWLINE, "\\n")


def _read_json(path: epath.Path) -> dict[str, Any]:
  return json.loads(path.read_text()) if path.exists() else {}


def _token_text(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _special_ids(
  folder: epath.Path, token_to_id: Callable[[str], int | None]
) -> tuple[int | None, int | None, int | None]:
  """(bos, eos, pad) ids from tokenizer_config.json, then generation_config.json, config.json."""
  tok_cfg = _read_json(folder / "tokenizer_config.json")
  fallbacks = [_read_json(folder / "generation_config.json"), _read_json(folder / "config.json")]
  ids = []
  for name in ("bos", "eos", "pad"):
    text = _token_text(tok_cfg.get(f"{name}_token"))
    found = token_to_id(text) if text else None
    for cfg in fallbacks:
      if found is None and cfg.get(f"{name}_token_id") is not None:
        value = cfg[f"{name}_token_id"]
        found = int(value[0] if isinstance(value, list) else value)
    ids.append(found)
  return tuple(ids)


def load_pretrained_tokenizer(folder: epath.PathLike) -> HFTokenizer | Tokenizer:
  """The tokenizer of a Hugging Face-format folder.

  `tokenizer.json` (read with `tokenizers`) is preferred to a SentencePiece `tokenizer.model`.
  BOS/EOS/pad come from tokenizer_config.json (`bos_token`, `eos_token`, `pad_token`), else
  generation_config.json / config.json (`*_token_id`). Documents start with BOS when
  `add_bos_token` says so; without that key, when the tokenizer's own post-processing adds it
  (e.g. Llama 3), and never for tokenizer.json without either. Padding uses the pad id, else EOS,
  else 0 (padding always has weight 0).

  Raises:
    ValueError: a folder with neither file.
  """
  folder = epath.Path(folder)
  tok_cfg = _read_json(folder / "tokenizer_config.json")
  add_bos = tok_cfg.get("add_bos_token")
  if (folder / "tokenizer.json").exists():
    import tokenizers  # pylint: disable=g-import-not-at-top  (only pretrained folders need it)

    tok = tokenizers.Tokenizer.from_str((folder / "tokenizer.json").read_text())
    bos, eos, pad = _special_ids(folder, tok.token_to_id)
    if add_bos is None and bos is not None:
      add_bos = tok.encode("a", add_special_tokens=True).ids[:1] == [bos]
    pad = pad if pad is not None else (eos if eos is not None else 0)
    return HFTokenizer(tok, str(folder / "tokenizer.json"), bos_id=bos if add_bos else None, eos_id=eos, pad_id=pad)
  if (folder / TOKENIZER_FILENAME).exists():
    path = folder / TOKENIZER_FILENAME
    return Tokenizer(_read_model(path), str(path), add_bos=add_bos is not False)
  raise ValueError(f"{str(folder)!r} has neither tokenizer.json nor {TOKENIZER_FILENAME}")
