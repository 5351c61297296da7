"""Device mesh, logical axis rules and sharded placement (docs/design.md section 7).

The mesh has three axes:

* ``data``: pure data parallelism (parameters replicated);
* ``fsdp``: data parallelism with parameters and optimiser state sharded (ZeRO-3);
* ``tensor``: tensor (model) parallelism over heads, MLP and vocabulary.

Parameters and activations carry *logical* axis names (``cyb_jax.model``); the
rules in the config map them to mesh axes, so the same model code runs on one CPU,
a GPU, or a TPU pod slice. Batches are sharded over ``(data, fsdp)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import linen as nn
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
  # Parameters.
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("head_dim", None),
  ("pauses", None),
  ("layers", None),
  ("norm", None),
  # Activations.
  ("act_batch", BATCH_AXES),
  ("act_length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_kv_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
)


def default_mesh_config() -> ml_collections.ConfigDict:
  """Mesh sizes; ``-1`` takes the devices that the other axes leave."""
  c = ml_collections.ConfigDict()
  c.data = -1  # Data-parallel replicas (parameters replicated).
  c.fsdp = 1  # Fully sharded data parallelism: parameters/optimiser sharded over it.
  c.tensor = 1  # Tensor parallelism over heads, MLP and vocabulary.
  c.dcn_data = 1  # Multi-slice: data-parallel replicas across slices (1 = one slice).
  return c


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves the ``-1`` entry of ``{data, fsdp, tensor}`` against ``num_devices``."""
  shape = [int(sizes[a]) for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, shape):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis}={size} must be a positive size or -1 (fill in).")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
        f"mesh {dict(zip(MESH_AXES, shape))} cannot fill {num_devices} devices:"
        f" {num_devices} is not divisible by {known}."
      )
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, shape))} has {math.prod(shape)} devices, but {num_devices} are in use."
    )
  return tuple(shape)


def make_mesh(mesh_config: ml_collections.ConfigDict | dict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(data, fsdp, tensor)`` mesh with Auto axis types (GSPMD propagation).

  Args:
    mesh_config: ``{data, fsdp, tensor, dcn_data}`` sizes; one of the first three
      may be ``-1`` to take the devices the others leave.
    devices: the devices to lay out (default: all devices of all processes). They
      may also be a TPU topology's devices for ahead-of-time compilation
      (``benchmarks/tpu_compile.py``).

  Returns:
    A Mesh of shape ``(data, fsdp, tensor)``. On one slice the devices are ordered
    by ``jax.make_mesh`` so the inner axes (tensor, then fsdp) get the fastest
    interconnect. With ``dcn_data > 1`` the data axis is split into
    ``dcn_data`` groups of whole slices (``mesh_utils.create_hybrid_device_mesh``):
    only data-parallel gradient reductions then cross the slower data-centre network.

  Raises:
    ValueError: sizes that do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = dict(mesh_config)
  dcn_data = int(sizes.pop("dcn_data", 1))
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; allowed: {list(MESH_AXES)} and dcn_data.")
  if dcn_data < 1:
    raise ValueError(f"mesh.dcn_data={dcn_data} must be >= 1 (the number of slices).")
  shape = mesh_shape(sizes, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if dcn_data == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  if shape[0] % dcn_data:
    raise ValueError(f"mesh.data={shape[0]} must be divisible by mesh.dcn_data={dcn_data}.")
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

  ici = (shape[0] // dcn_data, shape[1], shape[2])
  grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Logical rules as a tuple of ``(logical name, mesh axes)`` with tuples, not lists."""
  out = []
  for name, axes in rules:
    out.append((str(name), tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Within it, jitted code sees ``mesh`` and the model's logical constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(logical_specs: Any, mesh: Mesh, rules: LogicalRules, shapes: Any = None) -> Any:
  """NamedShardings for a pytree of logical ``PartitionSpec``s.

  With ``shapes`` (a matching pytree of arrays or ``ShapeDtypeStruct``s), a dimension whose
  size does not split evenly over the mesh axes its rule names is left whole on those axes
  (e.g. 4 attention heads on a ``tensor`` axis of 8), with a warning naming the array and
  the sizes; the padded vocabulary (``ModelConfig.vocab_pad_multiple``) always splits.
  """
  shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
  if shapes is None:
    return shardings

  def fit(path, named: NamedSharding, leaf) -> NamedSharding:
    spec = list(named.spec) + [None] * (len(leaf.shape) - len(named.spec))
    for dim, axes in enumerate(spec):
      if axes is None:
        continue
      names = axes if isinstance(axes, tuple) else (axes,)
      ways = math.prod(mesh.shape[a] for a in names)
      if leaf.shape[dim] % ways:
        logging.warning(
          "%s: dimension %d of shape %s does not split over mesh axes %s (%d ways): kept whole there.",
          jax.tree_util.keystr(path),
          dim,
          tuple(leaf.shape),
          names,
          ways,
        )
        spec[dim] = None
    return NamedSharding(mesh, P(*spec))

  return jax.tree_util.tree_map_with_path(fit, shardings, shapes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches ``[B, ...]`` are split over ``(data, fsdp)`` and replicated over tensor."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (scalars, metrics, the step counter)."""
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles every process's rows into global arrays sharded over ``(data, fsdp)``.

  Args:
    local_batch: this process's ``[B / P, ...]`` rows of each array (P processes);
      process p holds global rows ``[p B / P, (p + 1) B / P)`` (``cyb_jax.data``).
    mesh: the run's mesh.

  Returns:
    ``[B, ...]`` arrays placed by ``batch_sharding(mesh)``, built with
    ``jax.make_array_from_process_local_data`` and no cross-process traffic: each
    process's devices receive the rows it read. On one process it is a device put.
  """
  sharding = batch_sharding(mesh)
  processes = jax.process_count()
  out = {}
  for name, value in local_batch.items():
    value = np.asarray(value)
    if value.ndim == 0:
      raise ValueError(
        f"batch[{name!r}] is a scalar; every batch array needs a leading row axis [B / process_count, ...]."
      )
    global_shape = (value.shape[0] * processes,) + value.shape[1:]
    out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
  """Bytes of every array of ``tree`` that each addressable device holds.

  A replicated array counts in full on every device; an array sharded n ways counts
  1/n of its size on each of its devices.
  """
  totals: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return totals


def check_batch_divisible(global_batch_size: int, mesh: Mesh, *, name: str = "data.batch_size") -> None:
  """Raises ValueError unless the global batch splits evenly over ``data * fsdp``.

  ``name`` is what the message calls the size.
  """
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch_size % shards:
    raise ValueError(f"{name}={global_batch_size} must be divisible by mesh.data * mesh.fsdp = {shards}.")
