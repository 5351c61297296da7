"""A tiny run config and the trainer's sharded state and step, built for a given device set.

Shared by the test process (the 1-device reference) and the subprocesses that run with
8 fake CPU devices or as one of several `jax.distributed` processes. Everything here is
the trainer's own public pieces (`train.make_programs`, `sharding.make_mesh`,
`sharding.global_batch`), the programs `train.train_and_evaluate` runs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from cyb_jax import sharding
from cyb_jax.data import make_data
from cyb_jax.training import components
from cyb_jax.training import train
from tests import tiny
from tests.xla_flags import FAST_COMPILE_FLAGS

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2))
NUM_STEPS = 3


def tiny_config(**overrides: Any) -> ml_collections.ConfigDict:
  """``tests.tiny.tiny_config`` for ``NUM_STEPS`` steps of 8 x 16 tokens, vocabulary 32.

  Every sharded dimension (vocab 32, d_model 32, heads 2, mlp 64, batch 8) is divisible
  by the axis sizes of every mesh in ``MESHES``, so each shards it evenly.
  ``overrides`` are dotted paths, e.g. ``{"mesh.fsdp": 4}``.
  """
  return tiny.tiny_config(
    **{
      "num_train_steps": NUM_STEPS,
      "eval_every_steps": NUM_STEPS,
      "checkpoint_every_steps": NUM_STEPS,
      "model.vocab_size": 32,
      "data.batch_size": 8,
      "data.eval_batches": 0,
      "optimizer.warmup_steps": 1,
      **overrides,
    }
  )


def subprocess_env(num_devices: int) -> dict[str, str]:
  """Environment of a child JAX process with ``num_devices`` CPU devices.

  It shares the test session's persistent compilation cache (``tests/conftest.py``).
  """
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  fast = [f for f in FAST_COMPILE_FLAGS if f not in flags]  # the cheapest CPU code generation
  env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={num_devices}", *fast])
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir or "")
  if not env["JAX_COMPILATION_CACHE_DIR"]:
    del env["JAX_COMPILATION_CACHE_DIR"]
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
  return env


@dataclasses.dataclass
class ShardedRun:
  """The trainer's jitted programs (``train.Programs``) on one mesh, and the data."""

  config: ml_collections.ConfigDict
  model_cfg: Any
  mesh: jax.sharding.Mesh
  rules: Any
  programs: train.Programs
  data: Any

  def abstract_state(self) -> train.TrainState:
    """``ShapeDtypeStruct``s of the state carrying this mesh's shardings (restore target)."""
    with sharding.mesh_context(self.mesh, self.rules):
      return self.programs.abstract_state(jax.random.key(self.config.seed))

  def batch(self, i: int) -> dict[str, jax.Array]:
    """Global batch ``i`` of the training stream, placed over ``(data, fsdp)``."""
    self.data.train.set_state(_batch_state(self.data.train.get_state(), i))
    local = next(self.data.train)
    return sharding.global_batch({k: local[k] for k in train.BATCH_KEYS}, self.mesh)

  def run(self, state: train.TrainState, first: int, count: int) -> tuple[train.TrainState, list[float]]:
    """Steps ``first + 1 .. first + count`` from ``state``; returns the new state and losses."""
    losses = []
    with sharding.mesh_context(self.mesh, self.rules):
      for i in range(first, first + count):
        state, metrics = self.programs.train_step(state, self.batch(i))
        losses.append(float(metrics["loss"]))
    return state, losses


def _batch_state(state: dict, index: int) -> dict:
  if state.get("kind") != "indexed":
    raise ValueError(f"expected the synthetic task's indexed iterator, got {state.get('kind')!r}.")
  return dict(state, batch_index=index)


def build(
  config: ml_collections.ConfigDict, *, workdir: str, devices: Sequence[jax.Device] | None = None
) -> ShardedRun:
  """The trainer's sharded programs for ``config.mesh`` over ``devices``.

  ``workdir`` is where the data pipeline may write (the synthetic task writes nothing).
  """
  data = make_data(
    config.data, seed=config.seed, workdir=workdir, process_index=jax.process_index(), process_count=jax.process_count()
  )
  model_cfg = components.model_config(config, data.info.vocab_size)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  with sharding.mesh_context(mesh, rules):
    programs = train.make_programs(config, model_cfg, mesh, rules)
  return ShardedRun(config=config, model_cfg=model_cfg, mesh=mesh, rules=rules, programs=programs, data=data)


def initial_state(run: ShardedRun) -> train.TrainState:
  with sharding.mesh_context(run.mesh, run.rules):
    return run.programs.init(jax.random.key(run.config.seed))


def shard_shapes(tree: Any) -> dict[str, list[list[int]]]:
  """``{path: [global shape, shape of the shard on the first device]}`` of every array."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and leaf.ndim:
      out[jax.tree_util.keystr(path)] = [list(leaf.shape), list(leaf.addressable_shards[0].data.shape)]
  return out


def host_params(state: train.TrainState) -> dict[str, np.ndarray]:
  """The parameters as ``{path: numpy array}`` (gathered from every shard)."""
  return {
    jax.tree_util.keystr(p): np.asarray(jax.device_get(x))
    for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
  }
