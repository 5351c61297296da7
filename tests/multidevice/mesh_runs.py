r"""Runs the tiny config on several meshes of 8 fake CPU devices; writes what the test checks.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice.mesh_runs \
      --out=/tmp/meshes.json --workdir=/tmp/meshes

For every mesh ``(data, fsdp, tensor)`` in ``harness.MESHES`` it creates the sharded
train state, records each array's global and per-device shard shape, runs all but the
last of ``harness.NUM_STEPS`` steps, saves a checkpoint with the trainer's
``Checkpointer``, and runs the last step. Then each mesh's checkpoint is restored onto
the NEXT mesh of the list (another layout) and the last step is run again there.

The JSON maps each mesh name ``"DxFxT"`` to: ``losses`` (one per step),
``shards`` (``{path: [global shape, first device's shard shape]}`` of the fresh state),
``state_bytes_per_device`` (the distinct per-device totals of the state),
``restored_from`` (the mesh whose checkpoint was restored here), ``restored_loss``
(the last step's loss after the restore) and ``restored_shards``; for mesh (2, 2, 2) also
``batch_sharded``: ``{array: whether the compiled forward keeps it split by rows over
(data, fsdp)}`` for the step hidden states and each per-step statistic.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp

from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.analysis import evaluation
from cyb_jax.training import checkpoint as ckpt_lib
from cyb_jax.training import hosts
from cyb_jax.training import train
from tests.multidevice import harness

ACTIVATIONS_MESH = (2, 2, 2)  # all three axes in use


def mesh_name(shape) -> str:
  return "x".join(map(str, shape))


def activations_follow_the_batch(run: harness.ShardedRun) -> dict[str, bool]:
  """Whether the compiler keeps the step hidden states ``[B, N, K+1, D]`` (after the
  pause-step scan) and every per-step statistic ``[B, N, K+1]`` split over ``(data,
  fsdp)`` by rows and whole otherwise, as the batch is."""
  batch_spec = sharding.batch_sharding(run.mesh)
  abstract = run.abstract_state().params
  batch = {
    k: jax.ShapeDtypeStruct(
      (run.config.data.batch_size, run.config.data.seq_len),
      jnp.float32 if k == "weights" else jnp.int32,
      sharding=batch_spec,
    )
    for k in train.BATCH_KEYS
  }

  def hidden_and_stats(params, batch):
    hidden = model_lib.step_hidden(
      run.model_cfg, params, batch["inputs"], segment_ids=batch["segment_ids"], positions=batch["positions"]
    )
    return hidden, evaluation.step_stats(run.model_cfg, params, batch)

  with sharding.mesh_context(run.mesh, run.rules):
    compiled = jax.jit(hidden_and_stats).lower(abstract, batch).compile()
  hidden, stats = compiled.output_shardings
  out = {"hidden": bool(hidden.is_equivalent_to(batch_spec, 4))}
  for name, s in stats._asdict().items():
    out[name] = bool(s.is_equivalent_to(batch_spec, 3))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", required=True, help="JSON file to write.")
  parser.add_argument("--workdir", required=True, help="Folder for the checkpoints.")
  args = parser.parse_args()
  if jax.device_count() != 8:
    raise SystemExit(
      f"needs 8 devices, got {jax.device_count()}: set XLA_FLAGS=--xla_force_host_platform_device_count=8."
    )
  saved_step = harness.NUM_STEPS - 1

  runs, results = {}, {}
  for shape in harness.MESHES:
    name = mesh_name(shape)
    config = harness.tiny_config(**{"mesh.data": shape[0], "mesh.fsdp": shape[1], "mesh.tensor": shape[2]})
    run = runs[name] = harness.build(config, workdir=args.workdir)
    state = harness.initial_state(run)
    results[name] = {
      "shards": harness.shard_shapes(state),
      "state_bytes_per_device": sorted(set(sharding.bytes_per_device(state).values())),
    }
    state, losses = run.run(state, 0, saved_step)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(args.workdir, name), keep=1)
    checkpointer.save(saved_step, state, hosts.gather_data_states(run.data.train.get_state()), {"mesh": list(shape)})
    state, last = run.run(state, saved_step, 1)
    checkpointer.close()
    results[name]["losses"] = losses + last
    del state
    if shape == ACTIVATIONS_MESH:
      results[name]["batch_sharded"] = activations_follow_the_batch(run)

  names = list(runs)
  for source, target in zip(names, names[1:] + names[:1]):
    run = runs[target]
    checkpointer = ckpt_lib.Checkpointer(os.path.join(args.workdir, source), keep=1)
    state, _, meta = checkpointer.restore(saved_step, run.abstract_state())
    checkpointer.close()
    if meta["mesh"] != [int(s) for s in source.split("x")]:
      raise AssertionError(f"restored the checkpoint of mesh {meta['mesh']}, not {source}.")
    restored_shards = harness.shard_shapes(state)
    _, (loss,) = run.run(state, saved_step, 1)
    results[target].update(restored_from=source, restored_loss=loss, restored_shards=restored_shards)

  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
