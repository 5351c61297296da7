r"""Compile time of the trainer's train step with layers scanned (``nn.scan``) or unrolled (issue 20).

For each K in ``--pauses`` and ``model.scan_layers`` False / True, the trainer's own train
step (:func:`cyb_jax.training.programs.make_programs`: loss, gradient, AdamW, on one device) of a
``--layers``-layer model is

* **lowered** (tracing and StableHLO: ``train_step.lower(state, batch)``) and **compiled**
  (XLA: ``lowered.compile()``), both timed in wall seconds and process CPU seconds (all
  threads; load barely moves them), from a fresh ``jax.jit`` each time, with no persistent
  compilation cache;
* **run**: one untimed step, then the median wall and CPU time of ``--steps`` steps.

The measurements go round-robin (every K and layout once per round, the order rotating each
round) for ``--repeats`` rounds, and each figure is the median over the rounds; the ratios
scanned / unrolled are taken within each round, and their range over rounds says how noisy
the machine was. A small model is compiled both ways first (untimed) so that one-time costs
of the process do not land on the first measurement.

  python benchmarks/compile_time.py --repeats=3            # 12 x 768, V 8192, N 128, B 1, K 0,1,3
  python benchmarks/compile_time.py --quick                # smoke test
  python benchmarks/compile_time.py --remat_policy=full --out=/tmp/compile.json
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.configs import default as default_config
from cyb_jax.data.packing import BATCH_KEYS
from cyb_jax.training import components
from cyb_jax.training import programs as programs_lib

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes for a smoke test (overrides size flags).")
_OUT = flags.DEFINE_string("out", None, "Also write every figure as JSON to this path.")
_LAYERS = flags.DEFINE_integer("layers", 12, "Transformer blocks L.")
_D_MODEL = flags.DEFINE_integer("d_model", 768, "D.")
_HEADS = flags.DEFINE_integer("heads", 12, "Query heads.")
_MLP_DIM = flags.DEFINE_integer("mlp_dim", 3072, "SwiGLU width.")
_VOCAB = flags.DEFINE_integer("vocab", 8192, "V.")
_LENGTH = flags.DEFINE_integer("length", 128, "N.")
_BATCH = flags.DEFINE_integer("batch", 1, "B.")
_PAUSES = flags.DEFINE_list("pauses", ["0", "1", "3"], "K of each row (0: the ce loss, else cyb_ap).")
_LAYOUT = flags.DEFINE_enum("layout", "private", list(model_lib.PAUSE_LAYOUTS), "model.pause_layout.")
_REMAT = flags.DEFINE_enum("remat_policy", "none", list(model_lib.REMAT_POLICIES), "model.remat_policy.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "model.dtype.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per measurement (after one untimed step).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Rounds: each (K, layout) is lowered, compiled and run once per round.")

_QUICK_SIZES = dict(layers=2, d_model=64, heads=2, mlp_dim=128, vocab=512, length=32, pauses=["0", "1"], steps=2)
_LAYOUTS = {False: "unrolled", True: "scanned"}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The model and batch of one benchmark run."""

  layers: int = 12
  d_model: int = 768
  heads: int = 12
  mlp_dim: int = 3072
  vocab: int = 8192
  length: int = 128
  batch: int = 1
  layout: str = "private"
  remat_policy: str = "none"
  dtype: str = "float32"


def run_config(sizes: Sizes, pauses: int, scan_layers: bool) -> ml_collections.ConfigDict:
  """The default run config with ``sizes``, K pauses (``ce`` at K = 0, else ``cyb_ap``, no
  warm-up) and ``scan_layers``."""
  c = default_config.get_config()
  c.model.update(
    vocab_size=sizes.vocab,
    num_layers=sizes.layers,
    d_model=sizes.d_model,
    num_heads=sizes.heads,
    mlp_dim=sizes.mlp_dim,
    max_pauses=pauses,
    pause_layout=sizes.layout,
    remat_policy=sizes.remat_policy,
    dtype=sizes.dtype,
    scan_layers=scan_layers,
  )
  c.loss.name = "ce" if pauses == 0 else "cyb_ap"
  c.loss.pause_warmup_steps = 0  # one loss for every step timed
  c.data.update(seq_len=sizes.length, batch_size=sizes.batch)
  return c


def _batch(sizes: Sizes, mesh: jax.sharding.Mesh, seed: int = 0) -> dict[str, jax.Array]:
  """One random batch ``[B, N]`` of the trainer's arrays, placed as the trainer places them."""
  rng = np.random.default_rng(seed)
  shape = (sizes.batch, sizes.length)
  local = {
    "inputs": rng.integers(0, sizes.vocab, shape, dtype=np.int32),
    "targets": rng.integers(0, sizes.vocab, shape, dtype=np.int32),
    "weights": np.ones(shape, np.float32),
    "segment_ids": np.ones(shape, np.int32),
    "positions": np.broadcast_to(np.arange(sizes.length, dtype=np.int32), shape).copy(),
  }
  return sharding.global_batch({k: local[k] for k in BATCH_KEYS}, mesh)


def measure_once(sizes: Sizes, pauses: int, scan_layers: bool, steps: int) -> dict[str, float]:
  """Lower, compile and run the trainer's train step once: ``{lower_s, compile_s,
  compile_cpu_s, step_s}`` (wall seconds; ``step_s`` the median of ``steps`` steps after
  one untimed step)."""
  config = run_config(sizes, pauses, scan_layers)
  model_cfg = components.model_config(config, sizes.vocab)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  rules = sharding.rules_from_config(config.logical_axis_rules)
  programs = programs_lib.make_programs(config, model_cfg, mesh, rules)  # a fresh jax.jit
  batch = _batch(sizes, mesh)
  with sharding.mesh_context(mesh, rules):
    state = programs.init(jax.random.key(0))
    start, cpu_start = time.perf_counter(), time.process_time()
    lowered = programs.train_step.lower(state, batch)
    lowered_at, cpu_lowered_at = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    compiled_at, cpu_compiled_at = time.perf_counter(), time.process_time()
    state, _ = jax.block_until_ready(compiled(state, batch))
    wall, cpu = [], []
    for _ in range(steps):
      t, c = time.perf_counter(), time.process_time()
      state, _ = jax.block_until_ready(compiled(state, batch))
      wall.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
  return dict(
    lower_s=lowered_at - start,
    compile_s=compiled_at - lowered_at,
    lower_cpu_s=cpu_lowered_at - cpu_start,
    compile_cpu_s=cpu_compiled_at - cpu_lowered_at,
    step_s=statistics.median(wall),
    step_cpu_s=statistics.median(cpu),
  )


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _total(m: dict[str, float], clock: str) -> float:
  """Lower + compile seconds of one measurement (``clock`` "" for wall, "_cpu" for CPU)."""
  return m[f"lower{clock}_s"] + m[f"compile{clock}_s"]


def bench_compile_time(sizes: Sizes, pauses: Sequence[int], steps: int, repeats: int) -> tuple[dict[str, Any], str]:
  """Compile and step seconds of every (K, scanned or unrolled) and the scanned / unrolled
  ratios: ``(record, markdown table)``."""
  jax.config.update("jax_compilation_cache_dir", None)  # compile for real every time
  warm = dataclasses.replace(sizes, layers=2, d_model=64, heads=2, mlp_dim=128, vocab=256, length=16, batch=1)
  for scan in (False, True):
    measure_once(warm, max(pauses), scan, steps=1)
  keys = [(k, scan) for k in pauses for scan in (False, True)]
  runs: dict[tuple[int, bool], list[dict[str, float]]] = {key: [] for key in keys}
  for r in range(repeats):
    for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
      runs[key].append(measure_once(sizes, *key, steps=steps))
      m = runs[key][-1]
      print(
        f"  round {r + 1}: K={key[0]} {_LAYOUTS[key[1]]}: lower {m['lower_s']:.1f} s, compile "
        f"{m['compile_s']:.1f} s (CPU {_total(m, '_cpu'):.1f} s), step {1e3 * m['step_s']:.0f} ms "
        f"(CPU {1e3 * m['step_cpu_s']:.0f} ms)",
        flush=True,
      )
  measures = {  # name -> seconds of one measurement
    "compile": lambda m: _total(m, ""),
    "compile CPU": lambda m: _total(m, "_cpu"),
    "step": lambda m: m["step_s"],
    "step CPU": lambda m: m["step_cpu_s"],
  }
  header = ["K", "layers", "lower s", "compile s", "lower + compile s", "CPU s", "step ms", "step CPU ms"]
  header += [f"scan / unroll: {name}" for name in measures]
  rows, record = [], []
  for k in pauses:
    for scan in (False, True):
      ms = runs[(k, scan)]
      row = [str(k), _LAYOUTS[scan]]
      row += [f"{statistics.median(m[stat] for m in ms):.1f}" for stat in ("lower_s", "compile_s")]
      row += [f"{statistics.median(_total(m, clock) for m in ms):.1f}" for clock in ("", "_cpu")]
      row += [f"{1e3 * statistics.median(m[stat] for m in ms):.0f}" for stat in ("step_s", "step_cpu_s")]
      entry: dict[str, Any] = dict(pauses=k, scan_layers=scan, runs=ms)
      for name, seconds in measures.items():
        if not scan:
          row.append("")
          continue
        ratios = [seconds(s) / seconds(u) for s, u in zip(ms, runs[(k, False)])]
        entry[f"ratio {name}"] = ratios
        spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
        row.append(f"{statistics.median(ratios):.2f}{spread}")
      rows.append(row)
      record.append(entry)
  title = (
    f"### Train step compile time, layers scanned vs unrolled: L={sizes.layers}, D={sizes.d_model}, "
    f"H={sizes.heads}, F={sizes.mlp_dim}, V={sizes.vocab}, N={sizes.length}, B={sizes.batch}, "
    f"{sizes.layout} layout, {sizes.dtype}, remat {sizes.remat_policy}\n"
    f"Medians of {repeats} rounds (a step: the median of {steps} steps). CPU: process CPU seconds, "
    "all threads. Ratios are taken within each round: median (range over rounds).\n"
  )
  return dict(sizes=dataclasses.asdict(sizes), rows=record), title + _markdown(header, rows)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _QUICK.value:
    for name, value in _QUICK_SIZES.items():
      flags.FLAGS[name].value = value
  pauses = [int(k) for k in _PAUSES.value]
  if any(k < 0 for k in pauses):
    raise app.UsageError(f"--pauses={','.join(_PAUSES.value)}: every K must be >= 0")
  sizes = Sizes(
    layers=_LAYERS.value,
    d_model=_D_MODEL.value,
    heads=_HEADS.value,
    mlp_dim=_MLP_DIM.value,
    vocab=_VOCAB.value,
    length=_LENGTH.value,
    batch=_BATCH.value,
    layout=_LAYOUT.value,
    remat_policy=_REMAT.value,
    dtype=_DTYPE.value,
  )
  command = " ".join(["python", *sys.argv])
  load = os.getloadavg()
  print(
    f"# Compile-time benchmark: {jax.devices()[0].device_kind} x{jax.device_count()}, "
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}\n\n"
    f"`{command}`\n\nload average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n",
    flush=True,
  )
  record, table = bench_compile_time(sizes, pauses, _STEPS.value, _REPEATS.value)
  record.update(command=command, device=jax.devices()[0].device_kind, load_start=load)
  print("\n" + table + "\n")
  common.finish_record(record, _OUT.value)


if __name__ == "__main__":
  app.run(main)
