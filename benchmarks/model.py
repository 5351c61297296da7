r"""Benchmark of the pause-aware transformer (issue 3): train-step cost of pauses, decoding speed.

Two experiments, each a markdown table (and JSON with ``--out``):

1. **Train step versus K.** ``jax.value_and_grad`` of CYB-AP (gamma 0.9, through
   :func:`cyb_jax.losses.step_log_probs` on the full step logits) with respect to all
   parameters, for K = 0..``--max_pauses``, both layouts, each ``--lengths`` N, on a ~10M
   parameter model. Reports the time t(K) and

       r(K) = t(K) / ((K + 1) t(0)),

   the cost per slot relative to a no-pause model (K = 0 is the same program for both
   layouts). `private` runs the pause steps against the real tokens' keys/values (attention
   work (K+1) N^2), `visible` the flattened N (K+1) grid ((K+1)^2 N^2).

2. **Decoding.** :func:`cyb_jax.model.decode.generate` tokens per second with adaptive halting
   (threshold 0.5) versus always taking K pauses ("max"), per layout. The DK bias is set so
   that a random model answers at each step with probability about 1/2; the table gives the
   mean pauses per token and the pause-loop iterations per token (the batch's slowest
   sequence) that the adaptive speed reflects.

Timing: every program is compiled and run once, then repeats run round-robin over the
programs of one table (one sequence length at a time), and the fastest repeat is reported.
Two clocks: process CPU time (all threads of this process), which measures the work and barely
moves when other jobs share the machine, and wall time (load only adds to it; the train table
also gives the median). Compare ratios within one run. Memory is XLA's static buffer
assignment of the compiled program (:func:`cyb_jax.training.mfu.compiled_bytes`): ``peak = argument +
output + temp - alias`` bytes, deterministic on any backend. Compile seconds: the wall time of
``jit(...).lower()`` (tracing to StableHLO) and of ``.compile()`` (XLA), once per program of
table 1 (``benchmarks/compile_time.py`` compares them for scanned and unrolled layers).

  python benchmarks/model.py                       # N = 256 and 1024, K = 0..4 (long on 2 CPUs)
  python benchmarks/model.py --lengths=256 --repeats=2 --unroll_pause_scan
  python benchmarks/model.py --quick               # smoke test
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common
from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax.model import ModelConfig
from cyb_jax.model import decode
from cyb_jax.training import mfu

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes for a smoke test (overrides size flags).")
_OUT = flags.DEFINE_string("out", None, "Also write all figures as JSON to this path.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of parameters and inputs.")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "Skip table 1 (train step versus K).")
_SKIP_DECODE = flags.DEFINE_bool("skip_decode", False, "Skip table 2 (decoding).")
# Model (defaults: ~10.5M parameters): --vocab --d_model --layers --heads --mlp_dim
# --unroll_pause_scan --scan_layers.
common.define_model_flags()
flags.adopt_module_key_flags(common)  # --help lists them
_MAX_PAUSES = flags.DEFINE_integer("max_pauses", 4, "Largest K; table 1 runs K = 0..max_pauses.")
_LAYOUTS = flags.DEFINE_list("layouts", ["private", "visible"], "Pause layouts to measure.")
# Table 1.
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024"], "Sequence lengths N of table 1.")
_BATCH = flags.DEFINE_integer("batch", 1, "B of table 1.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per program of table 1.")
# Table 2.
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "4"], "Batch sizes B of table 2.")
_PROMPT = flags.DEFINE_integer("prompt", 16, "Prompt length of table 2.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Generated tokens per sequence in table 2.")
_DECODE_REPEATS = flags.DEFINE_integer("decode_repeats", 3, "Timed repeats per program of table 2.")

_QUICK_SIZES = dict(  # with common.QUICK_SIZES
  max_pauses=2,
  lengths=[64],
  batch=1,
  repeats=2,
  decode_batches=[2],
  prompt=4,
  new_tokens=8,
  decode_repeats=2,
)
_MIB = 2.0**20


# --------------------------------------------------------------------------------------
# Measuring.
# --------------------------------------------------------------------------------------


def interleaved_seconds(programs: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, dict[str, float]]:
  """Wall and process CPU seconds of each zero-argument program (fastest and median repeat).

  One untimed run each, then `repeats` round-robin rounds (starting one program later each
  round) so that machine load hits all programs alike. Load on a shared machine only ever adds
  wall time, so the fastest repeat is the wall figure to compare; CPU time (all threads of this
  process) measures the work itself and barely moves with load.
  """
  for run in programs.values():
    jax.block_until_ready(run())
  names = list(programs)
  wall, cpu = {name: [] for name in names}, {name: [] for name in names}
  for r in range(repeats):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      start_wall, start_cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(programs[name]())
      wall[name].append(time.perf_counter() - start_wall)
      cpu[name].append(time.process_time() - start_cpu)
  return {name: dict(min=min(wall[name]), median=statistics.median(wall[name]), cpu=min(cpu[name])) for name in names}


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _model_config(max_pauses: int, layout: str) -> ModelConfig:
  return ModelConfig(**common.model_fields(), max_pauses=max_pauses, pause_layout=layout)


def _num_params(params) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


# --------------------------------------------------------------------------------------
# Table 1: train step versus K.
# --------------------------------------------------------------------------------------


def train_loss(cfg: ModelConfig, params, tokens_BxN1: jax.Array) -> jax.Array:
  """CYB-AP (gamma 0.9) of predicting tokens[:, 1:] from tokens[:, :-1] with all K+1 steps."""
  inputs_BxN, targets_BxN = tokens_BxN1[:, :-1], tokens_BxN1[:, 1:]
  logits_BxNxKxV1 = model_lib.step_logits(cfg, params, inputs_BxN)
  stats = losses.step_log_probs(logits_BxNxKxV1, targets_BxN)
  loss, _ = losses.cyb_ap_loss(stats, jnp.ones(targets_BxN.shape, jnp.float32), gamma=0.9)
  return loss


def bench_train(
  lengths: Sequence[int], max_pauses: int, layouts: Sequence[str], batch: int, repeats: int, seed: int
) -> tuple[dict[str, Any], str]:
  """Table 1: time and memory of value_and_grad(train_loss) for every (N, layout, K)."""
  key_p, key_x = jax.random.split(jax.random.key(seed))
  params = model_lib.init_params(_model_config(max_pauses, "private"), key_p)
  memory, seconds, compile_seconds = {}, {}, {}
  for n in lengths:  # one length at a time: small programs are not timed among large ones
    tokens = jax.random.randint(jax.random.fold_in(key_x, n), (batch, n + 1), 0, flags.FLAGS.vocab)
    programs = {}
    for layout in layouts:
      for k in range(max_pauses + 1):
        if k == 0 and layout != layouts[0]:
          continue  # K = 0 is the same program for every layout
        cfg = _model_config(k, layout)
        p = {name: v for name, v in params.items() if name != "pause_embed"}
        if k > 0:
          p["pause_embed"] = params["pause_embed"][:k]
        step = jax.jit(jax.value_and_grad(functools.partial(train_loss, cfg)))
        start = time.perf_counter()
        lowered = step.lower(p, tokens)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        compile_seconds[(n, layout, k)] = dict(lower=lowered_at - start, compile=time.perf_counter() - lowered_at)
        memory[(n, layout, k)] = mfu.compiled_bytes(compiled)
        programs[(n, layout, k)] = functools.partial(compiled, p, tokens)
    seconds |= interleaved_seconds(programs, repeats)

  header = [
    "N",
    "layout",
    "K",
    "CPU ms",
    "r(K) CPU",
    "wall ms (min)",
    "r(K) wall",
    "wall ms (median)",
    "peak MiB",
    "temp MiB",
    "lower s",
    "compile s",
  ]
  rows, record = [], []
  for n in lengths:
    t0 = seconds[(n, layouts[0], 0)]
    for layout in layouts:
      for k in range(max_pauses + 1):
        key = (n, layouts[0] if k == 0 else layout, k)
        r = {stat: seconds[key][stat] / ((k + 1) * t0[stat]) for stat in ("cpu", "min")}
        rows.append(
          [
            str(n),
            layout,
            str(k),
            f"{1e3 * seconds[key]['cpu']:.0f}",
            f"{r['cpu']:.3f}",
            f"{1e3 * seconds[key]['min']:.0f}",
            f"{r['min']:.3f}",
            f"{1e3 * seconds[key]['median']:.0f}",
            f"{memory[key]['peak'] / _MIB:.0f}",
            f"{memory[key]['temp'] / _MIB:.0f}",
            f"{compile_seconds[key]['lower']:.1f}",
            f"{compile_seconds[key]['compile']:.1f}",
          ]
        )
        record.append(
          dict(
            length=n,
            layout=layout,
            pauses=k,
            seconds=seconds[key],
            r=r,
            memory_bytes=memory[key],
            compile_seconds=compile_seconds[key],
          )
        )
  title = (
    f"### Train step (value_and_grad of CYB-AP, all parameters), B={batch}, "
    f"{_num_params(params) / 1e6:.1f}M parameters, {repeats} interleaved repeats, "
    f"unroll_pause_scan={flags.FLAGS.unroll_pause_scan}, scan_layers={_model_config(0, 'private').scan_layers}\n"
    "r(K) = t(K) / ((K+1) t(0)); K = 0 is one program for both layouts. lower s / compile s: "
    "wall seconds of jit(...).lower() (tracing) and .compile() (XLA), once per program.\n"
  )
  return dict(rows=record, num_params=_num_params(params)), title + _markdown(header, rows)


# --------------------------------------------------------------------------------------
# Table 2: decoding.
# --------------------------------------------------------------------------------------


def bench_decode(
  max_pauses: int,
  layouts: Sequence[str],
  batches: Sequence[int],
  prompt_len: int,
  new_tokens: int,
  repeats: int,
  seed: int,
) -> tuple[dict[str, Any], str]:
  """Table 2: generate() tokens per second, adaptive (threshold 0.5) versus always K pauses."""
  key_p, key_dk, key_x, key_g = jax.random.split(jax.random.key(seed), 4)
  params = model_lib.init_params(_model_config(max_pauses, "private"), key_p)
  # DK logit ~ logsumexp of the vocabulary logits (about log V + 1/2 at init) +- a
  # position-dependent term: each step answers with probability about 1/2.
  d = flags.FLAGS.d_model
  params["dk_head"]["kernel"] = jax.random.normal(key_dk, (d,)) / math.sqrt(d)
  params["dk_head"]["bias"] = jnp.asarray(math.log(flags.FLAGS.vocab) + 0.5, jnp.float32)
  runs, outputs = {}, {}
  for batch in batches:
    prompt = jax.random.randint(key_x, (batch, prompt_len), 0, flags.FLAGS.vocab)
    for layout in layouts:
      cfg = _model_config(max_pauses, layout)
      for halting in ("threshold", "max"):
        run = functools.partial(
          decode.generate,
          cfg,
          params,
          prompt,
          key_g,
          max_new_tokens=new_tokens,
          halting=halting,
          threshold=0.5,
          return_stats=True,
        )
        runs[(batch, layout, halting)] = run
        outputs[(batch, layout, halting)] = jax.device_get(run())
  seconds = interleaved_seconds(runs, repeats)

  header = ["B", "layout", "halting", "tokens / s", "x always-K", "pauses / token", "loop steps / token"]
  rows, record = [], []
  for batch in batches:
    for layout in layouts:
      for halting in ("threshold", "max"):
        key = (batch, layout, halting)
        tokens_per_s = batch * new_tokens / seconds[key]["min"]
        speedup = seconds[(batch, layout, "max")]["min"] / seconds[key]["min"]
        _, pauses, stats = outputs[key]
        policy = "adaptive (0.5)" if halting == "threshold" else f"always {max_pauses}"
        rows.append(
          [
            str(batch),
            layout,
            policy,
            f"{tokens_per_s:.0f}",
            f"{speedup:.2f}",
            f"{pauses.mean():.2f}",
            f"{stats['pause_steps'].mean():.2f}",
          ]
        )
        record.append(
          dict(
            batch=batch,
            layout=layout,
            halting=halting,
            seconds=seconds[key],
            tokens_per_s=tokens_per_s,
            speedup_vs_always=speedup,
            mean_pauses=float(pauses.mean()),
            mean_loop_steps=float(stats["pause_steps"].mean()),
          )
        )
  title = (
    f"### Decoding: generate(), prompt {prompt_len}, {new_tokens} new tokens, "
    f"K={max_pauses}, fastest of {repeats} interleaved repeats (includes the prompt)\n"
  )
  return dict(rows=record), title + _markdown(header, rows)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _QUICK.value:
    common.set_quick_sizes(_QUICK_SIZES)
  for layout in _LAYOUTS.value:
    if layout not in model_lib.PAUSE_LAYOUTS:
      raise app.UsageError(f"--layouts: {layout!r} is not one of {model_lib.PAUSE_LAYOUTS}")
  if _MAX_PAUSES.value < 1:
    raise app.UsageError(f"--max_pauses={_MAX_PAUSES.value} must be >= 1")
  lengths = [int(n) for n in _LENGTHS.value]
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  print(
    f"# Pause-aware transformer benchmark: {device}, "
    f"{platform.processor() or platform.machine()}, jax {jax.__version__}\n"
  )
  record: dict[str, Any] = dict(
    device=jax.devices()[0].device_kind,
    flags={
      name: flags.FLAGS[name].value
      for name in (
        "vocab",
        "d_model",
        "layers",
        "heads",
        "mlp_dim",
        "max_pauses",
        "layouts",
        "unroll_pause_scan",
        "scan_layers",
        "lengths",
        "batch",
        "repeats",
        "decode_batches",
        "prompt",
        "new_tokens",
        "decode_repeats",
        "seed",
      )
    },
  )
  if not _SKIP_TRAIN.value:
    record["train"], table = bench_train(
      lengths, _MAX_PAUSES.value, _LAYOUTS.value, _BATCH.value, _REPEATS.value, _SEED.value
    )
    print(table + "\n", flush=True)
  if not _SKIP_DECODE.value:
    record["decode"], table = bench_decode(
      _MAX_PAUSES.value,
      _LAYOUTS.value,
      [int(b) for b in _DECODE_BATCHES.value],
      _PROMPT.value,
      _NEW_TOKENS.value,
      _DECODE_REPEATS.value,
      _SEED.value,
    )
    print(table + "\n", flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  app.run(main)
