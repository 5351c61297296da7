"""The data configuration: every field, its default, and its validation.

`default_data_config()` is the single place where data fields are declared; every
experiment config does `config.data = default_data_config()` and then overrides
fields. `validate_data_config` checks a config completely before anything is read or
written, so a bad value fails fast with a message naming the field, the bad value and
what is allowed.
"""

from __future__ import annotations

import dataclasses
import re

import ml_collections
from etils import epath

from cyb_jax.data import synthetic

SYNTHETIC = "synthetic"
TEXT_PREFIX = "text:"
TFDS_PREFIX = "tfds:"
DOC_PER_CHOICES = ("line", "paragraph", "file")
SPM_MODEL_TYPES = ("unigram", "bpe")
# Byte fallback reserves 256 byte pieces; with the 4 control pieces and "\n" the
# smallest vocabulary SentencePiece can build is a little above 261, and grows with
# the number of distinct characters in the corpus.
MIN_SPM_VOCAB_SIZE = 300
MAX_SYNTHETIC_DIGITS = 9  # products of two 9-digit numbers still fit in int64.

_TFDS_SPEC = re.compile(
  r"^(?P<name>[A-Za-z0-9_]+)(/(?P<config>[A-Za-z0-9_.\-]+))?(:(?P<version>[0-9]+\.[0-9]+\.[0-9]+))?$"
)


def expand_path(path: str) -> str:
  """`path` with a leading "~" expanded; URIs (gs://bucket/...) are returned unchanged."""
  return path if "://" in path else str(epath.Path(path).expanduser())


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the data config with every field and its default.

  The dict is locked: assigning to a misspelt field raises instead of being ignored.
  """
  c = ml_collections.ConfigDict()
  c.source = SYNTHETIC  # "synthetic" | "text:PATH_OR_GLOB" (local or gs://) | "tfds:NAME[/CONFIG][:VERSION]".
  c.seq_len = 128  # Tokens per packed row (N); every batch array is [rows, seq_len].
  c.batch_size = 32  # GLOBAL batch in rows; each process gets batch_size // process_count rows.
  c.eval_batches = 8  # Number of held-out batches in the fixed eval set (0 = no eval set).
  c.doc_per = "line"  # Text files: a document is one "line", one blank-line "paragraph", or one "file".
  c.eval_fraction = 0.05  # Text files: share of documents held out for eval (fixed split, seed-independent).
  c.tfds_train_split = "train"  # TFDS: split to train on (any TFDS split spec, e.g. "train[:90%]").
  c.tfds_eval_split = "test"  # TFDS: split the eval set is read from (its first records, in order).
  c.tfds_text_key = "text"  # TFDS: feature holding the text of a record (str or bytes).
  c.tfds_data_dir = ""  # TFDS: data_dir of the PREPARED ArrayRecord files, local or gs:// ("" = TFDS default,
  #                       ~/tensorflow_datasets or $TFDS_DATA_DIR). Runs never download; prepare it once with
  #                       `python -m cyb_jax.cli.prepare_data --dataset=NAME --data_dir=DIR`.
  c.tokenizer = ""  # "" = train SentencePiece on the training text into <workdir>/tokenizer.model (reused
  #                   if present), or a path (local or gs://) to an existing SentencePiece .model file.
  c.spm_vocab_size = 2048  # Vocabulary size when training SentencePiece (a soft limit on tiny corpora).
  c.spm_max_sentences = 100_000  # At most this many training lines are used to train SentencePiece.
  c.spm_model_type = "unigram"  # SentencePiece algorithm: "unigram" | "bpe".

  s = ml_collections.ConfigDict()
  s.min_digits = 1  # Fewest digits of an operand (operands are uniform over their digit count).
  s.max_digits = 2  # Most digits of an operand (at most 9); 3 makes products much harder.
  s.mul_fraction = 0.5  # Probability that a problem is a multiplication (otherwise an addition).
  c.synthetic = s  # The synthetic arithmetic task (see cyb_jax/data/synthetic.py).
  c.lock()
  return c


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """A parsed `source` string.

  kind: "synthetic" | "text" | "tfds".
  path: the text glob (kind "text").
  tfds_name: "NAME[/CONFIG][:VERSION]" exactly as `tfds.data_source` takes it (kind "tfds").
  """

  kind: str
  path: str = ""
  tfds_name: str = ""


def parse_source(source: str) -> SourceSpec:
  """Parses `data.source`; raises ValueError naming the value and the allowed forms."""
  allowed = '"synthetic", "text:PATH_OR_GLOB" or "tfds:NAME[/CONFIG][:VERSION]"'
  if not isinstance(source, str):
    raise ValueError(f"data.source must be a string ({allowed}), got {source!r}.")
  if source == SYNTHETIC:
    return SourceSpec(kind="synthetic")
  if source.startswith(TEXT_PREFIX):
    path = source[len(TEXT_PREFIX) :].strip()
    if not path:
      raise ValueError(f'data.source={source!r} names no path; expected "text:PATH_OR_GLOB".')
    return SourceSpec(kind="text", path=expand_path(path))
  if source.startswith(TFDS_PREFIX):
    name = source[len(TFDS_PREFIX) :].strip()
    if not _TFDS_SPEC.match(name):
      raise ValueError(
        f'data.source={source!r} is not a TFDS dataset; expected "tfds:NAME[/CONFIG][:VERSION]" '
        'such as "tfds:lm1b" or "tfds:wiki40b/en:1.3.0".'
      )
    return SourceSpec(kind="tfds", tfds_name=name)
  raise ValueError(f"Unknown data.source={source!r}; expected {allowed}.")


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"data.{name} must be an integer, got {value!r}.")
  if value < low or (high is not None and value > high):
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"data.{name}={value} is out of range; it must be {bound}.")


def _check_str(name: str, value) -> None:
  if not isinstance(value, str):
    raise ValueError(f"data.{name} must be a string, got {value!r}.")


def validate_data_config(cfg: ml_collections.ConfigDict, *, process_count: int = 1) -> SourceSpec:
  """Checks every data field without touching the file system's contents.

  Args:
    cfg: a config shaped like `default_data_config()`.
    process_count: number of JAX processes; the global batch must split evenly.

  Returns:
    The parsed source.

  Raises:
    ValueError: naming the first bad field, its value and what is allowed.
  """
  spec = parse_source(cfg.source)
  _check_int("seq_len", cfg.seq_len, 2)
  _check_int("batch_size", cfg.batch_size, 1)
  _check_int("eval_batches", cfg.eval_batches, 0)
  _check_int("process_count (argument)", process_count, 1)
  if cfg.batch_size % process_count:
    raise ValueError(
      f"data.batch_size={cfg.batch_size} is the GLOBAL batch and must be divisible by process_count={process_count}."
    )
  if cfg.doc_per not in DOC_PER_CHOICES:
    raise ValueError(f"data.doc_per={cfg.doc_per!r} is not one of {DOC_PER_CHOICES}.")
  if (
    isinstance(cfg.eval_fraction, bool)
    or not isinstance(cfg.eval_fraction, (int, float))
    or not (0.0 <= cfg.eval_fraction < 1.0)
  ):
    raise ValueError(f"data.eval_fraction={cfg.eval_fraction!r} must be a number in [0, 1).")
  for name in ("tfds_train_split", "tfds_eval_split", "tfds_text_key", "tfds_data_dir", "tokenizer", "spm_model_type"):
    _check_str(name, cfg[name])
  if spec.kind == "tfds":
    if not cfg.tfds_train_split:
      raise ValueError('data.tfds_train_split is empty; name the TFDS split to train on, e.g. "train".')
    if cfg.eval_batches and not cfg.tfds_eval_split:
      raise ValueError(
        f"data.tfds_eval_split is empty but data.eval_batches={cfg.eval_batches}; name an eval split "
        "or set eval_batches=0."
      )
    if not cfg.tfds_text_key:
      raise ValueError('data.tfds_text_key is empty; name the text feature of the dataset, e.g. "text".')
  if spec.kind == "text" and cfg.eval_batches and cfg.eval_fraction <= 0.0:
    raise ValueError(
      f"data.eval_fraction={cfg.eval_fraction} holds out no documents but data.eval_batches="
      f"{cfg.eval_batches}; use eval_fraction in (0, 1) or eval_batches=0."
    )
  if spec.kind in ("text", "tfds"):
    if cfg.tokenizer:
      if not epath.Path(expand_path(cfg.tokenizer)).exists():
        raise ValueError(
          f"data.tokenizer={cfg.tokenizer!r} is not a file or folder; give a SentencePiece "
          ".model file, a pretrained model's folder (tokenizer.json or tokenizer.model), or "
          '"" to train one into the workdir.'
        )
    else:
      _check_int("spm_vocab_size", cfg.spm_vocab_size, MIN_SPM_VOCAB_SIZE)
      _check_int("spm_max_sentences", cfg.spm_max_sentences, 1)
      if cfg.spm_model_type not in SPM_MODEL_TYPES:
        raise ValueError(f"data.spm_model_type={cfg.spm_model_type!r} is not one of {SPM_MODEL_TYPES}.")
  if spec.kind == "synthetic":
    s = cfg.synthetic
    _check_int("synthetic.min_digits", s.min_digits, 1, MAX_SYNTHETIC_DIGITS)
    _check_int("synthetic.max_digits", s.max_digits, 1, MAX_SYNTHETIC_DIGITS)
    if s.min_digits > s.max_digits:
      raise ValueError(f"data.synthetic.min_digits={s.min_digits} exceeds data.synthetic.max_digits={s.max_digits}.")
    if (
      isinstance(s.mul_fraction, bool)
      or not isinstance(s.mul_fraction, (int, float))
      or not (0.0 <= s.mul_fraction <= 1.0)
    ):
      raise ValueError(f"data.synthetic.mul_fraction={s.mul_fraction!r} must be a number in [0, 1].")
    longest = synthetic.max_problem_len(s.max_digits)
    if cfg.seq_len < longest:
      raise ValueError(
        f"data.seq_len={cfg.seq_len} is too short for the synthetic task: a problem with "
        f"data.synthetic.max_digits={s.max_digits} takes up to {longest} tokens, so seq_len must be >= {longest}."
      )
  return spec
