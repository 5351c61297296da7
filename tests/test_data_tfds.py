"""Tests of the TFDS source: `tfds.data_source` under `tfds.testing.mock_data` (no TensorFlow, no download)."""

import functools
import json
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from cyb_jax.cli import prepare_data
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


_tfds_config = functools.partial(
  tiny.data_config,
  source="tfds:lm1b",
  seq_len=16,
  batch_size=4,
  eval_batches=2,
  spm_vocab_size=320,
  spm_max_sentences=100,
)


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
  with pytest.raises(
    ValueError, match="data.tfds_text_key='content' is not a feature of the records; they have \\['text'\\]"
  ):
    make_data(_tfds_config(tfds_text_key="content"), seed=0, workdir=str(workdir))
  with pytest.raises(ValueError, match='TFDS cannot open data.source="tfds:no_such_dataset"'):
    make_data(_tfds_config(source="tfds:no_such_dataset"), seed=0, workdir=str(workdir))
  with pytest.raises(ValueError, match="tfds_eval_split is empty but data.eval_batches=2"):
    make_data(_tfds_config(tfds_eval_split=""), seed=0, workdir=str(workdir))
  assert not workdir.exists()


# ----------------------------------------------------------------------------- prepared datasets

_WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


class TinyTextLines(tfds.core.GeneratorBasedBuilder):
  """A text dataset generated from code (no download), for the prepare and read-back tests."""

  VERSION = tfds.core.Version("1.0.0")
  NUM_RECORDS = {"train": 30, "test": 8}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n) for split, n in self.NUM_RECORDS.items()}

  def _generate_examples(self, split, num):
    for i in range(num):
      yield f"{split}{i}", {"text": _tiny_text(split, i)}


def _tiny_text(split: str, i: int) -> str:
  return f"{split} record {i}: " + " ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(i % 7 + 3))


def expected_tiny_texts(split: str) -> list[str]:
  """The texts of every record of `split` of TinyTextLines, sorted."""
  return sorted(_tiny_text(split, i) for i in range(TinyTextLines.NUM_RECORDS[split]))


def run_prepare_data(*args: str) -> None:
  """`python -m cyb_jax.cli.prepare_data ARGS` in this process (absl flags parsed, then restored)."""
  try:
    prepare_data.main(flags.FLAGS(["prepare_data", *args]))
  finally:
    flags.FLAGS.unparse_flags()


def test_prepare_data_builds_array_record_without_tensorflow(tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  run_prepare_data("--dataset=tiny_text_lines", f"--data_dir={data_dir}")
  variant = data_dir / "tiny_text_lines" / "1.0.0"
  assert sorted(p.name for p in variant.iterdir()) == [
    "dataset_info.json",
    "features.json",
    "tiny_text_lines-test.array_record-00000-of-00001",
    "tiny_text_lines-train.array_record-00000-of-00001",
  ]
  assert f"Prepared tiny_text_lines in {variant}" in capsys.readouterr().out
  for split in ("train", "test"):
    source = tfds_source.open_split("tiny_text_lines", split, str(data_dir))
    assert sorted(tfds_source.record_text(r, "text") for r in source) == expected_tiny_texts(split)
  # Prepared data is left alone.
  stamps = {p.name: p.stat().st_mtime_ns for p in variant.iterdir()}
  run_prepare_data("--dataset=tiny_text_lines", f"--data_dir={data_dir}")
  assert {p.name: p.stat().st_mtime_ns for p in variant.iterdir()} == stamps
  # The run reads it.
  cfg = _tfds_config(source="tfds:tiny_text_lines", tfds_data_dir=str(data_dir), eval_batches=1)
  bundle = make_data(cfg, seed=0, workdir=str(tmp_path / "run"))
  batch = next(bundle.train)
  first_doc = bundle.info.decode(batch["inputs"][0][batch["segment_ids"][0] == 1])
  assert any(first_doc in t for t in expected_tiny_texts("train"))
  assert "tensorflow" not in sys.modules


def test_prepare_data_rejects_a_malformed_name(tmp_path):
  expected = "--dataset='lm1b v2' is not a TFDS dataset; expected NAME\\[/CONFIG\\]\\[:VERSION\\]"
  with pytest.raises(ValueError, match=expected):
    prepare_data.prepare("lm1b v2", str(tmp_path))
  assert not any(tmp_path.iterdir())


def test_unprepared_dataset_fails_fast_naming_the_command(tmp_path):
  data_dir = tmp_path / "empty_tfds"
  data_dir.mkdir()
  start = time.monotonic()
  with pytest.raises(ValueError) as raised:
    make_data(_tfds_config(source="tfds:lm1b", tfds_data_dir=str(data_dir)), seed=0, workdir=str(tmp_path / "run"))
  elapsed = time.monotonic() - start
  assert str(raised.value) == (
    f'TFDS dataset "lm1b" (data.source="tfds:lm1b") is not prepared in data_dir \'{data_dir}\', and a run '
    "never downloads it. Prepare it once, as ArrayRecord files, with:\n"
    f"  python -m cyb_jax.cli.prepare_data --dataset=lm1b --data_dir={data_dir}"
  )
  assert elapsed < 5.0, f"took {elapsed:.1f} s"
  assert not any(data_dir.iterdir()) and not (tmp_path / "run").exists()


def test_a_dataset_prepared_as_tfrecord_is_named_with_the_fix(tmp_path):
  data_dir = tmp_path / "tfds"
  run_prepare_data("--dataset=tiny_text_lines", f"--data_dir={data_dir}")
  info_path = data_dir / "tiny_text_lines" / "1.0.0" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"  # as `tfds build` writes by default
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError) as raised:
    tfds_source.open_split("tiny_text_lines", "train", str(data_dir))
  assert str(raised.value) == (
    f"TFDS dataset \"tiny_text_lines\" is prepared in data_dir '{data_dir}' as tfrecord files, but "
    f"tfds.data_source reads ArrayRecord only. Remove {info_path.parent} and prepare it as ArrayRecord with:\n"
    f"  python -m cyb_jax.cli.prepare_data --dataset=tiny_text_lines --data_dir={data_dir}"
  )
  with pytest.raises(ValueError, match="already prepared in .* as tfrecord files; training reads ArrayRecord only"):
    prepare_data.prepare("tiny_text_lines", str(data_dir))
