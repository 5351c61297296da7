"""Where the pauses go in words: pauses by word, by word position and by part-of-speech tag.

Pauses at position ``n`` are taken *after* reading the input token ``x_n`` and before
predicting ``x_{n+1}`` (``PositionStats.pauses`` at ``n``). So "the pauses after word w" are
those of the position whose input is the last piece of ``w``, and "the pause after a plural
noun" is the position whose input token ends a word tagged ``nns``. "pauses" is the
threshold protocol's ``k*``; ``E[pauses]`` (own halting) is reported beside it. Positions
with weight 0 count nowhere, as in :mod:`cyb_jax.analysis`.

Tokens into words (:func:`group_texts`), for any tokenizer: each token is taken as its text
in bytes (:func:`sentencepiece_bytes`: "▁" as a space, a byte piece ``<0xHH>`` as its byte;
:func:`byte_level_bytes`: a byte-level BPE token, GPT-2's printable image of its bytes, "Ġ" a
space, as in SmolLM2, Llama 3, Qwen2). A token whose text starts with whitespace starts a word;
any other token continues the current word, or starts one if there is none (the first piece of
a line without a leading space) or the previous token's text ended with whitespace. Special
tokens (BOS, EOS, the newline piece, padding) belong to no word and end the current word. A
word's text is its tokens' bytes decoded as UTF-8, stripped. Leading tokens that are only
whitespace (a lone "▁" or "Ġ" not merged into the next piece, as in ``"▁" ","``, or a newline
token) belong to no word, so that word is ``","`` alone. :func:`group_pieces` does this for
SentencePiece pieces.

The tagged copy (:func:`read_tagged_documents`): the same text with every word written
``word/tag`` (the Brown corpus format), cut into documents exactly as the plain text is
(``data.doc_per``). A document is aligned when its words from the pieces equal the tagged
words; otherwise it is skipped for the tag view and counted (never misaligned). Host side
(NumPy).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence

import numpy as np

from cyb_jax import analysis
from cyb_jax.losses import PositionStats

SPACE = "\u2581"  # "▁", SentencePiece's word-start mark
APOSTROPHES = ("'", "\u2019")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_TAG_AFFIXES = (("-tl", "-hl", "-nc"), ("fw-",))  # Brown: title, headline, citation; foreign word

# Group names of WordStats.final_vs_internal and .contractions (read by tools/words_summary.py).
WORD_FINAL, WORD_INTERNAL, NO_WORD_NAME = "word-final piece", "word-internal piece", "no word"
APOSTROPHE_START = "first piece of a word with an apostrophe"
NT_START = "  of which: words ending in n't"  # indented: a subset of APOSTROPHE_START
OTHER_START = "first piece of another multi-piece word"
WHOLE_WORD = "whole word"

# Position kinds, by the input token's place in its word.
WHOLE, END, START, MIDDLE, NO_WORD = range(5)
KIND_NAMES = (
  "whole word (1 piece)",
  "last piece of a longer word",
  "first piece of a longer word",
  "middle piece of a longer word",
  "no word (BOS, EOS, newline, space)",
)


@dataclasses.dataclass(frozen=True)
class PieceWords:
  """The words of one token sequence (a document). Arrays ``[T]``, one entry per token.

  Attributes:
    word_T: int64 index into ``words`` of the token's word, -1 for no word.
    kind_T: int64 position kind (``WHOLE``, ``END``, ``START``, ``MIDDLE``, ``NO_WORD``);
      the token is word-final for ``WHOLE`` and ``END``, word-internal for ``START`` and ``MIDDLE``.
    words: the text of each word, in order.
  """

  word_T: np.ndarray
  kind_T: np.ndarray
  words: tuple[str, ...]

  @property
  def final_T(self) -> np.ndarray:
    return (self.kind_T == WHOLE) | (self.kind_T == END)


def is_byte_piece(piece: str) -> bool:
  """Whether ``piece`` is a SentencePiece byte piece ``<0xHH>``."""
  return _BYTE_PIECE.fullmatch(piece) is not None


def sentencepiece_bytes(piece: str) -> bytes:
  """The text of a SentencePiece piece in bytes: "▁" is a space, a byte piece ``<0xHH>`` its byte."""
  byte = _BYTE_PIECE.fullmatch(piece)
  return bytes([int(byte.group(1), 16)]) if byte else piece.replace(SPACE, " ").encode("utf-8")


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's map of the 256 bytes to printable characters (byte-level BPE vocabularies)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  out, extra = {b: chr(b) for b in printable}, 0
  for b in range(256):
    if b not in out:
      out[b] = chr(256 + extra)
      extra += 1
  return out


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def byte_level_bytes(token: str) -> bytes:
  """The text of a byte-level BPE token in bytes (``"Ġwasn" -> b" wasn"``, ``"Ċ" -> b"\\n"``).

  A character outside GPT-2's byte alphabet (an added token's literal text) is its UTF-8.
  """
  out = bytearray()
  for c in token:
    b = _UNICODE_TO_BYTE.get(c)
    out.extend(c.encode("utf-8") if b is None else (b,))
  return bytes(out)


def group_texts(texts: Sequence[bytes], special: Sequence[bool]) -> PieceWords:
  """Groups a token sequence into words by the tokens' text (rules in the module docstring).

  Args:
    texts: the text of each token in bytes, ``[T]`` (e.g. :func:`sentencepiece_bytes` of its piece).
    special: ``[T]``, True for tokens that belong to no word (BOS, EOS, newline, padding).
  """
  if len(texts) != len(special):
    raise ValueError(f"texts has {len(texts)} entries but special has {len(special)}.")
  spans = []  # [first, end) token range of each candidate word
  for t, (data, skip) in enumerate(zip(texts, special)):
    if skip:
      continue
    starts = data[:1].isspace() or not spans or spans[-1][1] != t or texts[t - 1][-1:].isspace()
    if starts:
      spans.append([t, t + 1])
    else:  # it continues the word
      spans[-1][1] = t + 1
  word_T = np.full(len(texts), -1, np.int64)
  kind_T = np.full(len(texts), NO_WORD, np.int64)
  words = []
  for first, end in spans:
    while first < end and not texts[first].strip():
      first += 1  # a lone "▁" (a space not merged into the next piece) belongs to no word
    text = b"".join(texts[first:end]).decode("utf-8", "replace").strip()
    if not text:
      continue
    word_T[first:end] = len(words)
    words.append(text)
    kind_T[first:end] = MIDDLE
    kind_T[first], kind_T[end - 1] = START, END
    if end - first == 1:
      kind_T[first] = WHOLE
  return PieceWords(word_T=word_T, kind_T=kind_T, words=tuple(words))


def group_pieces(
  pieces: Sequence[str], special: Sequence[bool], piece_bytes: Callable[[str], bytes] = sentencepiece_bytes
) -> PieceWords:
  """Groups a token sequence's pieces into words (:func:`group_texts` of their bytes).

  Args:
    pieces: the piece of each token, ``[T]`` (a SentencePiece piece by default).
    special: ``[T]``, True for tokens that belong to no word (BOS, EOS, newline, padding).
    piece_bytes: piece -> its text in bytes (:func:`sentencepiece_bytes`, :func:`byte_level_bytes`).
  """
  if len(pieces) != len(special):
    raise ValueError(f"pieces has {len(pieces)} entries but special has {len(special)}.")
  return group_texts([piece_bytes(p) for p in pieces], special)


def parse_tagged_line(line: str, where: str) -> list[tuple[str, str]]:
  """``"The/at dog/nn"`` -> ``[("The", "at"), ("dog", "nn")]``; the tag follows the last "/".

  Raises ValueError naming ``where`` (``"file:line"``) and a token without a word or a tag.
  """
  out = []
  for token in line.split():
    word, slash, tag = token.rpartition("/")
    if not slash or not word or not tag:
      raise ValueError(
        f"{where}: {token!r} is not word/tag (the tagged copy must write every word as word/tag, e.g. dogs/nns)."
      )
    out.append((word, tag))
  return out


def read_tagged_documents(paths: Sequence[str], doc_per: str) -> list[list[tuple[str, str]]]:
  """The ``(word, tag)`` pairs of each document of tagged files, cut as
  :func:`cyb_jax.data.text.split_into_documents` cuts the plain text ("line": each non-blank
  line; "paragraph": each run of non-blank lines; "file": each non-blank file).

  Raises ValueError naming the file and line of a malformed token, or a bad ``doc_per``.
  """
  if doc_per not in ("line", "paragraph", "file"):
    raise ValueError(f"doc_per={doc_per!r} is not one of ('line', 'paragraph', 'file').")
  docs = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      lines = f.read().replace("\r\n", "\n").replace("\r", "\n").split("\n")
    current = None
    for line_no, line in enumerate(lines, 1):
      if not line.strip():
        if doc_per == "paragraph":
          current = None
        continue
      pairs = parse_tagged_line(line, f"{path}:{line_no}")
      if current is None or doc_per == "line":
        current = []
        docs.append(current)
      current.extend(pairs)  # "file": every non-blank line extends the file's one document
  return docs


def base_tag(tag: str) -> str:
  """A Brown tag without its title/headline/citation suffixes and foreign-word prefix, lowercase:
  ``"NNS-TL" -> "nns"``, ``"fw-nn" -> "nn"``; ``"nns$"`` (possessive) stays as it is."""
  tag = tag.lower()
  suffixes, prefixes = _TAG_AFFIXES
  while any(tag.endswith(s) and len(tag) > len(s) for s in suffixes):
    tag = tag[:-3]
  for p in prefixes:
    if tag.startswith(p) and len(tag) > len(p):
      tag = tag[len(p) :]
  return tag


@dataclasses.dataclass(frozen=True)
class PositionWords:
  """The word and tag of each eval position's input token. Arrays ``[M]``.

  Attributes:
    word_M: int64 index into ``words`` (the distinct words of the documents reached, in order of
      first appearance), -1 for no word.
    kind_M: int64 position kind (``WHOLE`` ... ``NO_WORD``; padding is ``NO_WORD``).
    apostrophe_M: bool, the word has an apostrophe and a letter or digit (``wasn't``, ``Atlanta's``;
      not the quote marks ``'`` and ``''``).
    tag_M: int64 index into ``tags``, -1 with no tag (no tagged copy, a skipped document, no word).
    piece_M: int64 the input token id (-1 on padding beyond the documents).
    words, tags: the names of the indices (tags as ``tag_of`` groups them).
    num_docs: documents with a position in ``[0, M)``; aligned_docs: those matching their
      tagged copy (0 without one); skipped_docs: indices (within the documents given) of
      those that did not match.
  """

  word_M: np.ndarray
  kind_M: np.ndarray
  apostrophe_M: np.ndarray
  tag_M: np.ndarray
  piece_M: np.ndarray
  words: tuple[str, ...]
  tags: tuple[str, ...]
  num_docs: int
  aligned_docs: int
  skipped_docs: tuple[int, ...]


def position_words(
  doc_ids: Sequence[np.ndarray],
  num_positions: int,
  piece: Callable[[int], str],
  special_ids: Collection[int],
  tagged_docs: Sequence[Sequence[tuple[str, str]]] | None = None,
  tag_of: Callable[[str], str] = base_tag,
  *,
  token_bytes: Callable[[int], bytes] | None = None,
) -> PositionWords:
  """Words and tags of the positions of a stream of documents read in order.

  Position ``m`` reads token ``m`` of the concatenated documents (the layout of a text run's
  eval set, :func:`cyb_jax.data.flat_stream.ordered_rows`); positions past the end are padding.

  Args:
    doc_ids: the token ids of each document ``[T_d]``, in stream order.
    num_positions: M, the positions analysed (``R * N`` of the eval set).
    piece: id -> SentencePiece piece (read only without ``token_bytes``).
    special_ids: ids that belong to no word (BOS, EOS, newline, padding).
    tagged_docs: None, or the ``(word, tag)`` pairs of each document (same order and count).
    tag_of: the tag a written tag is grouped under (default :func:`base_tag`).
    token_bytes: id -> the token's text in bytes, for any tokenizer (default:
      :func:`sentencepiece_bytes` of ``piece(id)``).
  """
  if tagged_docs is not None and len(tagged_docs) != len(doc_ids):
    raise ValueError(f"{len(tagged_docs)} tagged documents for {len(doc_ids)} documents.")
  word_M, tag_M, piece_M = (np.full(num_positions, -1, np.int64) for _ in range(3))
  kind_M = np.full(num_positions, NO_WORD, np.int64)
  word_index, tag_index = {}, {}
  intern = lambda index, key: index.setdefault(key, len(index))
  start, num_docs, aligned, skipped = 0, 0, 0, []
  text_of = token_bytes or (lambda i: sentencepiece_bytes(piece(i)))
  cache = {}
  text = lambda i: cache[i] if i in cache else cache.setdefault(i, text_of(i))
  for d, ids in enumerate(doc_ids):
    if start >= num_positions:
      break
    ids = np.asarray(ids).reshape(-1)
    groups = group_texts([text(int(i)) for i in ids], [int(i) in special_ids for i in ids])
    n = min(ids.size, num_positions - start)
    here, word_T = slice(start, start + n), groups.word_T[:n]
    kind_M[here], piece_M[here] = groups.kind_T[:n], ids[:n]
    word_M[here] = np.asarray([intern(word_index, w) for w in groups.words] + [-1])[word_T]
    num_docs += 1
    if tagged_docs is not None:
      if tuple(w for w, _ in tagged_docs[d]) == groups.words:
        aligned += 1
        tag_M[here] = np.asarray([intern(tag_index, tag_of(t)) for _, t in tagged_docs[d]] + [-1])[word_T]
      else:
        skipped.append(d)
    start += ids.size
  words = tuple(word_index)
  apostrophe = np.asarray([any(a in w for a in APOSTROPHES) and any(c.isalnum() for c in w) for w in words] + [False])
  return PositionWords(
    word_M=word_M,
    kind_M=kind_M,
    apostrophe_M=apostrophe[word_M],
    tag_M=tag_M,
    piece_M=piece_M,
    words=words,
    tags=tuple(tag_index),
    num_docs=num_docs,
    aligned_docs=aligned,
    skipped_docs=tuple(skipped),
  )


@dataclasses.dataclass(frozen=True)
class AmbiguousPiece:
  """A piece that is a whole word at some positions and the first piece of a longer word at others.

  overall, as_whole, as_start: :class:`analysis.GroupStats` of the positions reading it
  (all of them, those where it is the whole word, those where the word continues).
  """

  overall: analysis.GroupStats
  as_whole: analysis.GroupStats
  as_start: analysis.GroupStats


@dataclasses.dataclass(frozen=True)
class WordStats:
  """Pauses after reading word pieces (all :class:`analysis.GroupStats`; "after" as in the module docstring).

  Attributes:
    kinds: one row per position kind (``KIND_NAMES``).
    final_vs_internal: rows "word-final" (whole words and last pieces), "word-internal"
      (first and middle pieces of longer words), "no word".
    contractions: rows: first piece of a multi-piece word with an apostrophe (``apostrophe_M``); of those, words
      ending in "n't"; first piece of other multi-piece words; whole words.
    after_words: per distinct word, at its final piece, words with count >= 1 (key = index
      into ``PositionWords.words``).
    most_words, least_words: the ``top`` words with count >= ``min_count`` by mean ``k*``.
    by_tag: per tag, at the final piece of the words of aligned documents, descending count.
    ambiguous: pieces seen at least ``min_side`` times as a whole word and as a word start, and
      ``min_count`` times in all, by descending ``std_pauses``.
    mean_std_ambiguous, mean_std_other: the unweighted mean ``std_pauses`` of those pieces and of
      the other pieces read at ``min_count`` or more positions (NaN if none).
    num_docs, aligned_docs, skipped_docs, tagged: the alignment (:class:`PositionWords`);
      tagged is False without a tagged copy.
  """

  kinds: tuple[analysis.GroupStats, ...]
  final_vs_internal: tuple[analysis.GroupStats, ...]
  contractions: tuple[analysis.GroupStats, ...]
  after_words: tuple[analysis.GroupStats, ...]
  most_words: tuple[analysis.GroupStats, ...]
  least_words: tuple[analysis.GroupStats, ...]
  by_tag: tuple[analysis.GroupStats, ...]
  ambiguous: tuple[AmbiguousPiece, ...]
  mean_std_ambiguous: float
  mean_std_other: float
  num_docs: int
  aligned_docs: int
  skipped_docs: tuple[int, ...]
  tagged: bool
  min_count: int
  min_side: int
  top: int

  def tag(self, name: str) -> analysis.GroupStats | None:
    """The row of one tag (e.g. ``"nns"``), None if absent."""
    return next((g for g in self.by_tag if g.name == name), None)


def _rows(keys_M: np.ndarray, s: PositionStats, names: Sequence[str]) -> tuple[analysis.GroupStats, ...]:
  return tuple(analysis.group_positions(keys_M, s, len(names), lambda i: names[i]))


def word_stats(
  stats: PositionStats,
  words: PositionWords,
  piece: Callable[[int], str],
  *,
  min_count: int = 20,
  min_side: int = 2,
  top: int = 20,
  tagged: bool | None = None,
) -> WordStats:
  """Groups the positions of ``stats`` by word, word position, tag and ambiguous piece.

  Args:
    stats: :class:`PositionStats` of any leading shape, ``M`` positions in all (row-major).
    words: :func:`position_words` of the same ``M`` positions.
    piece: id -> printable piece (names of the ambiguous pieces).
    min_count: least positions for a word or piece to be ranked.
    min_side: least positions as a whole word and as a word start for an ambiguous piece.
    top: length of the most/least word lists.
    tagged: whether a tagged copy was given (default: any document aligned or skipped).
  """
  for name, value, low in (("min_count", min_count, 1), ("min_side", min_side, 1), ("top", top, 0)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"{name}={value!r} must be an int >= {low}.")
  s = analysis.flat(stats)
  if s.weights.size != words.kind_M.size:
    raise ValueError(f"stats have {s.weights.size} positions but words have {words.kind_M.size}.")
  kind, word = words.kind_M, words.word_M
  final = (kind == WHOLE) | (kind == END)
  first_of_longer = kind == START
  nt = np.asarray([w.lower().endswith(("n't", "n\u2019t")) for w in words.words] + [False])[word]
  one = lambda mask, name: _rows(np.where(mask, 0, -1), s, [name])[0]
  contractions = (
    one(first_of_longer & words.apostrophe_M, APOSTROPHE_START),
    one(first_of_longer & nt, NT_START),
    one(first_of_longer & ~words.apostrophe_M, OTHER_START),
    one(kind == WHOLE, WHOLE_WORD),
  )
  after_words = [g for g in _rows(np.where(final, word, -1), s, words.words) if g.count > 0]
  ranked = lambda most: analysis.ranked(after_words, min_count=min_count, top=top, most=most)
  tags = [g for g in _rows(np.where(final, words.tag_M, -1), s, words.tags) if g.count > 0]
  names = [""] * (int(words.piece_M.max(initial=-1)) + 1)
  by_piece = [
    _rows(np.where(mask, words.piece_M, -1), s, names) for mask in (kind != NO_WORD, kind == WHOLE, first_of_longer)
  ]
  ambiguous, other = [], []
  for overall, whole, begin in zip(*by_piece):
    if overall.count < min_count:
      continue
    if whole.count >= min_side and begin.count >= min_side:
      name = piece(overall.key)
      ambiguous.append(AmbiguousPiece(*(dataclasses.replace(g, name=name) for g in (overall, whole, begin))))
    else:
      other.append(overall)
  ambiguous.sort(key=lambda a: (-a.overall.std_pauses, -a.overall.count, a.overall.key))
  mean_std = lambda gs: float(np.mean([g.std_pauses for g in gs])) if gs else float("nan")
  return WordStats(
    kinds=_rows(kind, s, KIND_NAMES),
    final_vs_internal=(
      one(final, WORD_FINAL),
      one(~final & (kind != NO_WORD), WORD_INTERNAL),
      one(kind == NO_WORD, NO_WORD_NAME),
    ),
    contractions=contractions,
    after_words=tuple(after_words),
    most_words=ranked(True),
    least_words=ranked(False),
    by_tag=tuple(sorted(tags, key=lambda g: (-g.count, g.name))),
    ambiguous=tuple(ambiguous),
    mean_std_ambiguous=mean_std([a.overall for a in ambiguous]),
    mean_std_other=mean_std(other),
    num_docs=words.num_docs,
    aligned_docs=words.aligned_docs,
    skipped_docs=words.skipped_docs,
    tagged=bool(words.aligned_docs or words.skipped_docs) if tagged is None else tagged,
    min_count=min_count,
    min_side=min_side,
    top=top,
  )
