r"""The fused GPU kernel on a (2, 2, 2) mesh of 8 fake CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice.gpu_kernel_mesh \
      --out=/tmp/gpu_kernel_mesh.json

Under the mesh and the default logical axis rules (rows over (data, fsdp), heads over tensor)
the kernel runs in a shard_map, one device's rows and heads per call:
  * `flash_document_attend` with the reference kernel, sharded, against `attend` on one device,
    with the private block (values and gradients);
  * the trainer's train step lowered for cuda, an H100 being JAX's default device (JAX's CUDA
    plugin on the path, `benchmarks/gpu_targets.py`): the batch dimension of every kernel call's
    operands.
Writes `devices`, `max_abs_diff`, `grads_max_rel_diff` and `kernel_batch_sizes`.
"""

from __future__ import annotations

import argparse
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import gpu_targets
from cyb_jax import sharding
from cyb_jax.data import synthetic
from cyb_jax.model import attention
from cyb_jax.model.attention import flash
from cyb_jax.model.attention import kernels
from cyb_jax.training import components
from cyb_jax.training import programs
from tests.tiny import tiny_config


def _kernel_against_dense(mesh, rules) -> tuple[float, float]:
  b, n, h, g, e, j = 4, 32, 4, 2, 16, 3
  keys = jax.random.split(jax.random.key(0), 5)
  q = jax.random.normal(keys[0], (b, n, h, e))
  shared = attention.KeyValues(jax.random.normal(keys[1], (b, n, g, e)), jax.random.normal(keys[2], (b, n, g, e)))
  private = attention.KeyValues(*(jax.random.normal(k, (b, n, j, g, e)) for k in keys[3:]))
  segments = jnp.array([[1] * 10 + [2] * 22, [1] * 32, [1] * 25 + [0] * 7, [1] * 5 + [2] * 27])
  private_mask = jnp.arange(j)[None, None] < jnp.array([1, 3, 2, 3])[:, None, None]
  weights = jax.random.normal(jax.random.key(9), q.shape)
  mask = attention.causal_segment_mask(segments)

  def loss(f):
    return lambda q, kv, pkv: (weights * f(q, kv, pkv)).sum()

  dense = lambda q, kv, pkv: attention.attend(q, kv, mask, pkv, private_mask)  # noqa: E731
  ref, ref_grads = dense(q, shared, private), jax.grad(loss(dense), (0, 1, 2))(q, shared, private)
  with sharding.mesh_context(mesh, rules):
    fused = jax.jit(
      lambda q, kv, pkv: kernels.flash_document_attend(q, kv, segments, pkv, private_mask, kernel=flash.REFERENCE)
    )
    out = fused(q, shared, private)
    grads = jax.jit(jax.grad(loss(fused), (0, 1, 2)))(q, shared, private)
  pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))
  rel = [float(np.abs(x - y).max() / np.abs(y).max()) for x, y in pairs]
  return float(np.abs(np.asarray(out) - np.asarray(ref)).max()), max(rel)


def _kernel_batch_sizes(mesh, rules) -> list[int]:
  config = tiny_config(**{"model.attention_impl": "dot_product", "model.dtype": "bfloat16", "data.batch_size": 8})
  model_cfg = components.model_config(config, synthetic.VOCAB_SIZE)
  built = programs.make_programs(config, model_cfg, mesh, rules)
  with sharding.mesh_context(mesh, rules):
    state = built.abstract_state(jax.random.key(0))
    placed = sharding.batch_sharding(mesh)
    ints = jax.ShapeDtypeStruct((8, config.data.seq_len), jnp.int32, sharding=placed)
    batch = dict(inputs=ints, targets=ints, segment_ids=ints, positions=ints)
    batch["weights"] = jax.ShapeDtypeStruct(ints.shape, jnp.float32, sharding=placed)
    with jax.default_device(gpu_targets.topology_device("h100")):
      text = built.train_step.trace(state, batch).lower(lowering_platforms=("cuda",)).as_text()
  calls = "\n".join(line for line in text.splitlines() if "custom_call @mosaic_gpu" in line)
  return sorted({int(x) for x in re.findall(rf"tensor<(\d+)x{config.data.seq_len}x\d+x\d+xbf16>", calls)})


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_LOGICAL_RULES
  diff, grads_diff = _kernel_against_dense(mesh, rules)
  with open(args.out, "w") as f:
    json.dump(
      {
        "devices": jax.device_count(),
        "max_abs_diff": diff,
        "grads_max_rel_diff": grads_diff,
        "kernel_batch_sizes": _kernel_batch_sizes(mesh, rules),
      },
      f,
    )


if __name__ == "__main__":
  main()
