"""gs:// workdirs and data on a real GCS emulator (fake-gcs-server, see tests/gcs_emulator.py).

Each test gets a fresh bucket; every client (gcsfs through etils.epath, tensorstore under
orbax, tensorboardX's GCS writer, array_record under tfds.data_source) talks to the emulator.
Where a local run exists, the gs:// run must give exactly the same bytes or batches.
"""

import os
import struct
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from cyb_jax import metrics_writer
from cyb_jax.data import make_data
from cyb_jax.data import text
from cyb_jax.data import tfds_source
from tests import test_data_text
from tests import test_data_tfds
from tests import tiny


def test_the_fixture_points_clients_at_a_fresh_bucket(gcs_bucket, gcs_emulator):
  assert gcs_bucket.startswith("gs://cyb-test-")
  for name in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
    assert os.environ[name] == gcs_emulator.url
  root = epath.Path(gcs_bucket)
  assert list(root.iterdir()) == []
  (root / "a" / "b.bin").write_bytes(b"\x00\x01payload")
  assert (root / "a" / "b.bin").read_bytes() == b"\x00\x01payload"
  assert [p.name for p in (root / "a").iterdir()] == ["b.bin"]


# ----------------------------------------------------------------------------- metrics and TensorBoard


def _events(folder: epath.Path) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in every TensorBoard event file under `folder`, sorted."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  out = []
  for path in folder.iterdir():
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
      out.extend((v.tag, event.step, v.simple_value) for v in event.summary.value)
      i += 12 + length + 4
  return sorted(out)


def _log_run(workdir: str) -> None:
  """Two writer sessions: steps 1-3, then a resume from step 2 that logs step 3 again and step 4."""
  writer = metrics_writer.MetricsWriter(workdir)
  for step in (1, 2, 3):
    writer.write(step, {"train/loss": 1.0 / step, "eval/halt_probs": np.array([0.5, 0.25 * step])})
  writer.close()
  resumed = metrics_writer.MetricsWriter(workdir)
  resumed.truncate_after(2)
  for step in (3, 4):
    resumed.write(step, {"train/loss": 0.5 / step, "eval/halt_probs": np.array([0.75, 0.125])})
  resumed.close()


def test_metrics_and_events_on_gcs_match_a_local_run(gcs_bucket, tmp_path):
  workdir = f"{gcs_bucket}/run"
  _log_run(workdir)
  _log_run(str(tmp_path))
  # metrics.jsonl: the same bytes as the local (appended) file, read back whole.
  remote = epath.Path(workdir) / "metrics.jsonl"
  assert remote.read_bytes() == (tmp_path / "metrics.jsonl").read_bytes()
  rows = metrics_writer.read_metrics(workdir)
  assert rows == [
    {"step": 1, "train/loss": 1.0, "eval/halt_probs": [0.5, 0.25]},
    {"step": 2, "train/loss": 0.5, "eval/halt_probs": [0.5, 0.5]},
    {"step": 3, "train/loss": 0.5 / 3, "eval/halt_probs": [0.75, 0.125]},
    {"step": 4, "train/loss": 0.125, "eval/halt_probs": [0.75, 0.125]},
  ]
  assert rows == metrics_writer.read_metrics(str(tmp_path))
  # TensorBoard: one event file per writer session, every scalar written (step 3 twice: TensorBoard
  # shows the newest), exactly as locally.
  remote_tb = epath.Path(workdir) / "tensorboard"
  assert len(list(remote_tb.iterdir())) == 2
  events = _events(remote_tb)
  assert events == _events(epath.Path(tmp_path) / "tensorboard")
  assert ("train/loss", 3, pytest.approx(0.5 / 3)) in events and ("eval/halt_probs/1", 4, 0.125) in events
  assert len(events) == 5 * 3


def test_read_metrics_of_an_empty_gcs_workdir(gcs_bucket):
  assert metrics_writer.read_metrics(f"{gcs_bucket}/never_ran") == []


# ----------------------------------------------------------------------------- text files


def _upload_tree(local_root, remote_root: str) -> None:
  for folder, _, names in os.walk(local_root):
    for name in names:
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, local_root)
      (epath.Path(remote_root) / rel).write_bytes(epath.Path(path).read_bytes())


def test_text_globs_on_gcs_match_the_same_tree_locally(gcs_bucket, tmp_path):
  local = tmp_path / "tree"
  test_data_text.write_glob_tree(local)
  remote = f"{gcs_bucket}/tree"
  _upload_tree(local, remote)

  def found(pattern):
    try:
      return text.find_text_files(pattern)
    except ValueError as e:
      assert "matches no files" in str(e)
      return []

  for pattern in test_data_text.GLOB_PATTERNS:
    want = [p.replace(str(local), remote, 1) for p in found(f"{local}/{pattern}")]
    assert found(f"{remote}/{pattern}") == want, pattern
  assert text.find_text_files(remote) == [p.replace(str(local), remote, 1) for p in text.find_text_files(str(local))]
  with pytest.raises(ValueError, match=f"data.source text pattern '{remote}/nothing/\\*.txt' matches no files.$"):
    text.find_text_files(f"{remote}/nothing/*.txt")


def test_text_run_on_gcs_matches_a_local_run(gcs_bucket, tmp_path):
  pattern = test_data_text.write_corpus(tmp_path / "corpus")
  _upload_tree(tmp_path / "corpus", f"{gcs_bucket}/corpus")
  local = make_data(test_data_text.text_config(pattern), seed=1, workdir=str(tmp_path / "run"))
  workdir = f"{gcs_bucket}/run"
  remote = make_data(test_data_text.text_config(f"{gcs_bucket}/corpus/*.txt"), seed=1, workdir=workdir)
  # The tokenizer is trained into the gs:// workdir: the same model as locally.
  model = epath.Path(workdir) / "tokenizer.model"
  assert remote.info.tokenizer_path == str(model)
  assert model.read_bytes() == (tmp_path / "run" / "tokenizer.model").read_bytes()
  for _ in range(2):
    tiny.assert_equal_batches(next(remote.train), next(local.train))
  for a, b in zip(remote.eval_batches, local.eval_batches):
    tiny.assert_equal_batches(a, b)
  given = make_data(
    test_data_text.text_config(f"{gcs_bucket}/corpus", tokenizer=str(model)), seed=1, workdir=f"{gcs_bucket}/other"
  )
  assert given.info.tokenizer_path == str(model) and not epath.Path(f"{gcs_bucket}/other").exists()


# ----------------------------------------------------------------------------- orbax checkpoints


def test_orbax_checkpoint_manager_saves_and_restores_on_gcs(gcs_bucket):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = epath.Path(gcs_bucket) / "run" / "checkpoints"
  tree = {
    "params": {"w": jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4), "b": jnp.array([1, -2], jnp.int32)},
    "step": jnp.array(0, jnp.int32),
  }
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  with ocp.CheckpointManager(directory, options=options) as manager:
    for step in (3, 6, 9):
      state = jax.tree.map(lambda x, k=step: x * k, tree)
      assert manager.save(step, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  with ocp.CheckpointManager(directory, options=options) as manager:
    assert manager.all_steps() == [6, 9] and manager.latest_step() == 9
    restored = manager.restore(9, args=ocp.args.StandardRestore(jax.tree.map(jnp.zeros_like, tree)))
  jax.tree.map(lambda got, want: np.testing.assert_array_equal(np.asarray(got), np.asarray(want) * 9), restored, tree)
  assert sorted(p.name for p in directory.iterdir()) == ["6", "9"]


# ----------------------------------------------------------------------------- TFDS ArrayRecord


def test_prepare_data_uploads_and_runs_read_tfds_from_gcs(gcs_bucket, tmp_path):
  data_dir = f"{gcs_bucket}/tfds"
  test_data_tfds.run_prepare_data("--dataset=tiny_text_lines", f"--data_dir={data_dir}")
  variant = epath.Path(data_dir) / "tiny_text_lines" / "1.0.0"
  assert sorted(p.name for p in variant.iterdir()) == [
    "dataset_info.json",
    "features.json",
    "tiny_text_lines-test.array_record-00000-of-00001",
    "tiny_text_lines-train.array_record-00000-of-00001",
  ]
  for split in ("train", "test"):
    source = tfds_source.open_split("tiny_text_lines", split, data_dir)
    assert sorted(tfds_source.record_text(r, "text") for r in source) == test_data_tfds.expected_tiny_texts(split)
  # A run reading from gs:// sees what a run reading a local copy sees.
  local_dir = tmp_path / "tfds"
  test_data_tfds.run_prepare_data("--dataset=tiny_text_lines", f"--data_dir={local_dir}")
  cfg = lambda d: tiny.data_config(
    source="tfds:tiny_text_lines",
    tfds_data_dir=d,
    seq_len=16,
    batch_size=4,  # noqa: E731
    eval_batches=1,
    spm_vocab_size=320,
    spm_max_sentences=100,
  )
  remote = make_data(cfg(data_dir), seed=2, workdir=f"{gcs_bucket}/run")
  local = make_data(cfg(str(local_dir)), seed=2, workdir=str(tmp_path / "run"))
  for _ in range(3):
    tiny.assert_equal_batches(next(remote.train), next(local.train))
  tiny.assert_equal_batches(remote.eval_batches[0], local.eval_batches[0])
  assert "tensorflow" not in sys.modules


def test_an_interrupted_upload_is_not_a_prepared_dataset(gcs_bucket, tmp_path):
  data_dir = f"{gcs_bucket}/tfds"
  variant = epath.Path(data_dir) / "tiny_text_lines" / "1.0.0"
  (variant / "tiny_text_lines-train.array_record-00000-of-00003").write_bytes(b"partial")
  with pytest.raises(ValueError, match="is not prepared in data_dir"):
    tfds_source.open_split("tiny_text_lines", "train", data_dir)
  test_data_tfds.run_prepare_data(
    "--dataset=tiny_text_lines", f"--data_dir={data_dir}", f"--staging_dir={tmp_path / 'staging'}"
  )
  assert "tiny_text_lines-train.array_record-00000-of-00003" not in [p.name for p in variant.iterdir()]
  assert (tmp_path / "staging" / "tiny_text_lines" / "1.0.0" / "dataset_info.json").exists()  # kept
  assert len(tfds_source.open_split("tiny_text_lines", "train", data_dir)) == 30


def test_unprepared_dataset_on_gcs_fails_fast_naming_the_command(gcs_bucket):
  data_dir = f"{gcs_bucket}/tfds"
  start = time.monotonic()
  with pytest.raises(ValueError) as raised:
    tfds_source.open_split("lm1b", "train", data_dir)
  elapsed = time.monotonic() - start
  assert str(raised.value) == (
    f'TFDS dataset "lm1b" (data.source="tfds:lm1b") is not prepared in data_dir \'{data_dir}\', and a run '
    "never downloads it. Prepare it once, as ArrayRecord files, with:\n"
    f"  python -m cyb_jax.cli.prepare_data --dataset=lm1b --data_dir={data_dir}"
  )
  assert elapsed < 5.0, f"took {elapsed:.1f} s"
  assert list(epath.Path(gcs_bucket).iterdir()) == []
