"""Pure parts of the MFU accounting: the peak table, the ratio, the FLOP count, program bytes, the profile window."""

import jax
import jax.numpy as jnp
import optax
import pytest

from cyb_jax import components
from cyb_jax import losses
from cyb_jax import mfu
from cyb_jax import train
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


def test_lowered_flops_counts_a_matmul_exactly_and_a_scan_body_once():
  x = jnp.ones((64, 32))
  w = jnp.ones((32, 32))
  matmul = mfu.lowered_flops(jax.jit(jnp.matmul).lower(x, w))
  assert matmul == 2 * 64 * 32 * 32

  def scanned(x, w, unroll):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=4, unroll=unroll)[0]

  once = mfu.lowered_flops(jax.jit(lambda x, w: scanned(x, w, 1)).lower(x, w))
  unrolled = mfu.lowered_flops(jax.jit(lambda x, w: scanned(x, w, True)).lower(x, w))
  assert unrolled == 4 * matmul
  assert matmul <= once < 1.01 * matmul  # the body once (+ the loop counter): why the twin unrolls


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


def _step_flops(optimizer=None, **overrides):
  config = tiny_config(**overrides)
  model_cfg = components.model_config(config, 32)
  batch = {k: jnp.zeros((4, 16), jnp.float32 if k == "weights" else jnp.int32) for k in train.BATCH_KEYS}
  tx, schedule = optimizer(config) if optimizer else (None, None)
  loss = losses.make_loss_from_config(config.loss)
  return train.model_flops_per_device(config, model_cfg, loss, batch, tx=tx, schedule=schedule)


def _sgd(config):
  _, schedule = components.make_optimizer(config)
  return optax.sgd(schedule), schedule


def test_model_flops_count_the_optimiser_passed_else_the_configs():
  assert _step_flops(components.make_optimizer) == _step_flops()
  assert _step_flops(_sgd) < _step_flops()  # the passed optimiser is counted: SGD does less than AdamW
  with pytest.raises(ValueError, match="give both tx and schedule"):
    _step_flops(lambda config: (components.make_optimizer(config)[0], None))


def test_model_flops_do_not_depend_on_scans_remat_or_chunks():
  assert (
    _step_flops(
      **{
        "model.scan_layers": True,
        "model.remat_policy": "full",
        "loss.vocab_chunk": 8,
        "model.unroll_pause_scan": False,
      }
    )
    == _step_flops()
  )


def test_model_flops_grow_by_the_same_amount_with_each_private_pause_step():
  k1, k2, k3 = (_step_flops(**{"model.max_pauses": k}) for k in (1, 2, 3))
  assert k1 < k2 < k3
  assert (k3 - k2) == pytest.approx(k2 - k1, rel=0.05)  # a scan counted once: k1 == k2


@pytest.mark.parametrize("value, expected", [((), None), ([], None), ((2, 3), (2, 3)), ((4, 4), (4, 4))])
def test_profile_steps_is_empty_or_an_ordered_pair(value, expected):
  assert mfu.check_profile_steps(value) == expected


@pytest.mark.parametrize("value", [(3, 2), (0, 2), (1,), (1, 2, 3), (1.0, 2)])
def test_bad_profile_steps_are_a_value_error(value):
  with pytest.raises(ValueError, match=r"profile_steps=.* must be empty \(off\) or two ints"):
    mfu.check_profile_steps(value)
