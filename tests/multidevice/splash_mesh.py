r"""Splash attention on a (2, 2, 2) mesh of 8 fake CPU devices against the dense path on one.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice.splash_mesh \
      --out=/tmp/splash_mesh.json

Computes `step_logits` of the test config of `tests/test_attention_splash.py` (K = 2, packed
documents, GQA, sliding/full layers) and the gradient of a weighted sum of them, once with
`attention_impl="splash"` under the mesh and the default logical axis rules (batch over
(data, fsdp), heads over tensor: the kernel runs in a shard_map), once densely on device 0.
Writes `devices`, `logits_max_abs_diff`, `grads_max_rel_diff` (largest over parameter
arrays of max|difference| / max|reference|) and `kernel_in_shard_map` (the program has a
shard_map holding a pallas_call).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax import model as model_lib
from cyb_jax import sharding
from tests import test_attention_splash as case


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  cfg = dataclasses.replace(case.CFG, num_kv_heads=2)
  params = model_lib.init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, case.N), 0, case.V)
  segment_ids, positions = case._packed_ids()  # pylint: disable=protected-access
  segment_ids, positions = jnp.tile(segment_ids, (2, 1)), jnp.tile(positions, (2, 1))
  inputs = (tokens, segment_ids, positions)

  ref_logits, ref_grads = case._logits_and_grads(cfg, params, *inputs)  # pylint: disable=protected-access

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.DEFAULT_LOGICAL_RULES
  splash_cfg = dataclasses.replace(cfg, attention_impl="splash")
  with sharding.mesh_context(mesh, rules):
    placed = [jax.device_put(x, sharding.batch_sharding(mesh)) for x in inputs]
    logits, grads = case._logits_and_grads(splash_cfg, params, *placed)  # pylint: disable=protected-access
    jaxpr = str(jax.make_jaxpr(case._logits_and_grads, static_argnums=0)(splash_cfg, params, *placed))  # pylint: disable=protected-access
  rel = [
    float(np.abs(np.asarray(g) - np.asarray(r)).max() / np.abs(np.asarray(r)).max())
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))
  ]
  with open(args.out, "w") as f:
    json.dump(
      {
        "devices": jax.device_count(),
        "logits_max_abs_diff": float(np.abs(np.asarray(logits) - np.asarray(ref_logits)).max()),
        "grads_max_rel_diff": max(rel),
        "kernel_in_shard_map": "shard_map" in jaxpr and "pallas_call" in jaxpr,
      },
      f,
    )


if __name__ == "__main__":
  main()
