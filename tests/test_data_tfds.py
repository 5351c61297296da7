"""Tests of the TFDS source: `tfds.data_source` under `tfds.testing.mock_data` (no TensorFlow, no download)."""

import functools
import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cyb_jax.data import make_data
from cyb_jax.data import packing
from cyb_jax.data import tfds_source
from tests import tiny

NUM_RECORDS = 40


@pytest.fixture
def mocked_tfds():
  # USE_CODE: examples come from the builder's feature spec (lm1b: one Text feature "text"),
  # and tfds.data_source returns random-access ArrayRecord sources over them.
  with tfds.testing.mock_data(num_examples=NUM_RECORDS, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


_tfds_config = functools.partial(tiny.data_config, source="tfds:lm1b", seq_len=16, batch_size=4,
                                 eval_batches=2, spm_vocab_size=320, spm_max_sentences=100)


def test_tfds_batches_are_packed_text(mocked_tfds, tmp_path):
  bundle = make_data(_tfds_config(), seed=0, workdir=str(tmp_path))
  batch = next(bundle.train)
  assert set(batch) == {"inputs", "targets", "weights", "segment_ids", "positions"}
  assert all(v.shape == (4, 16) for v in batch.values())
  assert batch["weights"].sum() > 0 and (batch["segment_ids"] >= 1).all()
  assert (tmp_path / "tokenizer.model").exists()
  # Every weighted target continues its document: decoding a row's first segment gives record text.
  texts = {tfds_source.record_text(r, "text") for r in tfds.data_source("lm1b", split="train")}
  row_ids = batch["inputs"][0][batch["segment_ids"][0] == 1]
  assert any(bundle.info.decode(row_ids) in t for t in texts)
  assert "tensorflow" not in sys.modules


def test_tfds_resume_yields_the_uninterrupted_batches(mocked_tfds, tmp_path):
  cfg = _tfds_config()
  run = make_data(cfg, seed=3, workdir=str(tmp_path)).train
  for _ in range(7):  # more than one epoch of 40 short records
    next(run)
  state = json.loads(json.dumps(run.get_state()))
  assert set(state) == {"kind", "process_index", "doc", "offset", "batch_index", "fingerprint"}
  expected = [next(run) for _ in range(4)]
  resumed = make_data(cfg, seed=3, workdir=str(tmp_path)).train
  resumed.set_state(state)
  for want in expected:
    tiny.assert_equal_batches(next(resumed), want)


def test_tfds_seed_changes_order_but_not_eval(mocked_tfds, tmp_path):
  cfg = _tfds_config()
  a = make_data(cfg, seed=0, workdir=str(tmp_path))
  b = make_data(cfg, seed=1, workdir=str(tmp_path))
  assert not np.array_equal(next(a.train)["inputs"], next(b.train)["inputs"])
  parts = [make_data(cfg, seed=0, workdir=str(tmp_path), process_index=p, process_count=2) for p in range(2)]
  assert len(a.eval_batches) == 2
  for j in range(2):
    tiny.assert_equal_batches(a.eval_batches[j], b.eval_batches[j])
    tiny.assert_equal_batches(packing.concat_batches([p.eval_batches[j] for p in parts]), a.eval_batches[j])
  assert all(next(p.train)["inputs"].shape == (2, 16) for p in parts)


def test_sharded_order_partitions_each_epoch():
  for epoch in range(2):
    orders = [tfds_source.ShardedOrder(10, seed=5, process_index=p, process_count=3) for p in range(3)]
    seen = [[o.record(epoch * o.per_epoch + j) for j in range(o.per_epoch)] for o in orders]
    assert sorted(sum(seen, [])) == list(range(10))
  first = [o.record(j) for o, j in zip(orders, range(3))]
  again = [tfds_source.ShardedOrder(10, seed=5, process_index=p, process_count=3).record(p) for p in range(3)]
  assert first == again


def test_bad_tfds_configs_fail_fast_and_write_nothing(mocked_tfds, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="data.tfds_text_key='content' is not a feature of the records; they have \\['text'\\]"):
    make_data(_tfds_config(tfds_text_key="content"), seed=0, workdir=str(workdir))
  with pytest.raises(ValueError, match="TFDS cannot open data.source=\"tfds:no_such_dataset\""):
    make_data(_tfds_config(source="tfds:no_such_dataset"), seed=0, workdir=str(workdir))
  with pytest.raises(ValueError, match="tfds_eval_split is empty but data.eval_batches=2"):
    make_data(_tfds_config(tfds_eval_split=""), seed=0, workdir=str(workdir))
  assert not workdir.exists()
