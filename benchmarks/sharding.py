r"""Benchmark of sharded training (issue 5): per-device state memory and the step's collectives.

Runs on fake CPU devices (8 unless ``XLA_FLAGS`` already sets
``--xla_force_host_platform_device_count``); every figure is a property of the compiled
programs and the placed arrays, not a timing, so it transfers to TPU and GPU meshes.

1. **State memory versus fsdp.** For meshes ``(data, fsdp, tensor) = (8/f, f, 1)``, f =
   1, 2, 4, 8, the train state is created sharded exactly as the trainer creates it
   (``jax.jit(init_state, out_shardings=train.state_shardings(...))``) and the bytes of
   parameters and AdamW moments held by each device are summed from the arrays' shards.
   Target: the per-device bytes fall as 1/f within 10% (only norms, biases and scalars
   stay replicated).

2. **Collectives of the train step per mesh.** The trainer's ``train_step``, jitted with
   its in/out shardings and donated state, is compiled for each mesh, and the
   collectives in the optimised HLO are counted by kind, with the bytes of their
   results. Counts are static: an op inside a loop (the pause-step ``lax.scan``, the
   layer scan) counts once. The compiled program's own per-device memory
   (:func:`cyb_jax.training.mfu.compiled_bytes`: arguments + outputs + temporaries - aliased) is listed beside.

  python benchmarks/sharding.py                  # ~8M-parameter model, 7 meshes
  python benchmarks/sharding.py --quick          # tiny model, smoke test
  python benchmarks/sharding.py --out=/tmp/sharding.json

:func:`sharded_programs` and :func:`compile_train_step` are shared with
``benchmarks/tpu_compile.py``.
"""

from __future__ import annotations

import os

if __name__ == "__main__" and "device_count" not in os.environ.get("XLA_FLAGS", ""):
  # Run as a script, before JAX starts its CPU backend: 8 fake CPU devices.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

from cyb_jax import sharding
from cyb_jax.configs import base as base_config
from cyb_jax.data import synthetic
from cyb_jax.training import components
from cyb_jax.training import mfu
from cyb_jax.training import train

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_RE = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_SHAPE_RE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64)\[([0-9,]*)\]")
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "bf16": 2,
  "f16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
}


def benchmark_config(quick: bool) -> ml_collections.ConfigDict:
  """A CYB-AP run config with K = 3: ~8M parameters (``quick``: ~0.1M).

  Every sharded dimension (vocabulary, d_model, heads, MLP, batch) divides 8.
  """
  c = base_config.get_config()
  c.loss.name = "cyb_ap"
  c.model.max_pauses = 3
  c.model.scan_layers = True
  if quick:
    c.model.update(vocab_size=64, d_model=32, num_heads=8, mlp_dim=64, num_layers=1)
    c.data.update(batch_size=8, seq_len=16)
  else:
    c.model.update(vocab_size=8192, d_model=256, num_heads=8, mlp_dim=1024, num_layers=4)
    c.data.update(batch_size=16, seq_len=128)
  return c


def abstract_batch(batch_size: int, seq_len: int, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """``ShapeDtypeStruct``s of a global batch ``[B, N]`` placed as the trainer places it."""
  placed = sharding.batch_sharding(mesh)
  dtypes = {
    "inputs": jnp.int32,
    "targets": jnp.int32,
    "weights": jnp.float32,
    "segment_ids": jnp.int32,
    "positions": jnp.int32,
  }
  return {k: jax.ShapeDtypeStruct((batch_size, seq_len), dtypes[k], sharding=placed) for k in train.BATCH_KEYS}


def sharded_programs(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[train.Programs, train.TrainState, dict]:
  """The trainer's programs (``train.make_programs``) for ``mesh``, and their inputs.

  ``mesh`` may hold real devices or a TPU topology's devices. Call (or lower) the
  programs inside ``sharding.mesh_context(mesh, rules)``.

  Returns:
    ``(programs, abstract_state, abstract_batch)``: ``ShapeDtypeStruct``s with
    shardings of the state and of one global batch.
  """
  model_cfg = components.model_config(config, synthetic.VOCAB_SIZE)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  # Outside the mesh context: eager work (PRNG keys) must not run on the mesh's devices,
  # which for a TPU topology are only a compile target.
  programs = train.make_programs(config, model_cfg, mesh, rules)
  rng = jax.random.key(config.seed)
  with sharding.mesh_context(mesh, rules):
    abstract_state = programs.abstract_state(rng)
  batch = abstract_batch(config.data.batch_size, config.data.seq_len, mesh)
  return programs, abstract_state, batch


def compile_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
  """The trainer's train step for ``mesh`` compiled ahead of time (no arrays allocated)."""
  programs, abstract_state, batch = sharded_programs(config, mesh)
  with sharding.mesh_context(mesh, sharding.rules_from_config(config.logical_axis_rules)):
    return programs.train_step.lower(abstract_state, batch).compile()


def count_collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """``{kind: {"count": n, "bytes": result bytes}}`` of the collectives in an HLO module."""
  out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
  for match in _COLLECTIVE_RE.finditer(hlo_text):
    result_type, kind = match.group(1), match.group(2)
    nbytes = sum(
      _DTYPE_BYTES[dt] * int(np.prod([int(d) for d in dims.split(",") if d]))
      for dt, dims in _SHAPE_RE.findall(result_type)
    )
    out[kind]["count"] += 1
    out[kind]["bytes"] += nbytes
  return out


def mesh_config(shape: Sequence[int]) -> dict[str, int]:
  return {"data": shape[0], "fsdp": shape[1], "tensor": shape[2], "dcn_data": 1}


def state_memory(config: ml_collections.ConfigDict, fsdps: Sequence[int]) -> list[dict]:
  """Table 1 rows: per-device bytes of the sharded parameters and optimiser state."""
  n = jax.device_count()
  rows = []
  for fsdp in fsdps:
    mesh = sharding.make_mesh(mesh_config((n // fsdp, fsdp, 1)))
    programs, _, _ = sharded_programs(config, mesh)
    with sharding.mesh_context(mesh, sharding.rules_from_config(config.logical_axis_rules)):
      state = programs.init(jax.random.key(config.seed))
    params = max(sharding.bytes_per_device(state.params).values())
    opt = max(sharding.bytes_per_device(state.opt_state).values())
    total = sum(x.nbytes for x in jax.tree.leaves(state.params))
    rows.append(
      {
        "mesh": mesh.devices.shape,
        "fsdp": fsdp,
        "param_bytes": params,
        "opt_bytes": opt,
        "state_bytes": params + opt,
        "param_total": total,
        "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
      }
    )
    del state
  base = rows[0]["state_bytes"] * rows[0]["fsdp"]
  for r in rows:
    r["ideal_bytes"] = base / r["fsdp"]
    r["vs_ideal"] = r["state_bytes"] / r["ideal_bytes"]
  return rows


def collectives(config: ml_collections.ConfigDict, meshes: Sequence[Sequence[int]]) -> list[dict]:
  """Table 2 rows: collectives and per-device program memory of the compiled step."""
  rows = []
  for shape in meshes:
    mesh = sharding.make_mesh(mesh_config(shape))
    compiled = compile_train_step(config, mesh)
    counts = count_collectives(compiled.as_text())
    rows.append(
      {
        "mesh": tuple(shape),
        "collectives": counts,
        "total": sum(c["count"] for c in counts.values()),
        "program_bytes": mfu.compiled_bytes(compiled),
      }
    )
  return rows


def _mib(x: float) -> str:
  return f"{x / 2**20:.2f}"


def main(argv):
  del argv
  args = flags.FLAGS
  config = benchmark_config(args.quick)
  n = jax.device_count()
  fsdps = [f for f in (1, 2, 4, 8) if n % f == 0]
  print(
    f"JAX {jax.__version__}, {n} {jax.devices()[0].platform} devices; model "
    f"V={config.model.vocab_size} D={config.model.d_model} L={config.model.num_layers} "
    f"heads={config.model.num_heads} mlp={config.model.mlp_dim} K={config.model.max_pauses}"
    f", batch {config.data.batch_size} x {config.data.seq_len}.\n"
  )

  memory = state_memory(config, fsdps)
  print(
    f"Table 1: per-device train state, {memory[0]['num_params']:,} parameters "
    "(float32, AdamW: parameters + 2 moments).\n"
  )
  print("| mesh (data, fsdp, tensor) | params MiB | optimiser MiB | state MiB | ideal (1/fsdp) MiB | state / ideal |")
  print("|---|---|---|---|---|---|")
  for r in memory:
    print(
      f"| {r['mesh']} | {_mib(r['param_bytes'])} | {_mib(r['opt_bytes'])} | "
      f"{_mib(r['state_bytes'])} | {_mib(r['ideal_bytes'])} | {r['vs_ideal']:.3f} |"
    )

  results = {"devices": n, "config": config.model.to_dict(), "memory": memory}
  if not args.skip_collectives:
    meshes = [(n // f, f, 1) for f in fsdps]
    meshes += [m for m in ((2, 2, 2), (1, 4, 2), (1, 1, 8)) if np.prod(m) == n]
    if args.quick:
      meshes = meshes[:1] + [m for m in meshes if m[2] > 1][:2]
    comm = collectives(config, meshes)
    results["collectives"] = comm
    print(
      "\nTable 2: collectives in the compiled train step (static count; result MiB), "
      "and the step program's per-device memory.\n"
    )
    print("| mesh | " + " | ".join(COLLECTIVES) + " | total | program peak MiB | of which temp MiB |")
    print("|---|" + "---|" * (len(COLLECTIVES) + 3))
    for r in comm:
      cells = [f"{c['count']} ({_mib(c['bytes'])})" if c["count"] else "0" for c in r["collectives"].values()]
      print(
        f"| {r['mesh']} | " + " | ".join(cells) + f" | {r['total']} | "
        f"{_mib(r['program_bytes']['peak'])} | {_mib(r['program_bytes']['temp'])} |"
      )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
  # Flags only when run as a script: benchmarks/tpu_compile.py imports this module.
  flags.DEFINE_bool("quick", False, "Tiny model and three meshes (smoke test).")
  flags.DEFINE_string("out", None, "Also write all figures as JSON to this path.")
  flags.DEFINE_bool("skip_collectives", False, "Only table 1 (no train-step compilations).")
  app.run(main)
