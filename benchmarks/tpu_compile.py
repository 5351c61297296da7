r"""Compiles the sharded train step for a Cloud TPU pod slice without one (issue 5, part 6).

JAX can describe a TPU topology it is not running on
(``jax.experimental.topologies.get_topology_desc``, the same route as MaxText's
``train_compile.py``): its devices carry the chips' coordinates, a mesh is built over
them with ``cyb_jax.sharding.make_mesh``, and the trainer's own ``train_step`` (jitted
with the trainer's shardings, donated state) is lowered with abstract inputs and
compiled by libtpu's compiler. Nothing is allocated; XLA's buffer assignment
(:func:`cyb_jax.training.mfu.compiled_bytes`) then gives each chip's memory, which is compared with the chip's
HBM ("fits"). The compile-only client does not itself refuse a program that is too
large (a v5e program of 20.6 GiB compiled), so read the "fits" column, not the absence
of errors.

The trainer's start-up accounting (:func:`cyb_jax.training.mfu.account_train_step`, as
``train.train_and_evaluate`` calls it) then runs against the topology's mesh: the model
FLOPs per chip (analytic: a lowered program's cost analysis is None through libtpu's PJRT C
API), the peak of the chips' ``device_kind`` from the table, and the compiled program's
memory analysis. None of them may fail; a figure that does is reported as missing.

It needs ``libtpu`` matching the installed JAX (``pip install -e '.[tpu]'``; for
jax 0.10.2 that is ``libtpu==0.0.42.*``), in an environment of its own: with libtpu
installed, JAX looks for TPU chips at start-up. ``JAX_PLATFORMS=cpu`` (set here) keeps
the default backend on the CPU; the topology is still compiled for by libtpu. Only one
process at a time can load libtpu (it holds ``/tmp/libtpu_lockfile``).

  /tmp/tpuvenv/bin/python benchmarks/tpu_compile.py                      # 1B model, v5e-16 and v4-32
  /tmp/tpuvenv/bin/python benchmarks/tpu_compile.py --topology=v5e-16 --mesh=1,16,1 \
      --batch_size=32 --seq_len=2048 --remat_policy=full
  /tmp/tpuvenv/bin/python benchmarks/tpu_compile.py --topology=v5e-16 --num_slices=2 --dcn_data=2
  /tmp/tpuvenv/bin/python benchmarks/tpu_compile.py --attention_impl=xla,splash --topology=v5e-16
  /tmp/tpuvenv/bin/python benchmarks/tpu_compile.py --preset=gemma3-1b --topology=v5e-8,v4-8 \
      --max_pauses=1 --batch_size=8 --seq_len=2048     # CYB fine-tuning of a pretrained shape

The mesh is ``data,fsdp,tensor`` with ``-1`` filling in; ``--dcn_data`` splits the data
axis across ``--num_slices`` slices as ``mesh.dcn_data`` does on a multi-slice job.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU is only a compile target here
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server to ask

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import json
import sys
import time

import jax
from absl import app
from absl import flags
from jax.experimental import topologies
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import sharding as sharding_benchmark
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.configs import base as base_config
from cyb_jax.data import synthetic
from cyb_jax.training import components
from cyb_jax.training import mfu

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Slice:
  """A Cloud TPU slice as ``get_topology_desc`` names it, and its memory per chip."""

  topology: str  # "<generation>:<chips per dimension>"
  chip_config: str  # "default", or "megacore" (v4: the chip's 2 TensorCores as one device)
  chips_per_host: tuple[int, int, int]
  hbm_bytes: int  # per chip


SLICES = {
  "v4-8": Slice("v4:2x2x1", "megacore", (2, 2, 1), 32 * GIB),
  "v4-16": Slice("v4:2x2x2", "megacore", (2, 2, 1), 32 * GIB),
  "v4-32": Slice("v4:2x2x4", "megacore", (2, 2, 1), 32 * GIB),
  "v4-64": Slice("v4:2x4x4", "megacore", (2, 2, 1), 32 * GIB),
  "v5e-8": Slice("v5e:2x4", "default", (2, 2, 1), 16 * GIB),
  "v5e-16": Slice("v5e:4x4", "default", (2, 2, 1), 16 * GIB),
  "v5e-32": Slice("v5e:4x8", "default", (2, 2, 1), 16 * GIB),
  "v5e-64": Slice("v5e:8x8", "default", (2, 2, 1), 16 * GIB),
  "v5e-256": Slice("v5e:16x16", "default", (2, 2, 1), 16 * GIB),
}

_TOPOLOGY = flags.DEFINE_list("topology", ["v5e-16", "v4-32"], f"Slices to compile for, of {sorted(SLICES)}.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-centre network.")
_MESH = flags.DEFINE_string("mesh", "1,-1,1", "data,fsdp,tensor sizes per job (-1 fills in).")
_DCN_DATA = flags.DEFINE_integer("dcn_data", 1, "mesh.dcn_data: data-parallel groups of slices.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch in rows.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per row (N).")
_MAX_PAUSES = flags.DEFINE_integer("max_pauses", 3, "K.")
_REMAT = flags.DEFINE_string("remat_policy", "full", "model.remat_policy.")
_VOCAB_CHUNK = flags.DEFINE_integer("vocab_chunk", 8192, "loss.vocab_chunk (0: full logits).")
_PRESET = flags.DEFINE_enum(
  "preset",
  "1b",
  ["1b", "tiny", "llama3.2-1b", "gemma3-1b"],
  "Model when no --config is given: the project's 1B, a tiny one, or "
  "the architecture and shapes of Llama-3.2-1B or Gemma-3-1B (random "
  "weights of the real shapes, as fine-tuning them would hold).",
)
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "A run config (e.g. cyb_jax/configs/tfds_lm.py) to compile instead of --preset; "
  "override its fields with --config.FIELD=VALUE. The flags batch_size, seq_len, "
  "max_pauses, remat_policy and vocab_chunk then do not apply; --mesh and --dcn_data do.",
  lock_config=False,
)
_ATTENTION = flags.DEFINE_list(
  "attention_impl",
  ["xla"],
  "model.attention_impl values to compile, each a row per slice: xla (dense scores), "
  "splash (the Pallas splash Mosaic kernel) or dot_product.",
)
_OUT = flags.DEFINE_string("out", None, "Also write the figures as JSON to this path.")


# The ModelConfig fields of the Hub's config.json of each (cyb_jax.pretrained.hf_config maps
# them the same way): meta-llama/Llama-3.2-1B and google/gemma-3-1b-pt.
PRETRAINED_PRESETS = {
  "llama3.2-1b": dict(
    vocab_size=128256,
    num_layers=16,
    d_model=2048,
    num_heads=32,
    num_kv_heads=8,
    head_dim=None,
    mlp_dim=8192,
    tie_embeddings=True,
    rms_norm_eps=1e-5,
    rope_base=500000.0,
    rope_scaling="llama3",
    rope_scaling_factor=32.0,
    rope_low_freq_factor=1.0,
    rope_high_freq_factor=4.0,
    rope_original_max_positions=8192,
  ),
  "gemma3-1b": dict(
    vocab_size=262144,
    num_layers=26,
    d_model=1152,
    num_heads=4,
    num_kv_heads=1,
    head_dim=256,
    mlp_dim=6912,
    tie_embeddings=True,
    rms_norm_eps=1e-6,
    norm_plus_one=True,
    mlp_activation="gelu_tanh",
    scale_embeddings=True,
    qk_norm=True,
    post_norms=True,
    query_pre_attn_scalar=256.0,
    rope_base=1000000.0,
    rope_local_base=10000.0,
    sliding_window=512,
    layer_types=tuple("full" if (i + 1) % 6 == 0 else "sliding" for i in range(26)),
  ),
}


def model_config(preset: str) -> dict:
  """``1b``: 16 layers, d_model 2048, 16 heads, SwiGLU 5632, V = 32768: 0.95B parameters;
  ``llama3.2-1b`` (1.24B) and ``gemma3-1b`` (1.0B): see PRETRAINED_PRESETS."""
  if preset == "1b":
    return dict(vocab_size=32768, num_layers=16, d_model=2048, num_heads=16, mlp_dim=5632)
  if preset in PRETRAINED_PRESETS:
    return dict(PRETRAINED_PRESETS[preset])
  return dict(vocab_size=256, num_layers=2, d_model=256, num_heads=8, mlp_dim=512)


def run_config(preset: str):
  """The run config compiled here: ``--config``'s, or a CYB-AP preset (bfloat16 compute,
  float32 parameters and AdamW); the mesh from ``--mesh`` and ``--dcn_data``."""
  data, fsdp, tensor = (int(s) for s in _MESH.value.split(","))
  if _CONFIG.value is not None:
    c = _CONFIG.value
    if not c.model.vocab_size and c.data.source != "synthetic":
      c.model.vocab_size = c.data.spm_vocab_size  # the vocabulary the tokenizer is asked for
    c.mesh.update(data=data, fsdp=fsdp, tensor=tensor, dcn_data=_DCN_DATA.value)
    return c
  c = base_config.get_config()
  c.model.update(
    model_config(preset),
    max_pauses=_MAX_PAUSES.value,
    dtype="bfloat16",
    param_dtype="float32",
    scan_layers=True,
    remat_policy=_REMAT.value,
  )
  c.loss.name = "cyb_ap"
  c.loss.vocab_chunk = _VOCAB_CHUNK.value or None  # 0: the full logits
  c.data.update(batch_size=_BATCH.value, seq_len=_SEQ_LEN.value)
  c.mesh.update(data=data, fsdp=fsdp, tensor=tensor, dcn_data=_DCN_DATA.value)
  return c


def topology_devices(name: str, num_slices: int) -> list:
  if name not in SLICES:
    raise app.UsageError(f"--topology={name!r} is unknown; allowed: {sorted(SLICES)}.")
  s = SLICES[name]
  return topologies.get_topology_desc(
    s.topology,
    platform="tpu",
    chip_config_name=s.chip_config,
    chips_per_host_bounds=s.chips_per_host,
    num_slices=num_slices,
  ).devices


def compile_for(name: str, config) -> dict:
  """Compiles the train step for slice ``name``; returns its per-chip memory figures and the
  trainer's start-up accounting of it (``flops_per_device``, ``peak_flops_per_device``:
  None where missing)."""
  devices = topology_devices(name, _NUM_SLICES.value)
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  model_cfg = components.model_config(config, synthetic.VOCAB_SIZE)
  num_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(model_lib.init_params, model_cfg, jax.random.key(0))))
  start = time.perf_counter()
  row = {
    "slice": name,
    "attention_impl": config.model.attention_impl,
    "num_slices": _NUM_SLICES.value,
    "chips": len(devices),
    "device_kind": devices[0].device_kind,
    "mesh": dict(mesh.shape),
    "num_params": num_params,
    "batch": [config.data.batch_size, config.data.seq_len],
    "max_pauses": config.model.max_pauses,
    "remat_policy": config.model.remat_policy,
    "vocab_chunk": config.loss.vocab_chunk,
    "hbm_bytes": SLICES[name].hbm_bytes,
    # Which slices each index of the data axis spans (multi-slice: one slice each).
    "data_axis_slices": [sorted({int(getattr(d, "slice_index", 0)) for d in row.flat}) for row in mesh.devices],
  }
  try:
    compiled = sharding_benchmark.compile_train_step(config, mesh)
  except Exception as e:  # pylint: disable=broad-except
    # libtpu reports programs that do not fit as a compile error (RESOURCE_EXHAUSTED).
    row.update(compiled=False, error=str(e).splitlines()[0][:500], compile_s=time.perf_counter() - start)
    return row
  row.update(compiled=True, compile_s=time.perf_counter() - start)
  accounting = mfu.account_train_step(
    model_cfg,
    (config.data.batch_size, config.data.seq_len),
    mesh,
    compiled,
    configured_peak=config.peak_flops_per_device,
  )
  row.update(
    flops_per_device=accounting.flops_per_device,
    peak_flops_per_device=accounting.peak_flops_per_device,
    **(accounting.memory or dict.fromkeys(("argument", "output", "temp", "alias", "peak"))),
  )
  row["fits"] = None if accounting.memory is None else row["peak"] <= row["hbm_bytes"]
  counts = sharding_benchmark.count_collectives(compiled.as_text())
  row["collectives"] = {k: v["count"] for k, v in counts.items()}
  return row


def _figure(value: float | None, unit: float, spec: str = ".2f") -> str:
  """``value / unit`` formatted by ``spec``; "-" for a figure that is missing (None)."""
  return "-" if value is None else format(value / unit, spec)


def main(argv):
  del argv
  config = run_config(_PRESET.value)
  source = "--config" if _CONFIG.value is not None else f"preset {_PRESET.value}"
  m = config.model
  print(
    f"JAX {jax.__version__}; compiling the {config.loss.name} train step ({source}: "
    f"V={m.vocab_size} D={m.d_model} L={m.num_layers} heads={m.num_heads} mlp={m.mlp_dim} "
    f"K={m.max_pauses}, batch {config.data.batch_size} x {config.data.seq_len}, "
    f"remat {m.remat_policy}, vocab_chunk {config.loss.vocab_chunk}, "
    f"{m.dtype} compute, {m.param_dtype} parameters and AdamW state) for {', '.join(_TOPOLOGY.value)}.\n"
  )
  rows = []
  for impl in _ATTENTION.value:
    config.model.attention_impl = impl
    rows += [compile_for(name, config) for name in _TOPOLOGY.value]
  print(
    "| slice | attention | chips | mesh (data, fsdp, tensor) | parameters | arguments GiB | "
    "temporaries GiB | peak GiB | HBM GiB | fits | model TFLOP / chip / step | chip peak TFLOP/s | compile s |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    mesh = tuple(r["mesh"].values())
    head = (
      f"| {r['slice']} x{r['num_slices']} | {r['attention_impl']} | {r['chips']} | {mesh} | "
      f"{r['num_params'] / 1e9:.2f}B |"
    )
    if not r["compiled"]:
      print(f"{head} - | - | - | {r['hbm_bytes'] / GIB:.0f} | no: {r['error']} | - | - | {r['compile_s']:.0f} |")
      continue
    fits = {True: "yes", False: "no", None: "unknown"}[r["fits"]]
    print(
      f"{head} {_figure(r['argument'], GIB)} | {_figure(r['temp'], GIB)} | {_figure(r['peak'], GIB)} | "
      f"{r['hbm_bytes'] / GIB:.0f} | {fits} | {_figure(r['flops_per_device'], 1e12, '.3g')} | "
      f"{_figure(r['peak_flops_per_device'], 1e12, '.0f')} | {r['compile_s']:.0f} |"
    )
  for r in rows:
    if r["compiled"]:
      print(
        f"{r['slice']} x{r['num_slices']}: collectives {r['collectives']}; slices of "
        f"each data index {r['data_axis_slices']}"
      )
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
