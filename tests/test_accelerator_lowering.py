"""Programs lowered on this CPU for CUDA carry the fused GPU kernel, for every configuration.

Most accelerator failures show at trace or lowering time: a kernel's own checks and its lowering
run when a program is lowered for a platform, whatever the host. So the train step (model forward,
the CYB loss and its gradient) is lowered here with `lowering_platforms=("cuda",)` for both pause
layouts, K = 0..3, grouped-query heads, and the default and Gemma-like (256) head widths, in
bfloat16, for an H100 (`benchmarks/gpu_targets.py`: tokamax tunes its Mosaic kernel for the GPU
that is JAX's default device, here a topology's device, with JAX's CUDA plugin from `make
cuda-tools`), and the lowered module is read:

  * the kernel choice follows the platform lowered for (`lax.platform_dependent`), not the
    process's backend: the same program lowered for the CPU has no GPU kernel call;
  * every attention call of the step is tokamax's Mosaic GPU flash kernel (a `mosaic_gpu` custom
    call) on `[B, S, H, E]` queries with the documents as key ranges `[B, 1, S]`: one forward
    and two backward kernels (dq; dk and dv) per attention call, nothing recomputed;
  * no `[S, S]` mask, bias or score is computed: no operation of the module but a placeholder
    (see `_square_computations`) makes a tensor with two adjacent dimensions equal to the attended
    sequence length S (N real tokens, or N (K + 1) slots on the visible layout's flat grid).

`tests/test_gpu_compile.py` compiles such programs for the H100 with XLA's GPU compiler.
"""

import contextlib
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

from benchmarks import gpu_targets
from cyb_jax import losses
from cyb_jax.model.config import ModelConfig
from cyb_jax.training import steps
from tests.multidevice import harness

B, N, V = 2, 48, 64  # N: no other dimension of the model
_MOSAIC = "stablehlo.custom_call @mosaic_gpu"


@pytest.fixture(scope="module")
def h100():
  """An H100 to lower for (skipped, naming the command, without JAX's CUDA plugin)."""
  if not gpu_targets.cuda_tools_in_use():
    pytest.skip(
      "JAX's CUDA plugin is not on the path: `make test` installs it (`make cuda-tools`) and sets CYB_JAX_CUDA_PATH"
    )
  return gpu_targets.topology_device("h100")


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


def _lowered_text(cfg: ModelConfig, platform: str, device=None) -> str:
  """The project's train step (CYB-DP; K = 0: cross-entropy) for `cfg`, lowered for `platform`
  (traced with `device` as JAX's default device when given: the GPU the kernels are chosen for)."""
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
  with contextlib.nullcontext() if device is None else jax.default_device(device):
    return step.trace(state, batch).lower(lowering_platforms=(platform,)).as_text()


def _kernel_calls(text: str) -> list[str]:
  return [line for line in text.splitlines() if _MOSAIC in line]


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
def test_train_step_lowers_for_cuda_with_the_gpu_kernel_and_no_square_mask(layout, k, head_dim, h100):
  cfg = _config(layout, k, head_dim)
  text = _lowered_text(cfg, "cuda", h100)
  calls = _kernel_calls(text)
  s = N * (k + 1) if layout == "visible" else N
  assert calls, "no GPU kernel in the program lowered for cuda"
  # Every call reads bf16 queries [B, S, H, E'] (E' >= E: the backward kernels pad the head
  # width to their tile) and the documents as key ranges [B, 1, S].
  assert all(re.search(rf"tensor<{B}x{s}x{cfg.num_heads}x\d+xbf16>", call) for call in calls), calls[0][:300]
  assert all(f"tensor<{B}x1x{s}xi32>" in call for call in calls), calls[0][:300]
  # Each attention call (a layer's real-token pass, and on the private layout with K > 0 its
  # pause step, whose scan body is lowered once whatever K) is one forward kernel and two
  # backward kernels (dq; dk and dv): the forward is never recomputed, and the log-normaliser's
  # cotangent takes no kernel pass of its own.
  attention_calls_per_layer = 1 if (layout == "visible" or k == 0) else 2
  assert len(calls) == 3 * cfg.num_layers * attention_calls_per_layer, len(calls)
  assert not _square_computations(text, s), _square_computations(text, s)[:3]


@pytest.mark.parametrize("layout", ["private", "visible"])
def test_the_same_program_lowered_for_the_cpu_has_no_gpu_kernel(layout, h100):
  """The kernel choice follows the platform lowered for: the CPU lowering computes the dense
  reference (whose mask is there), with the same GPU as JAX's default device."""
  cfg = _config(layout, 2, None)
  text = _lowered_text(cfg, "cpu", h100)
  assert not _kernel_calls(text)
  s = N * 3 if layout == "visible" else N
  assert _square_computations(text, s)


def test_windows_lower_for_cuda_through_the_kernel_and_float32_through_the_dense_one(h100):
  """Sliding windows are key ranges of the kernel (every layer's calls are kernels); float32
  (no exact flash path) lowers for cuda through the dense kernel: nothing fails at trace time."""
  windowed = dataclasses.replace(
    _config("private", 1, None), layer_types=("sliding", "full"), sliding_window=8, num_layers=2
  )
  assert len(_kernel_calls(_lowered_text(windowed, "cuda", h100))) == 3 * 2 * 2
  f32 = dataclasses.replace(_config("private", 1, None), dtype="float32")
  assert not _kernel_calls(_lowered_text(f32, "cuda", h100))


def test_without_a_gpu_to_target_cuda_lowers_the_reference_kernel():
  """On a host whose default device is no GPU (this CPU, no topology given), the program still
  lowers for cuda, through the dense reference kernel: tokamax's kernel is tuned for a GPU
  generation and needs one to target."""
  text = _lowered_text(_config("private", 1, None), "cuda")
  assert not _kernel_calls(text)


@pytest.mark.multidevice
def test_under_a_2x2x2_mesh_the_kernel_runs_on_each_devices_rows_and_equals_one_device(tmp_path, h100):
  """8 devices, rows over (data, fsdp) and heads over tensor: the kernel runs in a shard_map
  (XLA cannot split an opaque call, and would gather every operand onto every device). With the
  reference kernel it equals the dense path on one device, values and gradients; in the train
  step lowered for cuda (an H100 as the default device) every kernel call holds one device's
  8 / 4 = 2 rows."""
  del h100  # the CUDA plugin is there: the child process finds it on its path
  out = tmp_path / "gpu_kernel_mesh.json"
  cmd = [sys.executable, "-m", "tests.multidevice.gpu_kernel_mesh", f"--out={out}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run(cmd, env=harness.subprocess_env(8), cwd=root, check=True, timeout=600)
  result = json.loads(out.read_text())
  assert result["devices"] == 8
  assert result["max_abs_diff"] <= 1e-5 and result["grads_max_rel_diff"] <= 2e-5, result
  assert result["kernel_batch_sizes"] == [2], result
