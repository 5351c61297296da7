"""The MFU accounting: the peak table, the ratio, the model FLOP count, program bytes, the
profile window, and the trainer's start-up accounting, which never stops a run.

The model FLOP count is checked exactly against the ``dot_general``s of the traced train
step (``jax.make_jaxpr``: no backend, nothing compiled).
"""

import functools
import logging
import types

import jax
import jax._src.xla_bridge as xla_bridge
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import metrics_writer
from cyb_jax import model as model_lib
from cyb_jax.data import synthetic
from cyb_jax.model import flops
from cyb_jax.training import components
from cyb_jax.training import mfu
from cyb_jax.training import programs
from cyb_jax.training import steps
from cyb_jax.training import train
from tests.tiny import tiny_config


@pytest.mark.parametrize(
  "kind, peak",
  [
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
  ],
)
def test_table_gives_the_dense_bf16_peak_of_each_known_device(kind, peak):
  assert mfu.table_peak(kind) == peak


@pytest.mark.parametrize("kind", ["TPU v4 lite", "TPU v3", "cpu", "NVIDIA GeForce RTX 4090"])
def test_table_knows_no_peak_for_other_devices(kind):
  assert mfu.table_peak(kind) is None


def test_a_configured_peak_wins_and_zero_turns_mfu_off():
  assert mfu.peak_flops_per_device(3e9) == 3e9
  assert mfu.peak_flops_per_device(0) is None


@pytest.mark.parametrize("value", [-1.0, True, "fast"])
def test_a_bad_configured_peak_is_a_value_error(value):
  with pytest.raises(ValueError, match=r"peak_flops_per_device=.* must be None"):
    mfu.peak_flops_per_device(value)


def test_mfu_is_flops_done_over_flops_possible():
  assert mfu.mfu(flops_per_step=2e9, steps=10, seconds=4.0, peak=10e9) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="seconds=0"):
    mfu.mfu(1.0, 1, 0.0, 1.0)


def test_the_measured_cpu_peak_is_a_plausible_flop_rate():
  peak = mfu.measured_matmul_peak(size=256, seconds=0.2)
  assert 1e8 < peak < 1e14


def test_compiled_bytes_peak_is_argument_plus_output_plus_temp_less_the_donated_alias():
  x, w = jnp.ones((256, 256)), jnp.ones((256, 256))
  update = lambda x, w: x - 0.1 * w  # elementwise: with x donated, the result overwrites x
  kept = mfu.compiled_bytes(jax.jit(update).lower(x, w).compile())
  donated_program = jax.jit(update, donate_argnums=0).lower(x, w).compile()
  donated = mfu.compiled_bytes(donated_program)
  m = donated_program.memory_analysis()
  assert {k: donated[k] for k in ("argument", "output", "temp", "alias")} == dict(
    argument=m.argument_size_in_bytes,
    output=m.output_size_in_bytes,
    temp=m.temp_size_in_bytes,
    alias=m.alias_size_in_bytes,
  )
  for b in (kept, donated):
    assert b["peak"] == b["argument"] + b["output"] + b["temp"] - b["alias"]
  assert kept["alias"] == 0 and donated["alias"] == x.nbytes
  assert kept["argument"] == donated["argument"] == x.nbytes + w.nbytes  # alias counted in argument and output
  assert kept["output"] == donated["output"] == x.nbytes
  assert donated["peak"] < kept["peak"]  # here by x.nbytes: the result needs no buffer of its own


# ------------------------------------------------------------------------------------------
# Model FLOPs: the analytic count against the dot_generals of the traced train step.
# ------------------------------------------------------------------------------------------


def test_the_dot_general_counter_counts_a_scan_body_per_iteration_and_one_cond_branch():
  x, w = jnp.ones((8, 4)), jnp.ones((4, 4))
  matmul = 2 * 8 * 4 * 4

  def f(x, w):
    y = jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]
    return jax.lax.cond(y.sum() > 0, lambda: y @ w @ w, lambda: y @ w)

  assert flops.traced_matmul_flops(jax.make_jaxpr(f)(x, w).jaxpr) == 3 * matmul + 2 * matmul


def _traced_and_counted(**overrides) -> tuple[int, int, model_lib.ModelConfig, int, int]:
  """``(dot_general FLOPs of make_jaxpr(train_step), flops.train_step_flops, model config, B, N)``.

  The trainer's own step function (loss, gradient, AdamW) on abstract inputs: nothing runs.
  """
  config = tiny_config(**overrides)
  model_cfg = components.model_config(config, synthetic.VOCAB_SIZE)
  loss = components.make_loss(config)
  tx, schedule = components.make_optimizer(config)
  b, n = config.data.batch_size, config.data.seq_len
  state = jax.eval_shape(
    functools.partial(steps.init_state, model_cfg=model_cfg, tx=tx, loss_state=loss.init_state()), jax.random.key(0)
  )
  batch = {k: jax.ShapeDtypeStruct((b, n), jnp.float32 if k == "weights" else jnp.int32) for k in train.BATCH_KEYS}
  step = functools.partial(
    steps.train_step,
    model_cfg=model_cfg,
    loss=loss,
    tx=tx,
    schedule=schedule,
    accum_steps=config.optimizer.grad_accum_steps,
    vocab_chunk=components.vocab_chunk(config),
  )
  traced = flops.traced_matmul_flops(jax.make_jaxpr(step)(state, batch).jaxpr)
  return traced, flops.train_step_flops(model_cfg, b, n), model_cfg, b, n


_WINDOW = {"model.layer_types": ("sliding", "full"), "model.num_layers": 2, "model.sliding_window": 4}
_GQA = {"model.num_heads": 4, "model.num_kv_heads": 2, "model.head_dim": 8}
_GEMMA_LIKE = {
  "model.mlp_activation": "gelu_tanh",
  "model.qkv_bias": True,
  "model.out_bias": True,
  "model.qk_norm": True,
  "model.post_norms": True,
  "model.norm_plus_one": True,
  "model.scale_embeddings": True,
}
FLOP_CASES = {
  "private K0": {"model.max_pauses": 0},
  "private K1": {"model.max_pauses": 1},
  "private K3": {"model.max_pauses": 3},
  "visible K0": {"model.pause_layout": "visible", "model.max_pauses": 0},
  "visible K1": {"model.pause_layout": "visible", "model.max_pauses": 1},
  "visible K3": {"model.pause_layout": "visible", "model.max_pauses": 3},
  "GQA 4 query heads over 2, E 8": _GQA,
  "MQA visible K3": {
    "model.num_heads": 4,
    "model.num_kv_heads": 1,
    "model.pause_layout": "visible",
    "model.max_pauses": 3,
  },
  "GeGLU, biases, q/k and post norms": _GEMMA_LIKE,
  "tied embeddings": {"model.tie_embeddings": True},
  "untied, vocabulary padded 15 -> 24": {"model.vocab_pad_multiple": 24},
  "tied, vocabulary padded 15 -> 24": {"model.tie_embeddings": True, "model.vocab_pad_multiple": 24},
  "window, layers scanned": {**_WINDOW, "model.scan_layers": True},
  "window, private K3, pause scan unrolled": {**_WINDOW, "model.max_pauses": 3, "model.unroll_pause_scan": True},
  "window, visible K1, GQA": {**_WINDOW, **_GQA, "model.pause_layout": "visible", "model.max_pauses": 1},
  "2 micro-batches": {"optimizer.grad_accum_steps": 2},
}


@pytest.mark.parametrize("overrides", FLOP_CASES.values(), ids=FLOP_CASES.keys())
def test_model_flops_are_the_dot_generals_of_the_traced_train_step(overrides):
  traced, counted, _, _, _ = _traced_and_counted(**overrides)
  assert counted == traced


@pytest.mark.parametrize("loss_name, max_pauses", [("ce", 0), ("pause_ce", 2)])
def test_a_loss_that_never_reads_the_dk_logit_leaves_out_its_backward_products(loss_name, max_pauses):
  """``ce`` and ``pause_ce`` read only vocabulary logits: the DK row gets a symbolic-zero
  cotangent and autodiff drops its two backward products (gradients of the hidden state and
  of the DK kernel), 2 * 2 D FLOPs per slot. The model count includes them, as for any loss."""
  traced, counted, model_cfg, b, n = _traced_and_counted(**{"loss.name": loss_name, "model.max_pauses": max_pauses})
  slots = b * n * (max_pauses + 1)
  assert counted - traced == 2 * 2 * model_cfg.d_model * slots


def test_rematerialisation_adds_traced_products_but_no_model_flops():
  traced, counted, _, _, _ = _traced_and_counted(**{"model.remat_policy": "full"})
  assert traced > counted == _traced_and_counted()[1]


def test_without_pauses_the_count_is_six_per_weight_and_token_plus_attention():
  cfg = model_lib.ModelConfig(vocab_size=100, num_layers=3, d_model=64, num_heads=4, mlp_dim=128, max_pauses=0)
  b, n = 2, 16
  matmul_weights = 3 * (4 * 64 * 64 + 3 * 64 * 128) + 64 * (100 + 1)  # q, k, v, out; gate, up, down; head + DK
  attention = 3 * 4 * 64 * n * n * b * 3  # fwd + bwd, 4 H E per pair, N^2 pairs, B rows, L layers
  assert flops.train_step_flops(cfg, b, n) == 6 * matmul_weights * b * n + attention


def test_pause_slots_grow_the_count_linearly_in_private_and_quadratically_in_visible():
  def count(layout, k):
    cfg = model_lib.ModelConfig(
      vocab_size=64, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, max_pauses=k, pause_layout=layout
    )
    return flops.attention_pairs(cfg, 16)

  assert [count("private", k) for k in (0, 1, 2)] == [256, 2 * 256 + 16, 3 * 256 + 4 * 16]
  assert [count("visible", k) for k in (0, 1, 2)] == [256, 4 * 256, 9 * 256]


def _model_flops(**overrides) -> float:
  config = tiny_config(**overrides)
  model_cfg = components.model_config(config, synthetic.VOCAB_SIZE)
  batch = {k: jnp.zeros((4, 16), jnp.float32 if k == "weights" else jnp.int32) for k in train.BATCH_KEYS}
  return train.model_flops_per_device(model_cfg, batch)


def test_model_flops_do_not_depend_on_scans_remat_chunks_or_micro_batches():
  assert _model_flops() == _model_flops(
    **{
      "model.scan_layers": True,
      "model.remat_policy": "full",
      "loss.vocab_chunk": 8,
      "model.unroll_pause_scan": True,
      "optimizer.grad_accum_steps": 2,
    },
  )


def test_model_flops_per_device_divide_by_the_batchs_devices_or_the_count_given():
  cfg = model_lib.ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, max_pauses=1)
  total = flops.train_step_flops(cfg, 4, 16)
  abstract = {"inputs": jax.ShapeDtypeStruct((4, 16), jnp.int32)}
  placed = {"inputs": jax.device_put(jnp.zeros((4, 16), jnp.int32), jax.devices()[0])}
  assert programs.model_flops_per_device(cfg, abstract) == total  # no sharding: one device
  assert programs.model_flops_per_device(cfg, placed) == total
  assert programs.model_flops_per_device(cfg, abstract, num_devices=4) == total / 4
  with pytest.raises(ValueError, match="num_devices=0 must be an int >= 1"):
    programs.model_flops_per_device(cfg, abstract, num_devices=0)
  with pytest.raises(ValueError, match=r"must be \[batch_size, seq_len\] tokens, got shape \(64,\)"):
    programs.model_flops_per_device(cfg, {"inputs": jax.ShapeDtypeStruct((64,), jnp.int32)})
  with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
    flops.train_step_flops(cfg, 0, 16)


@pytest.mark.parametrize("value, expected", [((), None), ([], None), ((2, 3), (2, 3)), ((4, 4), (4, 4))])
def test_profile_steps_is_empty_or_an_ordered_pair(value, expected):
  assert mfu.check_profile_steps(value) == expected


@pytest.mark.parametrize("value", [(3, 2), (0, 2), (1,), (1, 2, 3), (1.0, 2)])
def test_bad_profile_steps_are_a_value_error(value):
  with pytest.raises(ValueError, match=r"profile_steps=.* must be empty \(off\) or two ints"):
    mfu.check_profile_steps(value)


# ------------------------------------------------------------------------------------------
# Accounting never stops a run: peaks of devices the program runs on, one warning per failure.
# ------------------------------------------------------------------------------------------


def _device(kind: str, platform: str, process_index: int = 0) -> types.SimpleNamespace:
  return types.SimpleNamespace(device_kind=kind, platform=platform, process_index=process_index)


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_peak_is_that_of_the_device_given_never_of_the_default_backend(caplog):
  assert mfu.peak_flops_per_device(device=_device("TPU v5 lite", "tpu")) == 197e12
  assert mfu.peak_flops_per_device(device=_device("NVIDIA H200", "gpu")) == 989e12
  assert not _warnings(caplog)
  # A CPU device of another process cannot be measured from here: no peak, one warning.
  assert mfu.peak_flops_per_device(device=_device("cpu", "cpu", process_index=1)) is None
  assert mfu.peak_flops_per_device(device=_device("TPU v3", "tpu")) is None
  assert len(_warnings(caplog)) == 2 and "'TPU v3' on platform 'tpu'" in _warnings(caplog)[1]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_configured_peak_must_be_finite(value):
  with pytest.raises(ValueError, match=r"must be None .* or a finite positive number"):
    mfu.check_configured_peak(value)


def test_or_warn_returns_the_value_or_none_after_one_warning(caplog):
  assert mfu.or_warn("adding", lambda a, b: a + b, 1, b=2) == 3
  assert mfu.or_warn("dividing", lambda: 1 / 0) is None
  assert _warnings(caplog) == ["dividing failed, so it is left out of this run: ZeroDivisionError: division by zero"]


def _one_device_mesh() -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))


_CFG = model_lib.ModelConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, max_pauses=1)


def test_account_train_step_gives_the_peak_the_flops_and_the_memory(caplog):
  compiled = jax.jit(lambda x: x * 2).lower(jnp.ones(256)).compile()
  accounting = mfu.account_train_step(_CFG, (4, 16), _one_device_mesh(), compiled, configured_peak=1e12)
  assert accounting == mfu.StepAccounting(
    peak_flops_per_device=1e12,
    flops_per_device=flops.train_step_flops(_CFG, 4, 16),
    memory=mfu.compiled_bytes(compiled),
  )
  assert mfu.account_train_step(_CFG, (4, 16), _one_device_mesh(), None, configured_peak=0) == mfu.StepAccounting(
    None, None, None
  )
  assert not _warnings(caplog)


class _NoMemoryAnalysis:
  def memory_analysis(self):
    return None


@pytest.mark.parametrize("broken", ["peak", "flops", "memory"])
def test_account_train_step_leaves_out_what_fails_with_one_warning(broken, monkeypatch, caplog):
  def fail(*args, **kwargs):
    raise RuntimeError(f"no {broken} here")

  compiled = jax.jit(lambda x: x * 2).lower(jnp.ones(256)).compile()
  if broken == "peak":
    monkeypatch.setattr(mfu, "peak_flops_per_device", fail)
  elif broken == "flops":
    monkeypatch.setattr(flops, "train_step_flops", fail)
  else:
    compiled = _NoMemoryAnalysis()
  accounting = mfu.account_train_step(_CFG, (4, 16), _one_device_mesh(), compiled, configured_peak=1e12)
  assert (accounting.peak_flops_per_device is None) == (broken == "peak")
  assert (accounting.flops_per_device is None) == (broken in ("peak", "flops"))  # no peak: no FLOPs asked
  assert (accounting.memory is None) == (broken == "memory")
  [warning] = _warnings(caplog)
  assert "failed, so it is left out of this run" in warning and ("memory" if broken == "memory" else broken) in warning


def test_a_profiler_that_cannot_start_warns_once_and_the_steps_go_on(monkeypatch, caplog, tmp_path):
  def fail(logdir):
    raise RuntimeError("profiler unavailable")

  monkeypatch.setattr(jax.profiler, "start_trace", fail)
  window = mfu.ProfileWindow((1, 2), str(tmp_path))
  for step in (1, 2):
    window.before(step)
    with window.annotation(step):
      pass
    window.after(step, jnp.ones(2))
  window.close()
  [warning] = _warnings(caplog)
  assert "profile_steps=(1, 2)" in warning and "profiler unavailable" in warning


# ------------------------------------------------------------------------------------------
# The trainer: MFU without any cost analysis, and a run that MFU's failures never stop.
# ------------------------------------------------------------------------------------------


def _short_run(workdir, **overrides) -> list[dict]:
  """A 2-step tiny run logging every step (no eval, no checkpoint); its train rows."""
  config = tiny_config(
    num_train_steps=2,
    eval_every_steps=100,
    checkpoint_every_steps=100,
    peak_flops_per_device=1e12,
    **{"data.eval_batches": 0, "optimizer.warmup_steps": 1},
    **overrides,
  )
  result = train.train_and_evaluate(config, str(workdir))
  assert result["stopped"] == "completed" and result["step"] == 2
  return [r for r in metrics_writer.read_metrics(str(workdir)) if "train/loss" in r]


def test_the_trainer_logs_mfu_where_lowered_programs_have_no_cost_analysis(monkeypatch, tmp_path, caplog):
  """The CPU reproduction of the CUDA plugin and libtpu, whose PJRT C API gives no cost analysis."""
  monkeypatch.setattr(xla_bridge, "using_pjrt_c_api", lambda backend=None: True)
  assert jax.jit(jnp.sin).lower(jnp.ones(4)).cost_analysis() is None  # as on an H200 or a TPU
  rows = _short_run(tmp_path)
  expected = flops.train_step_flops(components.model_config(tiny_config(), synthetic.VOCAB_SIZE), 4, 16)
  for r in rows:
    assert 0 < r["train/mfu"] < 1
    np.testing.assert_allclose(r["train/mfu"], expected / (4 * 16 / r["train/tokens_per_sec"] * 1e12), rtol=1e-9)
  assert not _warnings(caplog)


@pytest.mark.parametrize("broken", ["peak_flops_per_device", "train_step_flops", "mfu"])
def test_a_run_whose_mfu_fails_completes_without_it_and_warns_once(broken, monkeypatch, tmp_path, caplog):
  def fail(*args, **kwargs):
    raise RuntimeError(f"{broken} is broken")

  monkeypatch.setattr(flops if broken == "train_step_flops" else mfu, broken, fail)
  rows = _short_run(tmp_path)
  assert [r["step"] for r in rows] == [1, 2]
  assert not any("train/mfu" in r for r in rows) and all("train/tokens_per_sec" in r for r in rows)
  [warning] = _warnings(caplog)
  assert f"{broken} is broken" in warning
