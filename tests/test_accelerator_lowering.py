"""Programs lowered on this CPU for CUDA carry the fused GPU kernel, for every configuration.

Most accelerator failures show at trace or lowering time: JAX's own shape checks of a kernel run
when a program is lowered for a platform, whatever the host. So the train step (model forward,
the CYB loss and its gradient) is lowered here with `lowering_platforms=("cuda",)` for both pause
layouts, K = 0..3, grouped-query heads, and the default and Gemma-like (256) head widths, in
bfloat16, and the lowered module is read:

  * the kernel choice follows the platform lowered for (`lax.platform_dependent`), not the
    process's backend: the same program lowered for the CPU has no GPU kernel call;
  * every attention call of the step is the Pallas GPU flash kernel (a Triton custom call) with
    operands `[B, S, H, E]` and segment ids `[B, S]`, forward and backward;
  * no `[S, S]` mask, bias or score is computed: no operation of the module but a placeholder
    (see `_square_computations`) makes a tensor with two adjacent dimensions equal to the attended
    sequence length S (N real tokens, or N (K + 1) slots on the visible layout's flat grid).
"""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from cyb_jax import losses
from cyb_jax.model.config import ModelConfig
from cyb_jax.training import steps
from tests.multidevice import harness

B, N, V = 2, 48, 64  # N: a multiple of the kernel's 16, and no other dimension of the model
_TRITON = "__gpu$xla.gpu.triton"


def _config(layout: str, k: int, head_dim: int | None) -> ModelConfig:
  return ModelConfig(
    vocab_size=V,
    num_layers=2,
    d_model=64,
    num_heads=4,
    num_kv_heads=2,
    head_dim=head_dim,
    mlp_dim=80,
    max_pauses=k,
    pause_layout=layout,
    dtype="bfloat16",
    attention_impl="dot_product",
  )


def _lowered_text(cfg: ModelConfig, platform: str) -> str:
  """The project's train step (CYB-DP; K = 0: cross-entropy) for `cfg`, lowered for `platform`."""
  loss = losses.make_loss("cyb_dp" if cfg.max_pauses else "ce")
  schedule = optax.constant_schedule(1e-3)
  tx = optax.adamw(schedule)
  state = jax.eval_shape(
    functools.partial(steps.init_state, model_cfg=cfg, tx=tx, loss_state=loss.init_state()), jax.random.key(0)
  )
  ints = jax.ShapeDtypeStruct((B, N), jnp.int32)
  batch = dict(
    inputs=ints, targets=ints, segment_ids=ints, positions=ints, weights=jax.ShapeDtypeStruct((B, N), jnp.float32)
  )
  step = jax.jit(functools.partial(steps.train_step, model_cfg=cfg, loss=loss, tx=tx, schedule=schedule))
  return step.trace(state, batch).lower(lowering_platforms=(platform,)).as_text()


def _kernel_calls(text: str) -> list[str]:
  return [line for line in text.splitlines() if _TRITON in line]


def _square_tensors(text: str, s: int) -> set[str]:
  """Tensor types of the module with two adjacent dimensions equal to s (an [.., S, S, ..] mask)."""
  return {t for t in re.findall(r"tensor<([0-9x]+)x[a-z]", text) if re.search(rf"(^|x){s}x{s}(x|$)", t)}


# Operations that pass values through rather than compute them.
_PASS_THROUGH = ("stablehlo.while", '"stablehlo.case"', "func.call", "stablehlo.optimization_barrier")


def _square_computations(text: str, s: int) -> list[str]:
  """Operations that compute an `[.., S, S, ..]` tensor.

  Allowed are the placeholders of the other platform's branch and what passes them on: the
  dense branch's mask, hoisted out of the pause scan (JAX computes loop-invariant residuals
  once, before the loop), is a `case` whose untaken branch returns broadcast scalar constants,
  handed to calls and loops that never read them (XLA inlines a case of constant index and
  removes them). A broadcast of a scalar, a case, a loop, a call and a `return` therefore pass.
  """
  squares = _square_tensors(text, s)
  bad = []
  for line in text.splitlines():
    defined = re.match(r"\s*%[\w#:]+ = ([\w.\"]+)", line)
    if defined is None or not any(f"tensor<{t}x" in line.split("->")[-1] for t in squares):
      continue
    op = defined.group(1)
    placeholder = op == "stablehlo.broadcast_in_dim" and re.search(r"\(tensor<[a-z0-9]+>\) ->", line)
    if not (placeholder or op in _PASS_THROUGH):
      bad.append(line.strip()[:200])
  return bad


@pytest.mark.parametrize("head_dim", [None, 256], ids=["E16", "E256"])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", ["private", "visible"])
def test_train_step_lowers_for_cuda_with_the_gpu_kernel_and_no_square_mask(layout, k, head_dim):
  cfg = _config(layout, k, head_dim)
  text = _lowered_text(cfg, "cuda")
  calls = _kernel_calls(text)
  s = N * (k + 1) if layout == "visible" else N
  e = cfg.resolved_head_dim
  operand = f"tensor<{B}x{s}x{cfg.num_heads}x{e}xbf16>"
  assert calls, "no GPU kernel in the program lowered for cuda"
  # Forward, then the backward's preprocessing and gradient kernels, each on [B, S, H, E].
  assert all(operand in call for call in calls), calls[0]
  assert any(f"tensor<{B}x{s}xi32>" in call for call in calls)
  # Each layer's forward kernel and its backward, for the real-token pass and (private, K > 0)
  # the pause step, whose scan body is lowered once whatever K.
  attention_calls_per_layer = 1 if (layout == "visible" or k == 0) else 2
  assert len(calls) >= 2 * cfg.num_layers * attention_calls_per_layer
  assert not _square_computations(text, s), _square_computations(text, s)[:3]


@pytest.mark.parametrize("layout", ["private", "visible"])
def test_the_same_program_lowered_for_the_cpu_has_no_gpu_kernel(layout):
  """The kernel choice follows the platform lowered for: the CPU lowering computes the dense
  reference (whose mask is there)."""
  cfg = _config(layout, 2, None)
  text = _lowered_text(cfg, "cpu")
  assert not _kernel_calls(text)
  s = N * 3 if layout == "visible" else N
  assert _square_computations(text, s)


def test_float32_and_windows_lower_for_cuda_through_the_dense_kernel():
  """Where the GPU kernel cannot serve a call (float32; a sliding window), the program still
  lowers for cuda, through the dense kernel: nothing fails at trace time."""
  f32 = dataclasses.replace(_config("private", 1, None), dtype="float32")
  assert not _kernel_calls(_lowered_text(f32, "cuda"))
  windowed = dataclasses.replace(
    _config("private", 1, None), layer_types=("sliding", "full"), sliding_window=8, num_layers=2
  )
  calls = _kernel_calls(_lowered_text(windowed, "cuda"))
  assert calls  # the full layer's calls


@pytest.mark.multidevice
def test_under_a_2x2x2_mesh_the_kernel_runs_on_each_devices_rows_and_equals_one_device(tmp_path):
  """8 devices, rows over (data, fsdp) and heads over tensor: the kernel runs in a shard_map
  (XLA cannot split an opaque call, and would gather every operand onto every device). Through
  Pallas's interpreter it equals the dense path on one device, values and gradients; in the
  train step lowered for cuda every kernel call holds one device's 8 / 4 = 2 rows."""
  out = tmp_path / "gpu_kernel_mesh.json"
  cmd = [sys.executable, "-m", "tests.multidevice.gpu_kernel_mesh", f"--out={out}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run(cmd, env=harness.subprocess_env(8), cwd=root, check=True, timeout=600)
  result = json.loads(out.read_text())
  assert result["devices"] == 8
  assert result["max_abs_diff"] <= 1e-5 and result["grads_max_rel_diff"] <= 2e-5, result
  assert result["kernel_batch_sizes"] == [2], result
