r"""Compiles the trainer's train step for an NVIDIA GPU without one (issue 29, item 4).

As ``benchmarks/tpu_compile.py`` does for TPU slices: XLA's GPU compiler needs only a
description of the card (``benchmarks/gpu_targets.py``: an H100 or H200 as a
``GpuTargetConfig``, through JAX's CUDA plugin from ``make cuda-tools``; no GPU, no driver).
The trainer's own ``train_step`` (:func:`cyb_jax.training.programs.make_programs`, jitted with
the trainer's shardings, donated state, via ``benchmarks/sharding.py``) is traced and lowered
with abstract inputs on a mesh of the card's topology devices and compiled for it, inside
``jax.default_device(device)`` so that tokamax chooses its Hopper (sm90) Mosaic GPU attention
kernel. Nothing is allocated and nothing runs. Per row it reports:

  * lower and compile seconds (trace + lower, then XLA's GPU compile, on this host);
  * arguments, temporaries and peak GiB per GPU: XLA's buffer assignment of the compiled
    program (:func:`cyb_jax.training.mfu.compiled_bytes`), compared with the card's memory
    ("fits"). The compiler does not refuse a program that is too large: read "fits";
  * the analytic estimate of the memory (``benchmarks/memory_bound.py``: parameters, AdamW
    moments, gradients, saved activations, the pause scan's keys/values, one layer's working
    set, one loss chunk, dense scores on the ``xla`` path) and peak / estimate;
  * the Mosaic GPU kernel calls (``custom_call_target="mosaic_gpu..."``) in the compiled program,
    a static count (a call inside a loop body counts once; the layer scan's and the pause scan's
    bodies hold one attention call each): 0 for ``xla``; for ``dot_product`` 3 per attention
    call (forward; dq; dk and dv), 4 under remat ``full`` (the forward recomputed), and more
    where XLA's own rematerialization, which acts when a program is over the memory limit XLA's
    GPU compiler sets for the card, duplicates some (``kernels_lowered`` in the JSON: the
    lowered program's count);
  * the trainer's start-up accounting against the topology (model FLOPs per GPU, the card's table
    peak), as ``train.train_and_evaluate`` runs it.

What "compiled" covers: every XLA fusion of the step is compiled to sm_90 PTX and cubin by
ptxas here. The Mosaic kernels are Pallas kernels traced and lowered for the Hopper GPU
(tokamax's sm90 configuration, the Mosaic GPU dialect's checks) and embedded in the program as
MLIR; the Mosaic GPU runtime compiles them to cubin when the executable is loaded on a GPU,
which needs the driver, so a kernel that lowers here can still fail there.

The presets: ``135m`` is the acceptance check's throughput model (``benchmarks/accel_stages.py``
``throughput_config`` with its GPU sizes: 12 x 768, 12 heads, SwiGLU 2048, V 32768, N 1024,
B 16, bf16 compute, float32 parameters and AdamW, scanned layers, no remat, the whole logits;
``ce`` at K = 0 and ``cyb_ap`` above); ``1b`` is ``tpu_compile.py``'s 0.95B model (16 x 2048,
16 heads, SwiGLU 5632, V 32768) with its remat ``full`` and ``vocab_chunk`` 8192, N 2048 and
8 rows for one GPU; ``tiny`` (2 x 256, V 256, N 128, B 2) is the test's
(``tests/test_gpu_compile.py``).

  python benchmarks/gpu_compile.py                    # 135m, H100, K = 0, 1, 3, xla and dot_product
  python benchmarks/gpu_compile.py --preset=1b --max_pauses=0,3 --attention_impl=dot_product
  python benchmarks/gpu_compile.py --target=h100,h200 --batch_size=32 --remat_policy=full
  python benchmarks/gpu_compile.py --preset=tiny --gpus=8 --mesh=1,-1,1   # one host of 8 GPUs, fsdp 8

Run it with the CUDA plugin where ``make cuda-tools`` put it (``.cache/jax_cuda``, or
``CYB_JAX_CUDA_PATH``); ``JAX_PLATFORMS=cpu`` (set here) keeps the CPU as the default backend.
It exits with status 1 when a row failed to compile (every other row still runs and is printed).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import gpu_targets

if __name__ == "__main__":
  gpu_targets.use_cuda_tools()  # before JAX starts: the plugin on the path, the CPU the default backend

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import functools
import json
import re
import time

import jax
import ml_collections
from absl import app
from absl import flags
from jax.experimental import topologies

from benchmarks import accel_stages
from benchmarks import memory_bound
from benchmarks import sharding as sharding_benchmark
from cyb_jax import sharding
from cyb_jax.data import synthetic
from cyb_jax.training import components
from cyb_jax.training import mfu

GIB = 2**30
# A Mosaic GPU kernel call in the compiled HLO (its target is "mosaic_gpu_v2" in jax 0.12) and in
# the lowered StableHLO.
COMPILED_KERNEL_RE = re.compile(r'custom_call_target="mosaic_gpu[\w]*"')
LOWERED_KERNEL = "stablehlo.custom_call @mosaic_gpu"


@dataclasses.dataclass(frozen=True)
class Preset:
  """A model and batch to compile: ``sizes`` as ``accel_stages.throughput_config`` reads them
  (layers, d_model, heads, mlp_dim, vocab, length = N, batch = B, dtype, scan_layers), the remat
  policy and ``loss.vocab_chunk`` (None: the whole logits)."""

  sizes: dict
  remat_policy: str
  vocab_chunk: int | None


_ACCEL_SIZES = ("layers", "d_model", "heads", "mlp_dim", "vocab", "length", "batch", "dtype")
PRESETS = {
  # The acceptance check's throughput model on one GPU (accel_check.py's GPU defaults).
  "135m": Preset(
    dict({k: accel_stages.MODE_DEFAULTS[f"tp_{k}"][0] for k in _ACCEL_SIZES}, scan_layers=True), "none", None
  ),
  # tpu_compile.py's "1b" model with its remat and vocabulary chunk; 8 rows of 2048 on one GPU.
  "1b": Preset(
    dict(
      layers=16,
      d_model=2048,
      heads=16,
      mlp_dim=5632,
      vocab=32768,
      length=2048,
      batch=8,
      dtype="bfloat16",
      scan_layers=True,
    ),
    "full",
    8192,
  ),
  "tiny": Preset(
    dict(
      layers=2, d_model=256, heads=8, mlp_dim=512, vocab=256, length=128, batch=2, dtype="bfloat16", scan_layers=True
    ),
    "none",
    None,
  ),
}


_TARGET = flags.DEFINE_list("target", ["h100"], f"GPUs to compile for, of {sorted(gpu_targets.TARGETS)}.")
_PRESET = flags.DEFINE_enum("preset", "135m", sorted(PRESETS), "Model and batch (module docstring).")
_MAX_PAUSES = flags.DEFINE_list("max_pauses", ["0", "1", "3"], "K values, a row each (ce at K = 0, cyb_ap above).")
_ATTENTION = flags.DEFINE_list(
  "attention_impl",
  ["xla", "dot_product"],
  "model.attention_impl values, a row each: xla (dense scores) or dot_product (tokamax's Mosaic GPU flash kernel).",
)
_LAYOUT = flags.DEFINE_list("pause_layout", ["private"], "model.pause_layout values, a row each: private, visible.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch in rows (default: the preset's).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Tokens per row, N (default: the preset's).")
_REMAT = flags.DEFINE_string("remat_policy", None, "model.remat_policy (default: the preset's).")
_VOCAB_CHUNK = flags.DEFINE_integer(
  "vocab_chunk", None, "loss.vocab_chunk, 0 for the whole logits (default: the preset's)."
)
_GPUS = flags.DEFINE_integer("gpus", 1, "GPUs of one host to compile for (a topology of 1 x 1 x gpus).")
_MESH = flags.DEFINE_string("mesh", "1,-1,1", "data,fsdp,tensor sizes over --gpus (-1 fills in).")
_OUT = flags.DEFINE_string("out", None, "Also write the rows as JSON to this path.")


def run_config(
  preset: str,
  max_pauses: int,
  attention_impl: str,
  *,
  pause_layout: str = "private",
  batch_size: int | None = None,
  seq_len: int | None = None,
  remat_policy: str | None = None,
  vocab_chunk: int | None = None,
  mesh: tuple[int, int, int] = (1, 1, 1),
) -> ml_collections.ConfigDict:
  """The acceptance check's run config (``accel_stages.throughput_config``: the default config,
  ``ce`` at K = 0 and ``cyb_ap`` above, bf16 compute, float32 parameters) of ``preset``, with
  the given overrides (None: the preset's; ``vocab_chunk`` 0: the whole logits) and mesh sizes."""
  p = PRESETS[preset]
  sizes = dict(p.sizes)
  sizes.update((k, v) for k, v in (("batch", batch_size), ("length", seq_len)) if v is not None)
  c = accel_stages.throughput_config(sizes, max_pauses, attention_impl)
  chunk = p.vocab_chunk if vocab_chunk is None else (vocab_chunk or None)
  c.model.update(remat_policy=remat_policy or p.remat_policy, pause_layout=pause_layout)
  c.loss.vocab_chunk = chunk
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2], dcn_data=1)
  return c


@functools.cache
def target_devices(target: str, gpus: int) -> tuple:
  """``gpus`` devices of one host of ``target`` GPUs to compile for (gpu_targets' description)."""
  if gpus == 1:
    return (gpu_targets.topology_device(target),)
  config = gpu_targets.TARGETS[target].target_config()
  return tuple(
    topologies.get_topology_desc(
      platform="cuda", topology_name="", target_config=config, topology=f"1x1x{gpus}"
    ).devices
  )


def _first_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:500]


def compile_row(config: ml_collections.ConfigDict, target: str, gpus: int = 1) -> dict:
  """Compiles ``config``'s train step for ``gpus`` ``target`` GPUs; never raises.

  Returns the row's figures: ``compiled`` (False with ``error``, the first line of the
  exception, when tracing, lowering or compiling failed), ``lower_s``, ``compile_s``, the
  per-GPU memory (``argument``, ``output``, ``temp``, ``alias``, ``peak`` bytes), ``estimate``
  (``memory_bound.train_step_estimate``'s terms), ``fits``, ``kernels`` (Mosaic GPU calls in
  the compiled program) and ``kernels_lowered`` (in the lowered one), ``flops_per_device`` and
  ``peak_flops_per_device``; a figure that could not be had is None.
  """
  m = config.model
  row = {
    "target": target,
    "gpus": gpus,
    "attention_impl": m.attention_impl,
    "max_pauses": m.max_pauses,
    "pause_layout": m.pause_layout,
    "loss": config.loss.name,
    "batch": [config.data.batch_size, config.data.seq_len],
    "remat_policy": m.remat_policy,
    "vocab_chunk": config.loss.vocab_chunk,
    "dtype": m.dtype,
    "param_dtype": m.param_dtype,
    "hbm_bytes": gpu_targets.TARGETS[target].memory_bytes if target in gpu_targets.TARGETS else None,
    "compiled": False,
  }
  phase, start = "lower_s", time.perf_counter()
  try:
    devices = target_devices(target, gpus)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    row.update(device_kind=devices[0].device_kind, mesh=dict(mesh.shape))
    # Outside jax.default_device: building the programs runs eager JAX (PRNG keys), which a
    # topology's device cannot.
    programs, abstract_state, batch = sharding_benchmark.sharded_programs(config, mesh)
    rules = sharding.rules_from_config(config.logical_axis_rules)
    with jax.default_device(devices[0]), sharding.mesh_context(mesh, rules):
      lowered = programs.train_step.trace(abstract_state, batch).lower()
      row["lower_s"] = time.perf_counter() - start
      phase, start = "compile_s", time.perf_counter()
      compiled = lowered.compile()
    row.update(compiled=True, compile_s=time.perf_counter() - start)
  except Exception as e:  # pylint: disable=broad-except
    row.update({phase: time.perf_counter() - start, "error": _first_line(e)})
    return row
  try:
    _account(row, config, mesh, abstract_state, lowered, compiled)
  except Exception as e:  # pylint: disable=broad-except  # bookkeeping never fails a compiled row
    row["bookkeeping_error"] = _first_line(e)
  return row


def _account(row: dict, config, mesh, abstract_state, lowered, compiled) -> None:
  """Adds a compiled row's memory, estimate, fit, kernel counts and FLOPs (each None where it
  fails) to ``row``."""
  model_cfg = components.model_config(config, synthetic.VOCAB_SIZE)
  params = jax.tree.leaves(abstract_state.params)
  row["num_params"] = sum(x.size for x in params)
  row["param_bytes"] = sum(x.size * x.dtype.itemsize for x in params)
  accounting = mfu.account_train_step(model_cfg, tuple(row["batch"]), mesh, compiled)
  row.update(
    flops_per_device=accounting.flops_per_device,
    peak_flops_per_device=accounting.peak_flops_per_device,
    **(accounting.memory or dict.fromkeys(("argument", "output", "temp", "alias", "peak"))),
  )
  row["fits"] = None if row["peak"] is None or row["hbm_bytes"] is None else row["peak"] <= row["hbm_bytes"]
  shape = mesh.shape
  row["estimate"] = mfu.or_warn(
    "The analytic memory estimate",
    memory_bound.train_step_estimate,
    model_cfg,
    config.data.batch_size,
    config.data.seq_len,
    config.loss.vocab_chunk,
    row["param_bytes"],
    param_shards=shape["fsdp"] * shape["tensor"],
    row_shards=shape["data"] * shape["fsdp"],
  )
  compiled_text = mfu.or_warn("The compiled program's text", compiled.as_text)
  lowered_text = mfu.or_warn("The lowered program's text", lowered.as_text)
  row["kernels"] = None if compiled_text is None else len(COMPILED_KERNEL_RE.findall(compiled_text))
  row["kernels_lowered"] = None if lowered_text is None else lowered_text.count(LOWERED_KERNEL)
  if compiled_text is not None:
    row["collectives"] = {k: v["count"] for k, v in sharding_benchmark.count_collectives(compiled_text).items()}


def _gib(value: float | None) -> str:
  return "-" if value is None else f"{value / GIB:.2f}"


def table(rows: list[dict]) -> str:
  """The rows as a markdown table, then each compiled row's estimate by term (GiB)."""
  lines = [
    "| GPU | attention | K | layout | parameters | lower s | compile s | arguments GiB | temporaries GiB | "
    "peak GiB | estimate GiB | peak / estimate | memory GiB | fits | Mosaic kernels | model TFLOP / GPU / step |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    gpu = f"{r['target']} x{r['gpus']}"
    head = f"| {gpu} | {r['attention_impl']} | {r['max_pauses']} | {r['pause_layout']} |"
    memory = _gib(r["hbm_bytes"])
    if not r["compiled"]:
      lines.append(
        f"{head} - | {r.get('lower_s', 0):.0f} | {r.get('compile_s', 0):.0f} | - | - | - | - | - | {memory} | "
        f"failed: {r['error']} | - | - |"
      )
      continue
    peak, estimate = r.get("peak"), (r.get("estimate") or {}).get("total")
    ratio = "-" if peak is None or not estimate else f"{peak / estimate:.2f}"
    fits = {True: "yes", False: "no", None: "unknown"}[r.get("fits")]
    kernels = "-" if r.get("kernels") is None else str(r["kernels"])
    flops = "-" if r.get("flops_per_device") is None else f"{r['flops_per_device'] / 1e12:.3g}"
    params = "-" if r.get("num_params") is None else f"{r['num_params'] / 1e6:.1f}M"
    lines.append(
      f"{head} {params} | {r['lower_s']:.0f} | {r['compile_s']:.0f} | {_gib(r.get('argument'))} | "
      f"{_gib(r.get('temp'))} | {_gib(peak)} | {_gib(estimate)} | {ratio} | {memory} | {fits} | {kernels} | "
      f"{flops} |"
    )
  lines.append("")
  for r in rows:
    if r.get("estimate"):
      terms = ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["estimate"].items() if k != "total")
      lines.append(f"{r['target']} {r['attention_impl']} K={r['max_pauses']} {r['pause_layout']}: estimate GiB {terms}")
    if r["compiled"] and r["gpus"] > 1 and r.get("collectives"):
      lines.append(
        f"{r['target']} x{r['gpus']} {r['attention_impl']} K={r['max_pauses']}: collectives {r['collectives']}"
      )
  return "\n".join(lines)


def main(argv):
  del argv
  unknown = sorted(set(_TARGET.value) - set(gpu_targets.TARGETS))
  if unknown:
    raise app.UsageError(f"--target={','.join(unknown)} unknown; allowed: {sorted(gpu_targets.TARGETS)}.")
  mesh = tuple(int(s) for s in _MESH.value.split(","))
  if len(mesh) != 3:
    raise app.UsageError(f"--mesh={_MESH.value!r} must be three sizes data,fsdp,tensor.")
  overrides = dict(
    batch_size=_BATCH.value,
    seq_len=_SEQ_LEN.value,
    remat_policy=_REMAT.value,
    vocab_chunk=_VOCAB_CHUNK.value,
    mesh=mesh,
  )
  configs = [
    run_config(_PRESET.value, int(k), impl, pause_layout=layout, **overrides)
    for layout in _LAYOUT.value
    for k in _MAX_PAUSES.value
    for impl in _ATTENTION.value
  ]
  c = configs[0]
  m = c.model
  plugin = gpu_targets.cuda_tools_path() if gpu_targets.cuda_tools_in_use() else "the environment"
  print(
    f"JAX {jax.__version__}, CUDA plugin from {plugin}; compiling the train step (preset {_PRESET.value}: "
    f"V={m.vocab_size} D={m.d_model} L={m.num_layers} heads={m.num_heads} mlp={m.mlp_dim}, "
    f"batch {c.data.batch_size} x {c.data.seq_len}, remat {m.remat_policy}, "
    f"vocab_chunk {c.loss.vocab_chunk}, {m.dtype} compute, {m.param_dtype} parameters and AdamW state, "
    f"scan_layers={m.scan_layers}) for {_GPUS.value} x {', '.join(_TARGET.value)}. Memory is XLA's buffer "
    "assignment of the compiled program per GPU (nothing runs); the estimate is benchmarks/memory_bound.py's.\n",
    flush=True,
  )
  rows = []
  for target in _TARGET.value:
    for config in configs:
      row = compile_row(config, target, _GPUS.value)
      rows.append(row)
      status = f"peak {_gib(row.get('peak'))} GiB" if row["compiled"] else f"failed: {row['error']}"
      print(
        f"{target} {row['attention_impl']} K={row['max_pauses']} {row['pause_layout']}: lowered in "
        f"{row.get('lower_s', 0):.1f} s, compiled in {row.get('compile_s', 0):.1f} s, {status}",
        flush=True,
      )
      if _OUT.value:  # after each row, so an interrupted run keeps what it compiled
        with open(_OUT.value, "w") as f:
          json.dump(rows, f, indent=1)
  print("\n" + table(rows))
  if not all(r["compiled"] for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
