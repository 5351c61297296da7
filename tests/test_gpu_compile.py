"""The train step compiles for an H100 on this CPU with every GPU attention path (issue 29 item 4).

`benchmarks/gpu_compile.py` is run as `make cuda-tools` leaves it (JAX's CUDA plugin on the path,
the CPU the default backend) on its `tiny` preset (2 x 256, V 256, N 128, B 2, bf16 compute,
scanned layers, private layout, K = 1: the real pass and the pause scan): the trainer's own train
step is traced, lowered and compiled by XLA's GPU compiler for an H100 described to it
(`benchmarks/gpu_targets.py`), once per attention path. So a kernel whose Pallas lowering fails
for Hopper (tokamax's sm90 configuration, the Mosaic GPU dialect's checks), or a program XLA's
GPU compiler rejects, fails here rather than on a lent GPU. The Mosaic kernels themselves are
compiled to cubin by the Mosaic GPU runtime when the program is loaded on a GPU (it needs the
driver), so that last step is not covered.

`tests/test_accelerator_lowering.py` checks the lowered program's kernel calls in detail, for
both layouts and K = 0..3; this file checks that the programs compile, that XLA's buffer
assignment of them is there and sane against `benchmarks/memory_bound.py`'s estimate, that the
compiled `dot_product` program calls the Mosaic GPU kernel and the `xla` one does not, and that
the trainer's start-up accounting works against the GPU topology.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_targets
from benchmarks import memory_bound
from cyb_jax.model import flops
from cyb_jax.model.config import ATTENTION_IMPLS
from cyb_jax.model.config import ModelConfig

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every attention path a GPU program can take: splash is a TPU kernel.
GPU_PATHS = tuple(impl for impl in ATTENTION_IMPLS if impl != "splash")
# gpu_compile.py's "tiny" preset at K = 1 (for the FLOP count).
TINY = ModelConfig(vocab_size=256, num_layers=2, d_model=256, num_heads=8, mlp_dim=512, max_pauses=1)
B, N = 2, 128


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
  """gpu_compile.py's rows for the tiny preset on an H100, by attention path."""
  if not gpu_targets.cuda_tools_in_use():
    pytest.skip(
      "JAX's CUDA plugin is not on the path: `make cuda-tools` installs it, and `make test` sets CYB_JAX_CUDA_PATH"
    )
  out = tmp_path_factory.mktemp("gpu_compile") / "rows.json"
  cmd = [sys.executable, "benchmarks/gpu_compile.py", "--preset=tiny", "--target=h100", "--max_pauses=1"]
  cmd += [f"--attention_impl={','.join(GPU_PATHS)}", f"--out={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_REPO, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "left out of this run" not in proc.stderr, proc.stderr[-3000:]
  return {row["attention_impl"]: row for row in json.loads(out.read_text())}


@pytest.mark.parametrize("impl", GPU_PATHS)
def test_every_attention_path_compiles_for_an_h100_with_its_memory(rows, impl):
  row = rows[impl]
  assert row["compiled"], row.get("error")
  assert row["device_kind"] == "NVIDIA H100 80GB HBM3" and row["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
  assert row["batch"] == [B, N] and row["dtype"] == "bfloat16" and row["pause_layout"] == "private"
  assert row["compile_s"] > 0 and "bookkeeping_error" not in row
  # XLA's buffer assignment: the donated state is aliased into the outputs, temporaries exist.
  assert 0 < row["argument"] <= row["peak"] and row["temp"] > 0 and row["alias"] > 0
  assert row["fits"] and row["peak"] < row["hbm_bytes"]
  # The float32 parameters and AdamW state are the arguments' bulk: 3 P of the estimate's state.
  assert row["estimate"]["state"] == 3 * row["param_bytes"] <= row["argument"]
  assert 0.5 <= row["peak"] / row["estimate"]["total"] <= 5, (row["peak"], row["estimate"])
  # The trainer's start-up accounting against a topology this host only compiles for.
  assert row["peak_flops_per_device"] == 989e12  # the H100's from the table
  assert row["flops_per_device"] == flops.train_step_flops(TINY, B, N)


def test_dot_product_compiles_to_mosaic_gpu_kernels_and_xla_to_none(rows):
  """One forward and two backward kernels (dq; dk and dv) per attention call; the scanned layers'
  body holds the real pass's call and the pause scan's body the pause step's: 2 calls."""
  assert rows["dot_product"]["kernels_lowered"] == rows["dot_product"]["kernels"] == 3 * 2
  assert rows["xla"]["kernels_lowered"] == rows["xla"]["kernels"] == 0
  # The flash path keeps no [B, H, S, S] scores: its estimate has none, the dense path's has.
  assert rows["dot_product"]["estimate"]["scores"] == 0 < rows["xla"]["estimate"]["scores"]


def test_the_estimates_terms_follow_their_formulas():
  """benchmarks/memory_bound.py, term by term, for a model whose every size differs."""
  cfg = ModelConfig(
    vocab_size=99,
    num_layers=3,
    d_model=40,
    num_heads=4,
    num_kv_heads=2,
    head_dim=12,
    mlp_dim=56,
    max_pauses=2,
    dtype="bfloat16",
    attention_impl="xla",
  )
  b, n, t = 5, 7, 21
  width = 4 * 40 + 2 * 4 * 12 + 2 * 2 * 12 + 3 * 56
  assert memory_bound.block_activation_width(cfg) == width
  terms = memory_bound.train_step_estimate(cfg, 10, n, 32, 1000, param_shards=4, row_shards=2)
  assert terms["state"] == 750 and terms["gradients"] == 250
  assert terms["activations"] == 3 * b * t * width * 2  # no remat: every block's values
  assert terms["pause_kv"] == 2 * 3 * b * n * 2 * 12 * 2 * (1 + 2 * 2)
  assert terms["layer"] == b * n * width * 2  # one pass of N slots (private)
  assert terms["loss_chunk"] == 2 * 4 * b * t * 32
  assert terms["scores"] == 4 * b * 4 * n * n * 3 * 3  # every layer's K + 1 calls
  assert terms["total"] == sum(v for k, v in terms.items() if k != "total")
  remat = dataclasses.replace(cfg, remat_policy="full", pause_layout="visible")
  terms = memory_bound.train_step_estimate(remat, b, n, None, 1000)
  assert terms["activations"] == 3 * b * t * 40 * 2 and terms["pause_kv"] == 0
  assert terms["layer"] == b * t * width * 2 and terms["scores"] == 4 * b * 4 * t * t  # one call of T slots
  assert terms["loss_chunk"] == 2 * 4 * b * t * 100  # the whole logits, V + 1
  flash = dataclasses.replace(cfg, attention_impl="dot_product")
  assert memory_bound.score_bytes(flash, b, n) == 0
