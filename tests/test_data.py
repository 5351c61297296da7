"""Tests of the data layer: config validation, packing, the synthetic task, determinism and resume."""

import functools
import json

import numpy as np
import pytest

from cyb_jax.data import config as config_lib
from cyb_jax.data import default_data_config
from cyb_jax.data import flat_stream
from cyb_jax.data import make_data
from cyb_jax.data import packing
from cyb_jax.data import streaming
from cyb_jax.data import synthetic
from tests import tiny

SEQ_LEN = 48
BATCH = 4


_synthetic_config = functools.partial(tiny.data_config, seq_len=SEQ_LEN, batch_size=BATCH, eval_batches=2)


# ----------------------------------------------------------------------------- config


def test_default_config_has_every_field_and_is_locked():
  cfg = default_data_config()
  for field in (
    "source",
    "seq_len",
    "batch_size",
    "eval_batches",
    "doc_per",
    "eval_fraction",
    "tfds_train_split",
    "tfds_eval_split",
    "tfds_text_key",
    "tfds_data_dir",
    "tokenizer",
    "spm_vocab_size",
    "spm_max_sentences",
    "synthetic",
  ):
    assert field in cfg, field
  assert config_lib.validate_data_config(cfg).kind == "synthetic"
  with pytest.raises(AttributeError):
    cfg.seqlen = 3  # a typo must not be silently added


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"source": "parquet:/x"}, "Unknown data.source='parquet:/x'"),
    ({"source": "text:"}, "names no path"),
    ({"source": "tfds:bad name!"}, "is not a TFDS dataset"),
    ({"seq_len": 1}, "data.seq_len=1 is out of range"),
    ({"seq_len": 10}, "data.seq_len=10 is too short for the synthetic task"),
    ({"batch_size": 0}, "data.batch_size=0 is out of range"),
    ({"doc_per": "sentence"}, "data.doc_per='sentence' is not one of"),
    ({"eval_fraction": 1.0}, "data.eval_fraction=1.0 must be a number in [0, 1)"),
  ],
)
def test_bad_config_fails_fast_and_writes_nothing(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  cfg = _synthetic_config(**overrides)
  with pytest.raises(ValueError) as e:
    make_data(cfg, seed=0, workdir=str(workdir))
  assert message in str(e.value)
  assert not workdir.exists()


def test_bad_synthetic_and_process_values_name_the_value(tmp_path):
  cfg = _synthetic_config()
  cfg.synthetic.min_digits = 4
  cfg.synthetic.max_digits = 2
  with pytest.raises(ValueError, match="min_digits=4 exceeds data.synthetic.max_digits=2"):
    make_data(cfg, seed=0, workdir=str(tmp_path))
  cfg = _synthetic_config(batch_size=6)
  with pytest.raises(ValueError, match="batch_size=6 .* divisible by process_count=4"):
    make_data(cfg, seed=0, workdir=str(tmp_path), process_count=4)
  with pytest.raises(ValueError, match="process_index=2"):
    make_data(_synthetic_config(), seed=0, workdir=str(tmp_path), process_index=2, process_count=2)
  with pytest.raises(ValueError, match="seed=-1"):
    make_data(_synthetic_config(), seed=-1, workdir=str(tmp_path))
  assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- packing


def test_pack_windows_hand_example():
  # Row 0: document 7 = [5 6 7 8] ends, document 9 = [1 2 ...] starts and continues in row 1.
  # Row 1: [2 3] end document 9, then padding.
  tokens = np.array([[5, 6, 7, 8, 1, 2], [2, 3, 0, 0, 0, 0]])
  docs = np.array([[7, 7, 7, 7, 9, 9], [9, 9, -1, -1, -1, -1]])
  b = packing.pack_windows(tokens, docs, pad_id=0)
  np.testing.assert_array_equal(b["inputs"], [[5, 6, 7, 8, 1], [2, 3, 0, 0, 0]])
  np.testing.assert_array_equal(b["targets"], [[6, 7, 8, 0, 2], [3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b["weights"], [[1, 1, 1, 0, 1], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 1, 2], [1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 3, 0], [0, 1, 0, 0, 0]])
  assert {k: v.dtype for k, v in b.items()} == {
    "inputs": np.int32,
    "targets": np.int32,
    "weights": np.float32,
    "segment_ids": np.int32,
    "positions": np.int32,
  }


def _random_corpus(rng, num_docs, max_len):
  docs = [rng.integers(1, 50, rng.integers(2, max_len)) for _ in range(num_docs)]
  return docs, flat_stream.FlatCorpus.from_documents(docs)


def test_stream_rows_drop_nothing_and_keep_invariants():
  rng = np.random.default_rng(0)
  docs, corpus = _random_corpus(rng, num_docs=30, max_len=3 * SEQ_LEN)  # many docs longer than a row
  stream = flat_stream.ShuffledStream(corpus, seed=3)
  num_rows = -(-corpus.num_tokens // SEQ_LEN) + 1  # past the end of epoch 0
  b = stream.rows(0, num_rows, SEQ_LEN, pad_id=0)

  order, _ = stream.epoch(0)
  expected_targets = np.concatenate([docs[d][1:] for d in order])
  expected_inputs = np.concatenate([docs[d][:-1] for d in order])
  w = b["weights"].reshape(-1) > 0
  got_targets = b["targets"].reshape(-1)[w]
  got_inputs = b["inputs"].reshape(-1)[w]
  n = len(expected_targets)
  np.testing.assert_array_equal(got_targets[:n], expected_targets)
  np.testing.assert_array_equal(got_inputs[:n], expected_inputs)

  # Segment ends (the next input is a new segment) are exactly the weight-0 positions.
  seg = b["segment_ids"]
  assert (seg >= 1).all()  # the training stream never pads
  np.testing.assert_array_equal(seg[:, 0], 1)
  assert set(np.unique(np.diff(seg, axis=1))) <= {0, 1}
  new_segment_next = np.diff(seg, axis=1) == 1
  np.testing.assert_array_equal(b["weights"][:, :-1] == 0, new_segment_next)
  # Positions restart at 0 on each segment and count up by one inside it.
  starts = np.concatenate([np.ones((num_rows, 1), bool), new_segment_next], axis=1)
  np.testing.assert_array_equal(b["positions"][starts], 0)
  np.testing.assert_array_equal(np.diff(b["positions"], axis=1)[~new_segment_next], 1)


def test_stream_rows_are_computed_directly_and_epochs_differ():
  rng = np.random.default_rng(1)
  _, corpus = _random_corpus(rng, num_docs=20, max_len=20)
  stream = flat_stream.ShuffledStream(corpus, seed=0)
  all_rows = stream.rows(0, 40, SEQ_LEN // 4, pad_id=0)
  part = flat_stream.ShuffledStream(corpus, seed=0).rows(17, 5, SEQ_LEN // 4, pad_id=0)
  tiny.assert_equal_batches(packing.slice_rows(all_rows, 17, 22), part)
  assert not np.array_equal(stream.epoch(0)[0], stream.epoch(1)[0])
  assert not np.array_equal(stream.epoch(0)[0], flat_stream.ShuffledStream(corpus, seed=1).epoch(0)[0])


def test_ordered_rows_pad_after_the_end():
  docs = [np.array([1, 2, 3]), np.array([4, 5])]
  b = flat_stream.ordered_rows(flat_stream.FlatCorpus.from_documents(docs), 2, 3, pad_id=0)
  np.testing.assert_array_equal(b["inputs"], [[1, 2, 3], [4, 5, 0]])
  np.testing.assert_array_equal(b["targets"], [[2, 3, 0], [5, 0, 0]])
  np.testing.assert_array_equal(b["weights"], [[1, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1], [1, 1, 0]])


def test_stream_packer_matches_the_flat_stream_and_resumes():
  rng = np.random.default_rng(2)
  lengths = rng.integers(0, 3 * SEQ_LEN // 4, 200)  # some documents empty, some longer than a row
  lengths[:3] = 0  # the stream starts with empty documents
  docs = [rng.integers(1, 50, n) for n in lengths]
  doc_at = lambda q: docs[q % len(docs)]

  def packer():
    return streaming.StreamPacker(doc_at, num_rows=3, seq_len=SEQ_LEN // 4, pad_id=0, max_empty_docs=50)

  run = packer()
  batches = [run.next_batch() for _ in range(12)]
  # The same rows as cutting the concatenation of the non-empty documents.
  nonempty = [q for q in range(len(docs)) if len(docs[q])]
  tokens = np.concatenate([docs[q] for q in nonempty])
  doc_ids = np.concatenate([np.full(len(docs[q]), q) for q in nonempty])
  pos = packing.window_positions(0, 36, SEQ_LEN // 4)
  tiny.assert_equal_batches(packing.concat_batches(batches), packing.pack_windows(tokens[pos], doc_ids[pos], 0))

  fresh = packer()
  for _ in range(5):
    fresh.next_batch()
  state = json.loads(json.dumps(fresh.get_state()))
  resumed = packer()
  resumed.set_state(state)
  for want in batches[5:]:
    tiny.assert_equal_batches(resumed.next_batch(), want)

  silent = streaming.StreamPacker(lambda q: np.zeros(0, np.int32), num_rows=1, seq_len=4, pad_id=0, max_empty_docs=5)
  with pytest.raises(ValueError, match="5 consecutive documents .* have no tokens"):
    silent.next_batch()


# ----------------------------------------------------------------------------- synthetic task


def _encode(a, b, is_mul, max_digits=4):
  a, b = np.array([a], np.int64), np.array([b], np.int64)
  r = a * b if is_mul else a + b
  p = {
    "a": a,
    "b": b,
    "result": r,
    "la": np.array([len(str(a[0]))]),
    "lb": np.array([len(str(b[0]))]),
    "lr": np.array([len(str(r[0]))]),
    "is_mul": np.array([is_mul]),
  }
  tok, cat, length = synthetic.encode_problems(p, max_digits)
  n = int(length[0])
  return (
    synthetic.decode(tok[0, :n]),
    [synthetic.CATEGORY_NAMES[c] for c in cat[0, :n]],
    synthetic.LEVEL_OF_CATEGORY[cat[0, :n]].tolist(),
  )


@pytest.mark.parametrize(
  "a, b, is_mul, text, answer_categories, answer_levels",
  [
    # 57*68 = 3876: column 0 is one product (a lookup), column 1 sums two products, column 2 adds
    # a carry of 8 from column 1 to 5*6, then the leading digit and the closing ";".
    (57, 68, True, "57*68=6783;", ["mul_first", "mul_column", "mul_column", "mul_last", "mul_end"], [1, 4, 4, 2, 1]),
    # 7*345 = 2415: a product by a one-digit number (a carry chain).
    (
      7,
      345,
      True,
      "7*345=5142;",
      ["mul_first", "mul_by_digit", "mul_by_digit", "mul_last", "mul_end"],
      [1, 3, 3, 2, 1],
    ),
    (0, 5, True, "0*5=0;", ["mul_first", "mul_end"], [1, 1]),
    # 95+7 = 102: 5+7 = 12 (no carry in), 9 + carry, the carry-out digit.
    (95, 7, False, "95+7=201;", ["add_digits", "add_carry", "add_final", "add_end"], [2, 2, 1, 1]),
    # 123+45 = 168: the hundreds digit copies the 1 of 123.
    (123, 45, False, "123+45=861;", ["add_digits", "add_digits", "add_copy", "add_end"], [2, 2, 1, 1]),
    # 999+1 = 1000: the carry runs through digits where only 999 has a digit.
    (999, 1, False, "999+1=0001;", ["add_digits", "add_carry", "add_carry", "add_final", "add_end"], [2, 2, 2, 1, 1]),
  ],
)
def test_synthetic_categories_hand_checked(a, b, is_mul, text, answer_categories, answer_levels):
  got_text, categories, levels = _encode(a, b, is_mul)
  assert got_text == text
  eq = text.index("=")
  assert categories[: eq + 1] == ["operand"] * len(str(a)) + ["operator"] + ["operand"] * len(str(b)) + ["equals"]
  assert levels[: eq + 1] == [0] * (eq + 1)
  assert categories[eq + 1 :] == answer_categories
  assert levels[eq + 1 :] == answer_levels


def test_synthetic_rows_are_correct_arithmetic_and_labels_align():
  cfg = _synthetic_config(seq_len=64, batch_size=8)
  cfg.synthetic.max_digits = 4
  bundle = make_data(cfg, seed=5, workdir="/nonexistent-is-fine-for-synthetic")
  batch = next(bundle.train)
  num_problems = 0
  for row in range(cfg.batch_size):
    w = batch["weights"][row] > 0
    text = synthetic.decode(batch["inputs"][row][w]) + synthetic.decode(batch["targets"][row][w][-1:])
    assert text.startswith(";") and text.endswith(";")
    for problem in text[1:-1].split(";"):
      lhs, answer = problem.split("=")
      op = "*" if "*" in lhs else "+"
      a, b = (int(x) for x in lhs.split(op))
      assert int(answer[::-1]) == (a * b if op == "*" else a + b), problem
      assert 1 <= len(str(a)) <= 4 and 1 <= len(str(b)) <= 4
      num_problems += 1
    # Difficulty: -1 exactly where the weight is 0, 0 on targets before "=", >= 1 on answer tokens.
    d, inputs = batch["difficulty"][row], batch["inputs"][row]
    np.testing.assert_array_equal(d == -1, ~w)
    col = np.arange(cfg.seq_len)
    last_eq = np.maximum.accumulate(np.where(inputs == synthetic.EQUALS_ID, col, -1))
    last_sep = np.maximum.accumulate(np.where(inputs == synthetic.SEP_ID, col, -1))
    in_answer = last_eq > last_sep
    assert (d[w & ~in_answer] == 0).all()
    assert (d[w & in_answer] >= 1).all()
  assert num_problems > 4 * cfg.batch_size
  assert bundle.info.vocab_size == synthetic.VOCAB_SIZE and bundle.info.pad_id == 0
  assert bundle.info.difficulty_names == ("noise", "lookup", "local", "carry_chain", "multi_product")
  assert bundle.info.decode(bundle.info.encode(";12*3=63;")) == ";12*3=63;"
  assert [bundle.info.piece(i) for i in (0, 1, 12, 14)] == ["<pad>", "0", "*", ";"]


def test_synthetic_mul_fraction_and_digit_range_are_respected():
  rng = np.random.default_rng(0)
  p = synthetic.draw_problems(rng, 20_000, min_digits=2, max_digits=3, mul_fraction=0.25)
  assert abs(p["is_mul"].mean() - 0.25) < 0.02
  assert set(np.unique(p["la"])) == {2, 3}
  assert (p["a"] >= 10).all() and (p["a"] <= 999).all()
  np.testing.assert_array_equal(p["la"], [len(str(x)) for x in p["a"]])
  np.testing.assert_array_equal(p["lr"], [len(str(x)) for x in p["result"]])


# ----------------------------------------------------------------------------- determinism and resume


def test_synthetic_determinism_seed_and_eval_independence(tmp_path):
  cfg = _synthetic_config()
  a = make_data(cfg, seed=0, workdir=str(tmp_path))
  b = make_data(cfg, seed=0, workdir=str(tmp_path))
  c = make_data(cfg, seed=1, workdir=str(tmp_path))
  batch_a, batch_b, batch_c = next(a.train), next(b.train), next(c.train)
  tiny.assert_equal_batches(batch_a, batch_b)
  assert not np.array_equal(batch_a["inputs"], batch_c["inputs"])
  assert len(a.eval_batches) == 2
  for ea, ec in zip(a.eval_batches, c.eval_batches):
    tiny.assert_equal_batches(ea, ec)  # the eval set does not depend on the seed
  assert not np.array_equal(a.eval_batches[0]["inputs"], batch_a["inputs"])
  assert not any(tmp_path.iterdir())  # the synthetic source writes nothing


def test_resume_yields_the_uninterrupted_batches(tmp_path):
  cfg = _synthetic_config()
  run = make_data(cfg, seed=7, workdir=str(tmp_path)).train
  for _ in range(3):
    next(run)
  state = json.loads(json.dumps(run.get_state()))  # survives a JSON round trip
  expected = [next(run) for _ in range(2)]
  resumed = make_data(cfg, seed=7, workdir=str(tmp_path)).train
  resumed.set_state(state)
  for want in expected:
    tiny.assert_equal_batches(next(resumed), want)


def test_set_state_rejects_other_data_settings(tmp_path):
  state = make_data(_synthetic_config(), seed=7, workdir=str(tmp_path)).train.get_state()
  other = make_data(_synthetic_config(), seed=8, workdir=str(tmp_path)).train
  with pytest.raises(ValueError, match="seed: saved 7, now 8"):
    other.set_state(state)
  with pytest.raises(ValueError, match="kind 'indexed' from a state of kind 'stream'"):
    other.set_state({**state, "kind": "stream"})


def test_process_slices_tile_the_global_batch(tmp_path):
  cfg = _synthetic_config(batch_size=6)
  whole = make_data(cfg, seed=2, workdir=str(tmp_path))
  parts = [make_data(cfg, seed=2, workdir=str(tmp_path), process_index=p, process_count=3) for p in range(3)]
  for _ in range(2):
    got = packing.concat_batches([next(p.train) for p in parts])
    assert all(v.shape[0] == 6 for v in got.values())
    tiny.assert_equal_batches(got, next(whole.train))
  for j in range(cfg.eval_batches):
    tiny.assert_equal_batches(packing.concat_batches([p.eval_batches[j] for p in parts]), whole.eval_batches[j])
