"""Tests of the word-level pause view: cyb_jax.analysis.words, .word_report and cyb-analyze --tagged_text."""

import json
import math
import os
import pathlib
import types

import numpy as np
import pytest

from cyb_jax import losses
from cyb_jax.analysis import word_report
from cyb_jax.analysis import words as wa
from cyb_jax.data import text as text_lib
from tests import tiny

# A hand-made vocabulary: ids 0-3 are special (pad, BOS, EOS, newline).
PIECES = [
  "<pad>",
  "<s>",
  "</s>",
  "\\n",
  "▁dogs",
  "▁dog",
  "▁was",
  "n",
  "'",
  "t",
  "▁won",
  "▁ran",
  "▁the",
  "▁.",
  "▁'",
  "▁Atlanta",
]
ID = {p: i for i, p in enumerate(PIECES)}
SPECIAL = {0, 1, 2, 3}
DOCS = [  # the eval documents as pieces, and the tagged copy of each
  (["<s>", "▁the", "▁dogs", "▁ran", "▁.", "</s>"], "the/at dogs/nns ran/vbd ./."),
  (["<s>", "▁the", "▁dog", "▁was", "n", "'", "t", "▁won", "'", "t", "</s>"], "the/at dog/nn wasn't/bedz* won't/md*"),
  (["<s>", "▁the", "▁dog", "▁won", "</s>"], "the/AT dog/NN-TL won/vbd"),
  (["<s>", "▁dogs", "▁ran", "</s>"], "cats/nns ran/vbd"),  # misaligned: its words are "dogs ran"
]
# k* at each position of the concatenated documents, then 2 padding positions.
PAUSES = [0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 1, 1, 2, 0, 0, 3, 0, 0, 0, 0]
M = len(PAUSES)
EOS_OR_PAD = [5, 16, 21, 25, 26, 27]  # weight 0: the target is in another document, or padding


def _doc_ids():
  return [np.array([ID[p] for p in pieces], np.int32) for pieces, _ in DOCS]


def _tagged():
  return [wa.parse_tagged_line(line, f"tagged:{i + 1}") for i, (_, line) in enumerate(DOCS)]


def _stats():
  pauses = np.array(PAUSES, np.int32)
  weights = np.ones(M, np.float32)
  weights[EOS_OR_PAD] = 0
  pauses = np.where(weights > 0, pauses, 0)
  return losses.PositionStats(
    pauses=pauses,
    expected_pauses=0.5 * pauses,
    nll=np.zeros(M),
    correct=pauses > 0,
    nll_step0=np.zeros(M),
    correct_step0=np.zeros(M, bool),
    nll_mix=np.zeros(M),
    halt_probs=np.ones((M, 1)),
    nll_per_step=np.zeros((M, 1)),
    correct_per_step=np.zeros((M, 1), bool),
    weights=weights,
  )


def _words(**kw):
  return wa.position_words(_doc_ids(), M, PIECES.__getitem__, SPECIAL, _tagged(), **kw)


def _group_values(pauses):
  pauses = np.asarray(pauses, np.float64)
  return dict(
    count=pauses.size,
    mean_pauses=pauses.mean(),
    pause_rate=(pauses > 0).mean(),
    std_pauses=pauses.std(),
    mean_expected_pauses=0.5 * pauses.mean(),
    gain=(pauses > 0).mean(),
  )


def _assert_group(g, pauses):
  for name, want in _group_values(pauses).items():
    assert getattr(g, name) == pytest.approx(want, abs=1e-12), (g.name, name)


# --------------------------------------------------------------------------------------------
# Pieces into words.
# --------------------------------------------------------------------------------------------


def test_group_pieces_words_kinds_bytes_and_specials():
  pieces = ["<s>", "▁He", "▁was", "n", "'", "t", "▁", ",", "▁", "<0xC3>", "<0xA9>", "t", "\\n", "x", "▁", "▁go", "</s>"]
  special = [p in ("<s>", "</s>", "\\n") for p in pieces]
  g = wa.group_pieces(pieces, special)
  assert g.words == ("He", "wasn't", ",", "ét", "x", "go")
  assert g.word_T.tolist() == [-1, 0, 1, 1, 1, 1, -1, 2, -1, 3, 3, 3, -1, 4, -1, 5, -1]
  W, E, S, I, N = wa.WHOLE, wa.END, wa.START, wa.MIDDLE, wa.NO_WORD
  assert g.kind_T.tolist() == [N, W, S, I, I, E, N, W, N, S, I, E, N, W, N, W, N]
  assert g.final_T.tolist() == [k in (W, E) for k in g.kind_T.tolist()]


def test_group_pieces_rejects_unequal_lengths():
  with pytest.raises(ValueError, match="pieces has 2 entries but special has 1"):
    wa.group_pieces(["▁a", "b"], [False])


# --------------------------------------------------------------------------------------------
# Tokens of any tokenizer into words: SentencePiece, byte-level BPE (SmolLM2, Llama 3, Qwen2)
# and SentencePiece-like tokenizer.json (Llama 2, Gemma).
# --------------------------------------------------------------------------------------------

HF_BASE = pathlib.Path(__file__).parent / "fixtures" / "hf" / "smollm2_tied"
SENTENCE = "The dogs weren't home in 1960 , but the dog wasn't ; he didn't win . Café au lait won"
# Brown writes a contraction as one word (wasn't/bedz*): its pieces (e.g. "Ġwasn" "'t") make one word.
SENTENCE_TAGGED = (
  "The/at dogs/nns weren't/bed* home/nr in/in 1960/cd ,/, but/cc the/at dog/nn wasn't/bedz* ;/. he/pps "
  "didn't/dod* win/vb ./. Café/nn au/fw-in lait/fw-nn won/vbd"
)


def test_byte_level_bytes_inverts_the_gpt2_byte_alphabet():
  tokenizers = pytest.importorskip("tokenizers")
  alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
  assert len(alphabet) == 256 and sorted(b"".join(wa.byte_level_bytes(c) for c in alphabet)) == list(range(256))
  text = "Café wasn't\n\t1960 ☃"
  pieces = [p for p, _ in tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)]
  assert b"".join(wa.byte_level_bytes(p) for p in pieces) == text.encode("utf-8")
  assert (wa.byte_level_bytes("Ġwasn"), wa.byte_level_bytes("Ċ"), wa.byte_level_bytes("<|x|>")) == (
    b" wasn",
    b"\n",
    b"<|x|>",
  )
  assert wa.sentencepiece_bytes("▁was") == b" was" and wa.sentencepiece_bytes("<0x0A>") == b"\n"


def test_group_pieces_byte_level_by_hand():
  pieces = ["<|endoftext|>", "The", "Ġwasn", "'t", "Ġ", "196", "0", "Ġ", ",", "ĊĊ", "He", "Ġcaf", "Ã", "©", ".Ċ", "x"]
  special = [p == "<|endoftext|>" for p in pieces]
  g = wa.group_pieces(pieces, special, wa.byte_level_bytes)
  # "196" "0" after a lone space are one word; a token ending in whitespace (".Ċ") ends its word.
  assert g.words == ("The", "wasn't", "1960", ",", "He", "café.", "x")
  W, E, S, I, N = wa.WHOLE, wa.END, wa.START, wa.MIDDLE, wa.NO_WORD
  assert g.kind_T.tolist() == [N, W, S, E, N, S, E, N, W, N, W, S, I, I, E, W]


def test_sentencepiece_grouping_is_the_bytes_grouping():
  pieces = ["<s>", "▁He", "▁was", "n", "'", "t", "▁", ",", "▁", "<0xC3>", "<0xA9>", "t", "\\n", "x", "▁", "▁go", "</s>"]
  special = [p in ("<s>", "</s>", "\\n") for p in pieces]
  a = wa.group_pieces(pieces, special)
  b = wa.group_texts([wa.sentencepiece_bytes(p) for p in pieces], special)
  assert a.words == b.words and a.kind_T.tolist() == b.kind_T.tolist() and a.word_T.tolist() == b.word_T.tolist()
  with pytest.raises(ValueError, match="texts has 2 entries but special has 1"):
    wa.group_texts([b" a", b"b"], [False])


def _byte_level_folder(path):
  """A small byte-level BPE tokenizer.json (the GPT-2 / SmolLM2 / Llama 3 scheme) trained on SENTENCE."""
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=330, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet, show_progress=False
  )
  tok.train_from_iterator([SENTENCE] * 4, trainer)
  path.mkdir()
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "add_bos_token": False}))
  return path


def _sentencepiece_like_folder(path):
  """A small "▁" + byte-fallback tokenizer.json (the Llama 2 / Gemma scheme): <0xHH> pieces in the vocabulary."""
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=120, special_tokens=["<s>", "</s>"], show_progress=False)
  tok.train_from_iterator([SENTENCE.replace("é", "e")] * 4, trainer)  # "é" is left to the byte pieces
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
  spec["model"]["byte_fallback"] = True
  spec["decoder"] = {
    "type": "Sequence",
    "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
      {"type": "ByteFallback"},
      {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ],
  }
  path.mkdir()
  (path / "tokenizer.json").write_text(json.dumps(spec))
  (path / "tokenizer_config.json").write_text(
    json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True})
  )
  return path


def _info(tok):
  return types.SimpleNamespace(tokenizer_path=tok.path, bos_id=tok.bos_id)


@pytest.mark.parametrize("make", [_byte_level_folder, _sentencepiece_like_folder])
def test_a_tokenizer_json_run_groups_a_sentence_into_its_words(tmp_path, make):
  from cyb_jax.data import tokenizer as tokenizer_lib

  folder = make(tmp_path / "tok")
  tok = tokenizer_lib.load_pretrained_tokenizer(folder)  # as the trainer loads data.tokenizer / init_from=hf:
  reloaded = word_report.run_tokenizer(_info(tok))
  assert type(reloaded) is type(tok) and reloaded.bos_id == tok.bos_id
  docs = [SENTENCE, "the dog won"]
  ids = tok.encode_documents(docs)
  inputs = np.concatenate(ids + [np.full(3, tok.pad_id, np.int32)])[None]
  tagged = [wa.parse_tagged_line(SENTENCE_TAGGED, "t:1"), wa.parse_tagged_line("the/at dog/nn won/vbd", "t:2")]
  w = word_report.run_position_words(_info(tok), docs, tagged, inputs)
  assert (w.num_docs, w.aligned_docs, w.skipped_docs) == (2, 2, ())
  assert w.words == tuple(dict.fromkeys(SENTENCE.split()))
  pieces = [tok.piece(int(i)) for i in ids[0]]
  at = [m for m in range(ids[0].size) if w.word_M[m] >= 0 and w.words[w.word_M[m]] == "wasn't"]
  assert "".join(pieces[m] for m in at).lstrip("Ġ▁") == "wasn't" and w.apostrophe_M[at].all()
  assert [w.kind_M[m] for m in at] == (
    [wa.START] + [wa.MIDDLE] * (len(at) - 2) + [wa.END] if len(at) > 1 else [wa.WHOLE]
  )
  if make is _byte_level_folder:  # the byte-level pre-tokenizer splits off "'t": the paper's first piece "wasn"
    assert [pieces[m] for m in at] == ["Ġwasn", "'t"]
  tag = lambda m: w.tags[w.tag_M[m]]
  final = [m for m in range(ids[0].size) if w.kind_M[m] in (wa.WHOLE, wa.END)]
  assert [tag(m) for m in final] == [wa.base_tag(t) for _, t in tagged[0]]
  assert (w.kind_M[-3:] == wa.NO_WORD).all() and (w.word_M[-3:] == -1).all()
  with pytest.raises(ValueError, match="first difference at position 2"):
    bad = inputs.copy()
    bad[0, 2] = (bad[0, 2] + 1) % tok.vocab_size
    word_report.run_position_words(_info(tok), docs, tagged, bad)


def test_the_smollm2_fixtures_tokenizer_groups_its_words():
  from cyb_jax.data import tokenizer as tokenizer_lib

  tok = tokenizer_lib.load_pretrained_tokenizer(HF_BASE)
  text, special = word_report.token_text(word_report.run_tokenizer(_info(tok)))
  assert {tok.eos_id, 1, 2} <= special  # <|endoftext|>, <|im_start|>, <|im_end|>
  sentence = "the cats sat on the mat . the dog ran in the park"
  (ids,) = tok.encode_documents([sentence])
  g = wa.group_texts([text(int(i)) for i in ids], [int(i) in special for i in ids])
  assert g.words == tuple(sentence.split())
  assert [tok.piece(int(i)) for i in ids[:4]] == ["the", "Ġcat", "s", "Ġsat"]
  assert g.kind_T[:4].tolist() == [wa.WHOLE, wa.START, wa.END, wa.WHOLE]


def test_a_sentencepiece_run_tokenizer_keeps_its_bos_setting(tmp_path):
  sentencepiece = pytest.importorskip("sentencepiece")
  del sentencepiece
  from cyb_jax.data import tokenizer as tokenizer_lib

  proto = tokenizer_lib.train_sentencepiece([SENTENCE] * 20, vocab_size=320, model_type="bpe")
  (tmp_path / "tokenizer.model").write_bytes(proto)
  for add_bos in (True, False):
    tok = tokenizer_lib.Tokenizer(proto, str(tmp_path / "tokenizer.model"), add_bos=add_bos)
    reloaded = word_report.run_tokenizer(_info(tok))
    assert isinstance(reloaded, tokenizer_lib.Tokenizer) and reloaded.bos_id == tok.bos_id
    (ids,) = reloaded.encode_documents([SENTENCE])
    text, special = word_report.token_text(reloaded)
    assert wa.group_texts([text(int(i)) for i in ids], [int(i) in special for i in ids]).words == tuple(
      SENTENCE.split()
    )
  with pytest.raises(ValueError, match="needs a text run's tokenizer"):
    word_report.run_tokenizer(types.SimpleNamespace(tokenizer_path=None, bos_id=None))


# --------------------------------------------------------------------------------------------
# The tagged copy.
# --------------------------------------------------------------------------------------------


def test_parse_tagged_line_splits_at_the_last_slash():
  assert wa.parse_tagged_line("1/2/cd dogs/nns wasn't/bedz*", "f:1") == [
    ("1/2", "cd"),
    ("dogs", "nns"),
    ("wasn't", "bedz*"),
  ]


@pytest.mark.parametrize("bad", ["dogs", "/nns", "dogs/"])
def test_malformed_tagged_line_names_file_and_line(tmp_path, bad):
  path = tmp_path / "tagged.txt"
  path.write_text(f"the/at dog/nn\n\nthe/at {bad} ran/vbd\n")
  with pytest.raises(ValueError, match=rf"tagged.txt:3: '{bad}' is not word/tag"):
    wa.read_tagged_documents([str(path)], "line")


def test_tagged_documents_are_cut_as_the_plain_text(tmp_path):
  plain, tagged = tmp_path / "plain.txt", tmp_path / "tagged.txt"
  plain.write_text("a b\nc\n\nd\n")
  tagged.write_text("a/x b/y\nc/z\n\nd/w\n")
  for doc_per in ("line", "paragraph", "file"):
    docs = text_lib.split_into_documents(plain.read_text(), doc_per)
    tagged_docs = wa.read_tagged_documents([str(tagged)], doc_per)
    assert [[w for w, _ in d] for d in tagged_docs] == [d.split() for d in docs], doc_per
  assert wa.read_tagged_documents([str(tagged)], "paragraph")[0] == [("a", "x"), ("b", "y"), ("c", "z")]
  with pytest.raises(ValueError, match="doc_per='sentence' is not one of"):
    wa.read_tagged_documents([str(tagged)], "sentence")


def test_base_tag_drops_brown_title_headline_and_foreign_marks():
  assert [wa.base_tag(t) for t in ("NNS-TL", "nn-hl", "fw-nn-tl", "nns$", "bedz*", "-tl")] == [
    "nns",
    "nn",
    "nn",
    "nns$",
    "bedz*",
    "-tl",
  ]


# --------------------------------------------------------------------------------------------
# Alignment of positions to words and tags.
# --------------------------------------------------------------------------------------------


def test_position_words_aligns_tags_and_skips_a_misaligned_document():
  w = _words()
  assert (w.num_docs, w.aligned_docs, w.skipped_docs) == (4, 3, (3,))
  word = lambda m: w.words[w.word_M[m]] if w.word_M[m] >= 0 else None
  tag = lambda m: w.tags[w.tag_M[m]] if w.tag_M[m] >= 0 else None
  assert [word(m) for m in range(6)] == [None, "the", "dogs", "ran", ".", None]
  assert [tag(m) for m in range(6)] == [None, "at", "nns", "vbd", ".", None]
  assert [word(m) for m in range(9, 16)] == ["wasn't"] * 4 + ["won't"] * 3
  assert [tag(m) for m in range(9, 16)] == ["bedz*"] * 4 + ["md*"] * 3
  assert [tag(m) for m in (18, 19)] == ["at", "nn"]  # "AT" and "NN-TL" by base_tag
  assert [word(m) for m in (23, 24)] == ["dogs", "ran"] and (w.tag_M[22:] == -1).all()
  assert w.apostrophe_M[9:16].all() and not w.apostrophe_M[:9].any()
  assert w.piece_M[26:].tolist() == [-1, -1] and (w.kind_M[26:] == wa.NO_WORD).all()


def test_apostrophe_words_are_contractions_and_possessives_not_quote_marks():
  doc = np.array([ID[p] for p in ["<s>", "▁'", "'", "▁'", "▁Atlanta", "'", "t", "▁won", "'", "t", "</s>"]])
  w = wa.position_words([doc], doc.size, PIECES.__getitem__, SPECIAL)
  assert [w.words[i] if i >= 0 else None for i in w.word_M] == [
    None,
    "''",
    "''",
    "'",
    "Atlanta't",
    "Atlanta't",
    "Atlanta't",
    "won't",
    "won't",
    "won't",
    None,
  ]
  assert w.apostrophe_M.tolist() == [False] * 4 + [True] * 6 + [False]


def test_position_words_on_a_prefix_counts_only_the_documents_reached():
  w = wa.position_words(_doc_ids(), 8, PIECES.__getitem__, SPECIAL, _tagged())
  assert (w.num_docs, w.aligned_docs, w.skipped_docs) == (2, 2, ())
  assert w.words == ("the", "dogs", "ran", ".", "dog", "wasn't", "won't")  # of both documents, in order


def test_position_words_rejects_a_tagged_copy_of_other_length():
  with pytest.raises(ValueError, match="3 tagged documents for 4 documents"):
    wa.position_words(_doc_ids(), M, PIECES.__getitem__, SPECIAL, _tagged()[:3])


# --------------------------------------------------------------------------------------------
# Statistics, checked by hand.
# --------------------------------------------------------------------------------------------


def test_word_stats_by_tag_nns_vs_nn_by_hand():
  ws = wa.word_stats(_stats(), _words(), PIECES.__getitem__, min_count=2, min_side=1, top=4)
  assert ws.tagged and {g.name: g.count for g in ws.by_tag} == {
    "at": 3,
    "nn": 2,
    "vbd": 2,
    "nns": 1,
    ".": 1,
    "bedz*": 1,
    "md*": 1,
  }
  assert [g.name for g in ws.by_tag][:3] == ["at", "nn", "vbd"]  # by count, then name
  _assert_group(ws.tag("nns"), [2])  # "dogs" in document 0; the skipped document's "dogs" (3) not counted
  _assert_group(ws.tag("nn"), [0, 1])
  _assert_group(ws.tag("md*"), [3])  # after "won't" = at its last piece "t"
  assert ws.tag("jj") is None


def test_word_stats_final_internal_and_kinds_by_hand():
  ws = wa.word_stats(_stats(), _words(), PIECES.__getitem__, min_count=2, min_side=1)
  final, internal, none = ws.final_vs_internal
  _assert_group(final, [0, 2, 0, 1, 0, 0, 0, 3, 1, 1, 2, 3, 0])
  _assert_group(internal, [0, 1, 0, 0, 0])  # ▁was n ' of wasn't, ▁won ' of won't
  _assert_group(none, [0, 0, 0, 0])  # the four BOS; EOS and padding have weight 0
  assert [g.count for g in ws.kinds] == [11, 2, 2, 3, 4]


def test_word_stats_contractions_by_hand():
  ws = wa.word_stats(_stats(), _words(), PIECES.__getitem__, min_count=2, min_side=1)
  apostrophe, nt, other, whole = ws.contractions
  _assert_group(apostrophe, [0, 0])  # ▁was (wasn't), ▁won (won't)
  _assert_group(nt, [0, 0])
  assert other.count == 0 and math.isnan(other.mean_pauses)
  _assert_group(whole, [0, 2, 0, 1, 0, 0, 1, 1, 2, 3, 0])


def test_word_stats_words_ranked_with_min_count():
  ws = wa.word_stats(_stats(), _words(), PIECES.__getitem__, min_count=2, min_side=1, top=3)
  assert [g.name for g in ws.most_words] == ["dogs", "dog", "the"]
  assert [g.name for g in ws.least_words] == ["ran", "the", "dog"]
  _assert_group(ws.most_words[0], [2, 3])  # "dogs" in the skipped document counts for words
  assert {g.name: g.count for g in ws.after_words}["won"] == 1  # won (whole) and won't are two words


def test_word_stats_ambiguous_piece_and_mean_std_by_hand():
  ws = wa.word_stats(_stats(), _words(), PIECES.__getitem__, min_count=2, min_side=1)
  (won,) = ws.ambiguous
  assert won.overall.name == "▁won" and won.overall.key == ID["▁won"]
  _assert_group(won.overall, [0, 2])
  _assert_group(won.as_whole, [2])
  _assert_group(won.as_start, [0])
  assert ws.mean_std_ambiguous == pytest.approx(1.0)
  # Other pieces read at >= 2 word positions: ▁the, ▁dogs, ▁dog, ▁ran, ', t.
  others = [[0, 0, 1], [2, 3], [0, 1], [0, 0], [0, 0], [0, 3]]
  assert ws.mean_std_other == pytest.approx(np.mean([np.std(p) for p in others]))
  assert wa.word_stats(_stats(), _words(), PIECES.__getitem__, min_count=2, min_side=2).ambiguous == ()


def test_word_stats_rejects_bad_settings_and_shapes():
  with pytest.raises(ValueError, match="min_count=0 must be an int >= 1"):
    wa.word_stats(_stats(), _words(), PIECES.__getitem__, min_count=0)
  short = wa.position_words(_doc_ids(), 8, PIECES.__getitem__, SPECIAL)
  with pytest.raises(ValueError, match="stats have 28 positions but words have 8"):
    wa.word_stats(_stats(), short, PIECES.__getitem__)


def test_word_tables_without_tagged_copy_say_so():
  words = wa.position_words(_doc_ids(), M, PIECES.__getitem__, SPECIAL)
  ws = wa.word_stats(_stats(), words, PIECES.__getitem__, min_count=2, tagged=False)
  md = word_report.words_md(ws)
  assert "_No tagged copy" in md and "first piece of a word with an apostrophe" in md and ws.by_tag == ()


# --------------------------------------------------------------------------------------------
# End to end: a tiny text run analysed by cyb-analyze with a tagged copy.
# --------------------------------------------------------------------------------------------

_LEXICON = [
  ("the", "at"),
  ("dog", "nn"),
  ("dogs", "nns"),
  ("cat", "nn"),
  ("cats", "nns"),
  ("ran", "vbd"),
  ("won", "vbd"),
  ("wasn't", "bedz*"),
  ("won't", "md*"),
  ("didn't", "dod*"),
  ("home", "nn"),
  (".", "."),
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  train = pytest.importorskip("cyb_jax.training.train")
  root = tmp_path_factory.mktemp("words")
  rng = np.random.default_rng(0)
  lines = [
    [_LEXICON[i] for i in rng.integers(0, len(_LEXICON) - 1, size=rng.integers(3, 8))] + [_LEXICON[-1]]
    for _ in range(200)
  ]
  (root / "text.txt").write_text("\n".join(" ".join(w for w, _ in line) for line in lines) + "\n")
  (root / "tagged.txt").write_text("\n".join(" ".join(f"{w}/{t}" for w, t in line) for line in lines) + "\n")
  config = tiny.tiny_config(
    **{
      "data.source": f"text:{root / 'text.txt'}",
      "data.doc_per": "line",
      "data.spm_vocab_size": 300,
      "num_train_steps": 2,
      "eval_every_steps": 2,
      "checkpoint_every_steps": 2,
    }
  )
  train.train_and_evaluate(config, str(root / "run"))
  return root, lines


def test_cli_analyze_writes_the_word_and_tag_view(text_run):
  from cyb_jax.experiment import analyze_run as analyze

  root, lines = text_run
  out = root / "out"
  printed = analyze.analyze_run(
    str(root / "run"), out=str(out), min_count=1, top=3, tagged_text=str(root / "tagged.txt")
  )
  assert "After plural (`nns`) vs singular (`nn`) nouns" in printed and "words.md" in printed
  saved = json.load(open(out / "words.json"))["words"]
  summary = json.load(open(out / "pause_stats.json"))["summary"]
  assert saved["tagged"] and saved["skipped_docs"] == [] and saved["aligned_docs"] == saved["num_docs"] > 1
  # Every scored position has one kind; every word-final position of aligned documents one tag.
  assert sum(g["count"] for g in saved["kinds"]) == summary["num_positions"]
  assert sum(g["count"] for g in saved["by_tag"]) == saved["final_vs_internal"][0]["count"]
  assert {g["name"] for g in saved["by_tag"]} <= {t for _, t in _LEXICON}
  assert (out / "words.md").read_text().startswith("# Pauses by word and tag")
  assert (out / "plots" / "pauses_by_tag.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # A tagged copy whose first eval document has another word: that document is skipped, and counted.
  _, eval_idx = text_lib.split_train_eval(len(lines), 0.05)
  changed = [list(line) for line in lines]
  changed[eval_idx[0]][0] = ("zebra", "nn")
  (root / "tagged2.txt").write_text("\n".join(" ".join(f"{w}/{t}" for w, t in line) for line in changed))
  analyze.analyze_run(str(root / "run"), out=str(root / "out2"), min_count=1, tagged_text=str(root / "tagged2.txt"))
  saved2 = json.load(open(root / "out2" / "words.json"))["words"]
  assert saved2["skipped_docs"] == [0] and saved2["aligned_docs"] == saved["aligned_docs"] - 1

  # Without the flag: the word view without tags; a malformed tagged copy names file and line.
  analyze.analyze_run(str(root / "run"), out=str(root / "out3"), min_count=1)
  assert not json.load(open(root / "out3" / "words.json"))["words"]["tagged"]
  assert not os.path.exists(root / "out3" / "plots" / "pauses_by_tag.png")
  bad = (root / "tagged.txt").read_text().splitlines()
  bad[6] = bad[6].replace("/", "_", 1)
  (root / "bad.txt").write_text("\n".join(bad))
  with pytest.raises(ValueError, match=r"bad.txt:7: .* is not word/tag"):
    analyze.analyze_run(str(root / "run"), out=str(root / "out4"), tagged_text=str(root / "bad.txt"))


def test_more_eval_batches_extend_the_runs_held_out_rows_in_order(text_run):
  from cyb_jax.experiment import analyze_run as analyze
  from cyb_jax.training import components

  root, _ = text_run
  own = components.load_run(str(root / "run"))
  n = len(own.data.eval_batches)
  more = components.load_run(str(root / "run"), eval_batches=2 * n)
  assert len(more.data.eval_batches) == 2 * n
  for a, b in zip(own.data.eval_batches, more.data.eval_batches[:n]):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  positions = {}
  for name, batches in (("own", None), ("more", 2 * n)):
    analyze.analyze_run(str(root / "run"), out=str(root / name), min_count=1, eval_batches=batches)
    positions[name] = json.load(open(root / name / "pause_stats.json"))["summary"]["num_positions"]
  assert positions["more"] > positions["own"]
  with pytest.raises(ValueError, match=r"eval_batches=0 must be an int >= 1 \(None: the run's"):
    components.load_run(str(root / "run"), eval_batches=0)


def test_text_bundle_holds_its_held_out_documents_and_a_longer_tagged_copy_is_refused(text_run):
  from cyb_jax.experiment import analyze_run as analyze
  from cyb_jax.training import components

  root, lines = text_run
  run = components.load_run(str(root / "run"))
  eval_text = run.data.eval_text
  _, eval_idx = text_lib.split_train_eval(len(lines), run.config.data.eval_fraction)
  assert (eval_text.source, eval_text.doc_per) == (f"text:{root / 'text.txt'}", "line")
  assert eval_text.num_docs == len(lines) and np.array_equal(eval_text.doc_indices, eval_idx)
  assert eval_text.docs == [" ".join(w for w, _ in lines[i]) for i in eval_idx]
  tagged = (root / "tagged.txt").read_text()
  (root / "tagged_longer.txt").write_text(tagged + "the/at dog/nn ./.\n")
  with pytest.raises(ValueError, match=rf"has {len(lines) + 1} documents .*/text.txt' has {len(lines)}\."):
    analyze.analyze_run(str(root / "run"), out=str(root / "out5"), tagged_text=str(root / "tagged_longer.txt"))


_HF_LEXICON = [  # words the SmolLM2-shaped fixture's 54-token vocabulary spells without dropping a byte
  ("the", "at"),
  ("cat", "nn"),
  ("cats", "nns"),
  ("dog", "nn"),
  ("dogs", "nns"),
  ("mats", "nns"),
  ("sat", "vbd"),
  ("ran", "vbd"),
  ("on", "in"),
  ("in", "in"),
  ("park", "nn"),
  (".", "."),
]


@pytest.mark.slow
def test_cli_analyze_word_view_of_a_run_fine_tuned_from_an_hf_base(tmp_path):
  """init_from=hf:smollm2_tied (a byte-level BPE tokenizer.json): the word and tag view of its run."""
  from cyb_jax.configs import finetune_hf
  from cyb_jax.experiment import analyze_run as analyze
  from cyb_jax.training import train

  rng = np.random.default_rng(0)
  lines = [
    [_HF_LEXICON[i] for i in rng.integers(0, len(_HF_LEXICON) - 1, size=rng.integers(3, 8))] + [_HF_LEXICON[-1]]
    for _ in range(120)
  ]
  (tmp_path / "text.txt").write_text("\n".join(" ".join(w for w, _ in line) for line in lines) + "\n")
  (tmp_path / "tagged.txt").write_text("\n".join(" ".join(f"{w}/{t}" for w, t in line) for line in lines) + "\n")
  c = finetune_hf.get_config()
  c.update_from_flattened_dict(
    {
      "init_from": f"hf:{HF_BASE}",
      "data.source": f"text:{tmp_path / 'text.txt'}",
      "data.doc_per": "line",
      "data.seq_len": 16,
      "data.batch_size": 4,
      "data.eval_batches": 2,
      "num_train_steps": 2,
      "loss.pause_warmup_steps": 1,
      "eval_every_steps": 2,
      "checkpoint_every_steps": 2,
      "log_every_steps": 1,
      "progress_bar": False,
      "write_report": False,
      "model.dtype": "float32",
      "model.remat_policy": "none",
      "loss.vocab_chunk": 64,
      "optimizer.warmup_steps": 1,
    }
  )
  train.train_and_evaluate(c, str(tmp_path / "run"))
  out = tmp_path / "out"
  analyze.analyze_run(str(tmp_path / "run"), out=str(out), min_count=1, tagged_text=str(tmp_path / "tagged.txt"))
  saved = json.load(open(out / "words.json"))["words"]
  summary = json.load(open(out / "pause_stats.json"))["summary"]
  assert saved["tagged"] and saved["skipped_docs"] == [] and saved["aligned_docs"] == saved["num_docs"] > 1
  assert sum(g["count"] for g in saved["kinds"]) == summary["num_positions"]
  assert sum(g["count"] for g in saved["by_tag"]) == saved["final_vs_internal"][0]["count"] > 0
  assert {g["name"] for g in saved["after_words"]} <= {w for w, _ in _HF_LEXICON}
  assert {g["name"] for g in saved["by_tag"]} <= {t for _, t in _HF_LEXICON}
  assert saved["kinds"][wa.START]["count"] > 0  # e.g. "Ġcat" of "cats": the byte-level pieces form words
