"""End-to-end tests of the trainer on tiny configs (embedded task, text files, TFDS)."""

import dataclasses
import json
import os
import re
import shutil
import signal
import threading
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cyb_jax import metrics_writer
from cyb_jax import model as model_lib
from cyb_jax.analysis import evaluation
from cyb_jax.training import checkpoint as ckpt_lib
from cyb_jax.training import components
from cyb_jax.training import init_from
from cyb_jax.training import train
from tests.tiny import tiny_config

pytestmark = pytest.mark.slow


def _train_rows(workdir):
  return [r for r in metrics_writer.read_metrics(workdir) if "train/loss" in r]


def test_trains_on_the_embedded_task_and_logs_what_the_tools_read(tmp_path):
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(tiny_config(write_report=True), workdir)
  assert result["stopped"] == "completed" and result["step"] == 6
  rows = metrics_writer.read_metrics(workdir)
  assert all("step" in r and "train_tokens" in r for r in rows)
  train_rows = _train_rows(workdir)
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["train/loss"]) for r in train_rows)
  eval_rows = [r for r in rows if "eval/nll_mix" in r]
  assert [r["step"] for r in eval_rows] == [3, 6]
  for key in ("eval/nll_mix", "eval/expected_pauses", "eval/threshold_nll", "eval/accuracy"):
    assert np.isfinite(eval_rows[-1][key]), key
  assert len(eval_rows[-1]["eval/halt_probs"]) == 3
  # Tokens seen grow by the number of weighted targets in each batch.
  tokens = [r["train_tokens"] for r in train_rows]
  assert all(0 < b - a <= 4 * 16 for a, b in zip(tokens, tokens[1:]))
  # MFU against the measured CPU peak: a fraction of it, on every row.
  assert all(0 < r["train/mfu"] < 1 for r in train_rows)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.exists(os.path.join(workdir, "report.md"))
  loaded = components.load_run(workdir)
  assert loaded.step == 6 and loaded.model_cfg.max_pauses == 2
  # The loaded parameters give the final eval figures again.
  sums = None
  for b in loaded.data.eval_batches:
    sums = evaluation.add_sums(
      sums,
      evaluation.eval_sums(
        loaded.params, {k: b[k] for k in train.BATCH_KEYS}, model_cfg=loaded.model_cfg, protocol=loaded.protocol
      ),
    )
  np.testing.assert_allclose(evaluation.figures(sums)["nll_mix"], result["nll_mix"], rtol=1e-5)


def test_resume_is_exact(tmp_path):
  """Stopped after step 3 and resumed, a run logs the losses of an uninterrupted run."""
  config = tiny_config(**{"loss.name": "cyb_dp", "loss.multiplier_rate": 0.5, "loss.budget": 0.0})
  full = str(tmp_path / "full")
  train.train_and_evaluate(config, full)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(full, resumed)
  # Forget everything after step 3, as if the run had been killed then.
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  with open(os.path.join(resumed, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 5, "train/loss": 123.0}) + "\n")  # a row the kill left
  train.train_and_evaluate(config, resumed)
  a, b = _train_rows(full), _train_rows(resumed)
  assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
  for ra, rb in zip(a, b):
    for key in ("train/loss", "train/multiplier", "train/expected_pauses", "train_tokens"):
      np.testing.assert_allclose(rb[key], ra[key], rtol=1e-6, err_msg=f"{key} step {ra['step']}")
  assert a[-1]["train/multiplier"] > 0  # the dual ascent really moved mu, and it resumed


def test_sigterm_saves_and_stops_cleanly_then_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_train_steps=400, checkpoint_every_steps=1000, eval_every_steps=1000)
  metrics_path = os.path.join(workdir, "metrics.jsonl")

  def preempt():
    deadline = time.time() + 300
    while time.time() < deadline:
      if os.path.exists(metrics_path) and len(_train_rows(workdir)) >= 2:
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.05)

  killer = threading.Thread(target=preempt, daemon=True)
  killer.start()
  result = train.train_and_evaluate(config, workdir)
  killer.join()
  assert result["stopped"] == "preempted"
  stopped_at = result["step"]
  assert 2 <= stopped_at < 400
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped_at)]
  config.num_train_steps = stopped_at + 2
  result = train.train_and_evaluate(config, workdir)
  assert result["stopped"] == "completed" and result["step"] == stopped_at + 2


def test_finetune_from_a_ce_checkpoint_adds_fresh_pause_parameters(tmp_path):
  ce_dir = str(tmp_path / "ce")
  train.train_and_evaluate(tiny_config(**{"loss.name": "ce", "model.max_pauses": 0}), ce_dir)
  ce = components.load_run(ce_dir)
  assert "pause_embed" not in ce.params
  config = tiny_config(**{"loss.name": "cyb_ap", "model.max_pauses": 2, "init_from": ce_dir, "num_train_steps": 1})
  # With learning rate ~0 the fine-tuned model still has the ce model's step-0 outputs.
  config.optimizer.learning_rate = 1e-12
  workdir = str(tmp_path / "ft")
  train.train_and_evaluate(config, workdir)
  ft = components.load_run(workdir)
  assert ft.params["pause_embed"].shape == (2, 32)
  np.testing.assert_allclose(ft.params["token_embed"], ce.params["token_embed"], atol=1e-6)
  tokens = ce.data.eval_batches[0]["inputs"]
  logits_ce = model_lib.step_logits(ce.model_cfg, ce.params, tokens)
  logits_ft = model_lib.step_logits(ft.model_cfg, ft.params, tokens)
  np.testing.assert_allclose(logits_ft[:, :, 0, :-1], logits_ce[:, :, 0, :-1], atol=1e-4)


def test_merge_init_params_rejects_a_shape_mismatch():
  small = model_lib.ModelConfig(vocab_size=10, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_pauses=1)
  big = model_lib.ModelConfig(vocab_size=10, num_layers=1, d_model=32, num_heads=2, mlp_dim=32, max_pauses=1)
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match=r"init_from: parameter .* has shape"):
    init_from.merge_init_params(
      model_lib.init_params(big, jax.random.key(0)), model_lib.init_params(small, jax.random.key(0))
    )


def test_merge_init_params_refuses_to_lose_a_checkpoints_layers():
  """Scanned layers (`decoder/layers/...`) into an unscanned model would copy no block, and an
  untied head from a tied base would start random: both refused; a pause model's pause
  embeddings and DK head may be left out (K = 0)."""
  cfg = model_lib.ModelConfig(vocab_size=10, num_layers=2, d_model=16, num_heads=2, mlp_dim=32, max_pauses=1)
  scanned = dataclasses.replace(cfg, scan_layers=True)
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match=r"no place in this model.*scan_layers"):
    init_from.merge_init_params(
      model_lib.init_params(cfg, jax.random.key(0)), model_lib.init_params(scanned, jax.random.key(0))
    )
  ce = dataclasses.replace(cfg, max_pauses=0)
  _, copied, kept = init_from.merge_init_params(
    model_lib.init_params(ce, jax.random.key(0)), model_lib.init_params(cfg, jax.random.key(1))
  )
  assert copied and not any("pause_embed" in k for k in copied + kept)
  untied = dataclasses.replace(cfg, tie_embeddings=False)
  tied = dataclasses.replace(cfg, tie_embeddings=True)
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match=r"not in the checkpoint.*vocab_head"):
    init_from.merge_init_params(
      model_lib.init_params(untied, jax.random.key(0)), model_lib.init_params(tied, jax.random.key(0))
    )


def test_resuming_with_another_model_shape_says_what_differs(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(num_train_steps=3), workdir)
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match=r"model.d_model: checkpoint 32 vs config 48"):
    train.train_and_evaluate(tiny_config(**{"model.d_model": 48}), workdir)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_train_steps=50, checkpoint_every_steps=1)
  config.optimizer.learning_rate = 1e38
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.warmup_steps = 0
  with pytest.raises(train.NonFiniteLossError, match=r"training loss is (nan|inf|-inf) at step"):
    train.train_and_evaluate(config, workdir)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  rows = _train_rows(workdir)
  assert steps and all(np.isfinite(r["train/loss"]) for r in rows)
  assert max(steps) == len(rows)  # every checkpoint belongs to a step with a finite loss


def _nan_config(**overrides):
  config = tiny_config(num_train_steps=50, **overrides)
  config.optimizer.learning_rate = 1e38
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.warmup_steps = 0
  return config


def test_a_non_finite_step_between_syncs_is_named_and_nothing_after_it_is_written(tmp_path):
  """The loop reads the on-device finite flags only at sync points, yet names the first bad step."""
  with pytest.raises(train.NonFiniteLossError) as every_step:
    train.train_and_evaluate(_nan_config(checkpoint_every_steps=1000), str(tmp_path / "dense"))
  first_bad = int(re.search(r"at step (\d+)", str(every_step.value)).group(1))
  assert 1 < first_bad < 8
  workdir = str(tmp_path / "sparse")
  config = _nan_config(log_every_steps=8, checkpoint_every_steps=8, eval_every_steps=8)
  with pytest.raises(
    train.NonFiniteLossError,
    match=rf"at step {first_bad}\b.*, the first non-finite step .* The last "
    r"good checkpoint is none",
  ):
    train.train_and_evaluate(config, workdir)
  assert not _train_rows(workdir)
  assert not os.listdir(os.path.join(workdir, "checkpoints"))


def test_the_train_step_returns_its_input_state_when_the_loss_is_not_finite():
  config = tiny_config()
  model_cfg = components.model_config(config, 16)
  tx, schedule = components.make_optimizer(config)
  loss = components.make_loss(config)
  state = train.init_state(jax.random.key(0), model_cfg=model_cfg, tx=tx, loss_state=loss.init_state())
  batch = {k: np.zeros((2, 8), np.int32) for k in train.BATCH_KEYS}
  batch["segment_ids"] = np.ones((2, 8), np.int32)
  step = jax.jit(lambda s, b: train.train_step(s, b, model_cfg=model_cfg, loss=loss, tx=tx, schedule=schedule))
  for weight, finite in ((1.0, True), (np.nan, False)):
    new_state, metrics = step(state, dict(batch, weights=np.full((2, 8), weight, np.float32)))
    assert bool(metrics["finite"]) == finite
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), new_state, state)
    assert all(jax.tree.leaves(same)) == (not finite), weight


def test_profile_steps_writes_a_trace_of_those_steps(tmp_path):
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(num_train_steps=3, profile_steps=(2, 3)), str(workdir))
  traces = list((workdir / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"profile_steps": (3, 1)}, r"profile_steps=\(3, 1\) must be empty"),
    ({"peak_flops_per_device": -1.0}, r"peak_flops_per_device=-1.0 must be None"),
    ({"loss.name": "hinge"}, r"loss.name='hinge' is unknown; allowed: \['ce', 'cyb_ap'"),
    ({"model.max_pauses": -1}, r"max_pauses=-1 must be >= 0"),
    ({"data.source": "text:/nonexistent/*.txt"}, r"/nonexistent/\*.txt"),
    ({"loss.name": "cyb_ap", "loss.gamma": 1.5}, r"gamma=1.5"),
    ({"loss.name": "cyb_va", "loss.kl": "sequence"}, r"kl='sequence'"),
    ({"loss.name": "ce"}, r"set model.max_pauses=0"),
    ({"num_train_steps": 0}, r"num_train_steps=0"),
    ({"loss.pause_warmup_steps": 6}, r"pause_warmup_steps=6 covers the whole run \(num_train_steps=6\)"),
  ],
)
def test_bad_configs_fail_fast_and_write_nothing(tmp_path, overrides, match):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_empty_text_files_fail_fast_and_write_nothing(tmp_path):
  (tmp_path / "a.txt").write_text("")
  (tmp_path / "b.txt").write_text("\n\n")
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="empty"):
    train.train_and_evaluate(tiny_config(**{"data.source": f"text:{tmp_path}/*.txt"}), str(workdir))
  assert not workdir.exists()


def test_trains_on_text_files_with_a_trained_tokenizer(tmp_path):
  corpus = tmp_path / "corpus.txt"
  rng = np.random.default_rng(0)
  words = ["the", "cat", "cats", "sat", "on", "mat", "mats", "dog", "dogs", "ran"]
  corpus.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(300)))
  workdir = str(tmp_path / "run")
  config = tiny_config(**{"data.source": f"text:{corpus}", "data.spm_vocab_size": 300, "write_report": True})
  result = train.train_and_evaluate(config, workdir)
  assert np.isfinite(result["nll_mix"])
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
  assert os.path.exists(os.path.join(workdir, "report.md"))


def test_trains_on_tfds_under_mock_data(tmp_path):
  config = tiny_config(
    **{"data.source": "tfds:lm1b", "data.spm_vocab_size": 320, "data.spm_max_sentences": 100, "num_train_steps": 3}
  )
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(result["nll_mix"]) and result["step"] == 3


def test_gradient_accumulation_matches_the_full_batch_step():
  config = tiny_config()
  model_cfg = model_lib.ModelConfig(vocab_size=16, num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_pauses=2)
  config.num_train_steps = 10
  tx, schedule = components.make_optimizer(config)
  loss = components.make_loss(config)
  rng = np.random.default_rng(0)
  batch = {
    "inputs": rng.integers(0, 16, (4, 8)).astype(np.int32),
    "targets": rng.integers(0, 16, (4, 8)).astype(np.int32),
    "weights": (rng.uniform(size=(4, 8)) > 0.3).astype(np.float32),
    "segment_ids": np.ones((4, 8), np.int32),
    "positions": np.tile(np.arange(8, dtype=np.int32), (4, 1)),
  }
  state = train.init_state(jax.random.key(0), model_cfg=model_cfg, tx=tx, loss_state=loss.init_state())
  outs = [
    jax.jit(
      lambda s, b, a=a: train.train_step(s, b, model_cfg=model_cfg, loss=loss, tx=tx, schedule=schedule, accum_steps=a)
    )(state, batch)
    for a in (1, 4)
  ]
  for other in outs[1:]:
    np.testing.assert_allclose(other[1]["loss"], outs[0][1]["loss"], rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), other[0].params, outs[0][0].params)


def test_chunked_loss_path_trains_like_the_full_path(tmp_path):
  a = train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "full"))
  b = train.train_and_evaluate(tiny_config(**{"num_train_steps": 2, "loss.vocab_chunk": 5}), str(tmp_path / "chunked"))
  np.testing.assert_allclose(b["nll_mix"], a["nll_mix"], rtol=1e-4)
  rows_a, rows_b = _train_rows(str(tmp_path / "full")), _train_rows(str(tmp_path / "chunked"))
  np.testing.assert_allclose([r["train/loss"] for r in rows_b], [r["train/loss"] for r in rows_a], rtol=1e-4)


def test_compatibility_ignores_runtime_fields_and_fills_missing_ones_with_defaults():
  cfg = model_lib.ModelConfig(vocab_size=10, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_pauses=1)
  meta = {"model": dataclasses.asdict(cfg)}
  older = {"model": {k: v for k, v in meta["model"].items() if k != "unroll_pause_scan"}}
  ckpt_lib.check_compatible(older, meta, what="old")  # a field added since: its default
  other_runtime = dataclasses.replace(cfg, remat_policy="full", dk_bias_init=3.0)
  ckpt_lib.check_compatible(meta, {"model": dataclasses.asdict(other_runtime)}, what="x")
  with pytest.raises(
    ckpt_lib.IncompatibleCheckpointError, match=r"model.shared_pause_embed: checkpoint False vs config True"
  ):
    ckpt_lib.check_compatible(
      older, {"model": dataclasses.asdict(dataclasses.replace(cfg, shared_pause_embed=True))}, what="old"
    )


def test_the_cli_points_the_compilation_cache_at_its_flag_unless_the_environment_has_one(monkeypatch, tmp_path):
  from cyb_jax.cli import train as cli  # pylint: disable=g-import-not-at-top

  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert cli.setup_compilation_cache(str(tmp_path / "xla"), explicit=False) == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    assert cli.setup_compilation_cache("~/.cache/cyb_jax/xla", explicit=False) == "/elsewhere"
    assert cli.setup_compilation_cache("", explicit=True) is None
    assert jax.config.jax_compilation_cache_dir is None
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_pause_warmup_switches_at_its_step_and_resumes_exactly_across_the_switch(tmp_path):
  config = tiny_config(**{"loss.name": "cyb_ap", "loss.pause_warmup_steps": 3})
  full = str(tmp_path / "full")
  train.train_and_evaluate(config, full)
  rows = _train_rows(full)
  # Row s is optimiser step s - 1: steps 0, 1, 2 are the warm-up, 3.. the CYB loss.
  assert [r["train/pause_warmup"] for r in rows] == [1, 1, 1, 0, 0, 0]
  resumed = str(tmp_path / "resumed")
  shutil.copytree(full, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))  # killed after step 3's checkpoint
  train.train_and_evaluate(config, resumed)
  np.testing.assert_allclose(
    [r["train/loss"] for r in _train_rows(resumed)], [r["train/loss"] for r in rows], rtol=1e-6
  )
  plain = str(tmp_path / "plain")
  train.train_and_evaluate(tiny_config(**{"loss.name": "cyb_ap"}), plain)
  assert _train_rows(plain)[0]["train/loss"] != rows[0]["train/loss"]  # the warm-up changed it
