r"""Benchmark of the training loop (issue 13): loop efficiency, train-step MFU, r(K), memory.

Six tables from one run, on the ~10M-parameter model of benchmarks/model.py (6 layers, D 256,
V 8192: ``benchmarks/common.py``), each ratio measured within this run:

1. **Loop efficiency** = bare step time / trainer time per step. The bare step is the
   trainer's own compiled train step (``train.make_programs``) called back to back on one
   device-resident batch; the trainer is ``train.train_and_evaluate`` on the synthetic task
   with the same model and batch shape (prefetch thread, host syncs only at log steps), its
   time per step taken from the log interval of steps S+1..2S (the first S steps warm up).
   Bare steps and trainer runs alternate for ``--loop_rounds``; the fastest of each counts.
2. **Train-step MFU** = model FLOPs per step / (step time x float32 matmul peak), the peak
   measured in this run: the fastest ``[P, P] @ [P, P]`` of a 1 s loop at start-up and of
   the matmul timed round-robin with the steps of tables 2-3. Model FLOPs are those
   the trainer logs (``train.model_flops_per_device``: counted analytically from the model
   config and batch shape, ``flops.train_step_flops``); XLA's count of the compiled program
   (``compiled``) is shown beside it: it counts the pause scan's body once.
3. **r(K) = t(K) / ((K + 1) t(0))** of the private layout, t(0) the K = 0 model with the
   ``ce`` loss, t(K) with ``cyb_ap``: the full train step (loss, gradient, AdamW).
4. **Peak memory** of the train step (:func:`cyb_jax.training.mfu.compiled_bytes`: argument + output +
   temp - alias bytes; compiled, not run) with dense attention (``attention_impl="xla"``)
   and ``jax.nn.dot_product_attention`` (``"dot_product"``). The Pallas splash kernel is
   compiled for TPU by ``benchmarks/tpu_compile.py --attention_impl=xla,splash``.
5. **Where the time goes**: a ``jax.profiler`` trace of one K = 0 and one largest-K step at
   ``--profile_length``, every XLA CPU op's thread-seconds summed by (inside the pause scan
   or its transpose, Flax method / JAX primitive of its ``op_name``).
6. **What grows with K**: the compiled peak of table 4 (dense attention) at
   ``--growth_length``, with full or chunked logits (``loss.vocab_chunk``) and remat
   ``none`` or ``full``, per pause slot ``(peak(K) - peak(0)) / K``, beside one float32 copy
   of the ``[B, N, K+1, V+1]`` logits.

Times: one untimed call per program, then ``--repeats`` round-robin rounds; the fastest
wall time is reported (load only adds time). Compare ratios within one run.

  python benchmarks/train_loop.py                      # defaults: a few minutes on 2 CPUs
  python benchmarks/train_loop.py --quick              # smoke test
  python benchmarks/train_loop.py --lengths=1024,4096 --pauses=1,3 --batch=8 --repeats=5
"""

from __future__ import annotations

import collections
import functools
import glob
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common
from cyb_jax import metrics_writer
from cyb_jax import sharding
from cyb_jax.configs import default as default_config
from cyb_jax.training import components
from cyb_jax.training import mfu
from cyb_jax.training import train

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes for a smoke test (overrides size flags).")
_OUT = flags.DEFINE_string("out", None, "Also write every figure as JSON to this path.")
_SKIP = flags.DEFINE_list("skip", [], "Tables to skip: loop, steps, memory, profile, growth.")
common.define_model_flags()  # --vocab --d_model --layers --heads --mlp_dim --unroll_pause_scan
flags.adopt_module_key_flags(common)  # --help lists them
_ATTENTION = flags.DEFINE_enum(
  "attention_impl", "xla", ["xla", "dot_product", "splash"], "model.attention_impl of tables 1-3 and 5."
)
_LOOP_LENGTH = flags.DEFINE_integer("loop_length", 256, "N of table 1.")
_LOOP_BATCH = flags.DEFINE_integer("loop_batch", 4, "B of table 1.")
_LOOP_PAUSES = flags.DEFINE_integer("loop_pauses", 0, "K of table 1 (0: ce, else cyb_ap).")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 10, "S of table 1: steps timed (2S are run).")
_LOOP_ROUNDS = flags.DEFINE_integer("loop_rounds", 2, "Rounds of table 1 (fastest reported).")
_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024", "2048"], "N of tables 2 and 3.")
_PAUSES = flags.DEFINE_list("pauses", ["3"], "K > 0 of tables 2 and 3 (K = 0 always runs).")
_BATCH = flags.DEFINE_integer("batch", 1, "B of tables 2, 3 and 4.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats per program of tables 2 and 3.")
_MEMORY_LENGTHS = flags.DEFINE_list("memory_lengths", ["2048", "8192"], "N of table 4.")
_PROFILE_LENGTH = flags.DEFINE_integer(
  "profile_length", 1024, "N of table 5 (a profile of K = 0 and the largest K); 0 = off."
)
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "P of the float32 matmul peak.")
_GROWTH_LENGTH = flags.DEFINE_integer("growth_length", 2048, "N of table 6 (what grows with K).")
_GROWTH_CHUNK = flags.DEFINE_integer("growth_vocab_chunk", 1024, "loss.vocab_chunk of table 6's chunked rows.")

_QUICK_SIZES = dict(  # with common.QUICK_SIZES
  loop_length=64,
  loop_batch=2,
  loop_steps=4,
  loop_rounds=1,
  lengths=["64"],
  pauses=["2"],
  repeats=1,
  memory_lengths=["128"],
  growth_length=128,
  growth_vocab_chunk=256,
  peak_size=256,
  profile_length=64,
)
_MIB = 2.0**20


def run_config(length: int, batch: int, pauses: int, attention_impl: str | None = None) -> ml_collections.ConfigDict:
  """The default run config with the benchmark's model, ``[batch, length]``, K pauses and
  ``attention_impl`` (default: ``--attention_impl``)."""
  c = default_config.get_config()
  c.model.update(common.model_fields(), attention_impl=attention_impl or _ATTENTION.value, max_pauses=pauses)
  c.loss.name = "ce" if pauses == 0 else "cyb_ap"
  c.loss.pause_warmup_steps = 0  # one loss for every step timed
  c.data.update(seq_len=length, batch_size=batch, eval_batches=1)
  c.update(progress_bar=False, write_report=False)
  return c


def one_device_programs(config: ml_collections.ConfigDict, workdir: str):
  """``(model_cfg, mesh, rules, programs, batch)``: the trainer's programs for ``config`` on one
  device and the first training batch, placed."""
  data = components.make_run_data(config, workdir)
  model_cfg = components.model_config(config, data.info.vocab_size)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  rules = sharding.rules_from_config(config.logical_axis_rules)
  programs = train.make_programs(config, model_cfg, mesh, rules)
  local = next(data.train)
  batch = sharding.global_batch({k: local[k] for k in train.BATCH_KEYS}, mesh)
  return model_cfg, mesh, rules, programs, batch


class Step:
  """The trainer's compiled train step for ``config`` on one device, with its own state."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.model_cfg, self.mesh, rules, programs, self.batch = one_device_programs(config, workdir)
    with sharding.mesh_context(self.mesh, rules):
      self.state = programs.init(jax.random.key(0))
      self.compiled = programs.train_step.lower(self.state, self.batch).compile()
      self.flops = train.model_flops_per_device(self.model_cfg, self.batch)
    # XLA's own count of the compiled program, for comparison only: None where the backend
    # gives none (a benchmark's bookkeeping never stops it).
    cost = mfu.or_warn("the compiled program's cost analysis", self.compiled.cost_analysis)
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    self.compiled_flops = float(cost["flops"]) if isinstance(cost, dict) and "flops" in cost else None
    self.num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(self.state.params))

  def __call__(self) -> Any:
    self.state, metrics = self.compiled(self.state, self.batch)
    return self.state, metrics

  def seconds_per_step(self, steps: int) -> float:
    """Wall seconds per step of ``steps`` back-to-back calls (one untimed call first)."""
    jax.block_until_ready(self())
    start = time.perf_counter()
    for _ in range(steps):
      out = self()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def fastest_seconds(programs: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, float]:
  """Fastest wall seconds of each program over ``repeats`` round-robin rounds (1 untimed)."""
  for run in programs.values():
    jax.block_until_ready(run())
  names, best = list(programs), {name: float("inf") for name in programs}
  for r in range(repeats):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      start = time.perf_counter()
      jax.block_until_ready(programs[name]())
      best[name] = min(best[name], time.perf_counter() - start)
  return best


# Table 5: each profiled XLA CPU thunk event is mapped to its HLO instruction, which says
# whether it runs inside a while loop (the pause scan or its transpose) and carries the JAX op
# it came from (metadata op_name).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?\s([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONTAINERS = ("while", "call", "conditional")  # their events span their bodies' events


def _instructions(hlo_text: str) -> dict[str, dict[str, Any]]:
  """instruction name -> opcode, computation, jax op_name; plus while-loop membership."""
  out, calls, computation, bodies = {}, collections.defaultdict(set), None, set()
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line) if line[:1] not in (" ", "\t") else None
    if m:
      computation = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m or computation is None:
      continue
    name, opcode, rest = m.groups()
    op_name = _OP_NAME.search(rest)
    out[name] = dict(opcode=opcode, computation=computation, op_name=op_name.group(1) if op_name else "")
    calls[computation].update(_CALLS.findall(rest))
    if opcode == "while":
      bodies.update(re.findall(r"body=%?([\w.\-]+)", rest))
  in_loop, stack = set(), list(bodies)
  while stack:
    c = stack.pop()
    if c not in in_loop:
      in_loop.add(c)
      stack.extend(calls[c])
  for info in out.values():
    info["in_loop"] = info["computation"] in in_loop
  return out


def _kind(info: dict[str, Any]) -> str:
  """A coarse label: the innermost Flax method of the op_name and the JAX primitive."""
  parts = info["op_name"].split("/") if info["op_name"] else [info["opcode"]]
  modules = [p for p in parts if re.match(r"^[A-Z]\w*(\.\w+)?$", p)]
  primitive = re.sub(r"\[.*$", "", parts[-1]) or info["opcode"]
  return f"{modules[-1]}/{primitive}" if modules else primitive


def profile_ops(
  compiled: jax.stages.Compiled, run: Callable[[], Any], repeats: int = 1
) -> dict[tuple[bool, str], float]:
  """Thread-seconds of ``run()`` per (inside a while loop, JAX primitive), one run's worth."""
  info = _instructions(compiled.as_text())
  jax.block_until_ready(run())
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    for _ in range(repeats):
      jax.block_until_ready(run())
    jax.profiler.stop_trace()
    path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
  totals = collections.defaultdict(float)
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in info and info[event.name]["opcode"] not in _CONTAINERS:
          i = info[event.name]
          totals[(i["in_loop"], _kind(i))] += event.duration_ns * 1e-9 / repeats
  return dict(totals)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def bench_loop(peak: float, workdir: str) -> tuple[dict, str]:
  """Table 1: bare compiled step versus the trainer, same model and batch shape.

  ``--loop_rounds`` rounds of (S bare steps, one trainer run of 2S steps); the fastest of each
  is compared (load only adds time).
  """
  n, b, k, s = _LOOP_LENGTH.value, _LOOP_BATCH.value, _LOOP_PAUSES.value, _LOOP_STEPS.value
  config = run_config(n, b, k)
  step = Step(config, os.path.join(workdir, "bare"))
  config.update(
    num_train_steps=2 * s,
    log_every_steps=s,
    eval_every_steps=2 * s,
    checkpoint_every_steps=2 * s,
    peak_flops_per_device=peak,
  )
  bare, trainer, walls, mfus = [], [], [], []
  for r in range(_LOOP_ROUNDS.value):
    bare.append(step.seconds_per_step(s))
    run_dir = os.path.join(workdir, f"trainer_{r}")
    start = time.perf_counter()
    train.train_and_evaluate(config, run_dir)
    walls.append(time.perf_counter() - start)
    row = [r for r in metrics_writer.read_metrics(run_dir) if r.get("step") == 2 * s][0]
    trainer.append(b * n / row["train/tokens_per_sec"])
    mfus.append(row.get("train/mfu", float("nan")))
  efficiency = min(bare) / min(trainer)
  record = dict(
    length=n,
    batch=b,
    pauses=k,
    steps=s,
    bare=bare,
    trainer=trainer,
    efficiency=efficiency,
    trainer_mfu=mfus,
    trainer_wall_s=walls,
    num_params=step.num_params,
  )
  title = (
    f"### 1. Loop efficiency: {step.num_params / 1e6:.1f}M parameters, B={b}, N={n}, "
    f"K={k}, {s} timed steps (steps {s + 1}..{2 * s} of the trainer), "
    f"{len(bare)} rounds\n"
  )
  ms = lambda xs: " / ".join(f"{1e3 * x:.0f}" for x in xs)
  table = _markdown(
    [
      "bare step ms (each round)",
      "trainer ms / step (each round)",
      "efficiency (fastest)",
      "trainer MFU (each round)",
      "trainer wall s (2S steps, compile, eval, checkpoint)",
    ],
    [
      [
        ms(bare),
        ms(trainer),
        f"{efficiency:.3f}",
        " / ".join(f"{m:.3f}" for m in mfus),
        " / ".join(f"{w:.0f}" for w in walls),
      ]
    ],
  )
  return record, title + table


def bench_steps(peak: float, workdir: str) -> tuple[dict, str]:
  """Tables 2 and 3: MFU and r(K) of the private layout's train step (peak re-measured)."""
  lengths, pauses = [int(n) for n in _LENGTHS.value], [0] + [int(k) for k in _PAUSES.value]
  seconds, steps = {}, {}
  # The peak matmul is timed round-robin with the steps, so that load hits both alike; the
  # fastest of it and the start-up measurement is the peak (load only lowers it).
  a = jax.device_put(np.ones((_PEAK_SIZE.value,) * 2, np.float32), jax.devices()[0])
  peak_matmul = functools.partial(jax.jit(jnp.matmul), a, a)
  for n in lengths:  # one length at a time: small programs are not timed among large ones
    batch_steps = {(n, k): Step(run_config(n, _BATCH.value, k), os.path.join(workdir, f"{n}_{k}")) for k in pauses}
    timed = fastest_seconds(dict(batch_steps, peak=peak_matmul), _REPEATS.value)
    peak = max(peak, 2.0 * _PEAK_SIZE.value**3 / timed.pop("peak"))
    seconds |= timed
    steps |= {
      key: dict(flops=st.flops, compiled_flops=st.compiled_flops, num_params=st.num_params)
      for key, st in batch_steps.items()
    }
    del batch_steps
  rows, record = [], []
  for n in lengths:
    for k in pauses:
      t, f = seconds[(n, k)], steps[(n, k)]
      r = t / ((k + 1) * seconds[(n, 0)])
      util = mfu.mfu(f["flops"], 1, t, peak)
      rows.append(
        [
          str(n),
          str(k),
          "ce" if k == 0 else "cyb_ap",
          f"{1e3 * t:.0f}",
          f"{r:.3f}",
          f"{f['flops'] / 1e9:.1f}",
          "-" if f["compiled_flops"] is None else f"{f['compiled_flops'] / 1e9:.1f}",
          f"{f['flops'] / t / 1e9:.1f}",
          f"{util:.3f}",
        ]
      )
      record.append(dict(length=n, pauses=k, seconds=t, r=r, mfu=util, **f))
  title = (
    f"### 2-3. Train step (loss, gradient, AdamW) of the private layout: B={_BATCH.value}, "
    f"{steps[(lengths[0], 0)]['num_params'] / 1e6:.1f}M parameters at K=0, fastest of "
    f"{_REPEATS.value} interleaved repeats; float32 matmul peak {peak / 1e9:.1f} GFLOP/s; "
    f"unroll_pause_scan={flags.FLAGS.unroll_pause_scan}\n"
    "r(K) = t(K) / ((K+1) t(0)); GFLOP = model FLOPs (analytic), compiled = the "
    "compiled program's count (pause scan body once)\n"
  )
  header = ["N", "K", "loss", "wall ms", "r(K)", "GFLOP / step", "compiled GFLOP", "GFLOP/s", "MFU"]
  return dict(rows=record, peak_flops=peak), title + _markdown(header, rows)


def peak_bytes(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Peak bytes of the compiled train step (:func:`cyb_jax.training.mfu.compiled_bytes`); nothing runs."""
  _, mesh, rules, programs, batch = one_device_programs(config, workdir)
  with sharding.mesh_context(mesh, rules):
    compiled = programs.train_step.lower(programs.abstract_state(jax.random.key(0)), batch).compile()
  return mfu.compiled_bytes(compiled)["peak"]


MEMORY_IMPLS = ("xla", "dot_product")  # splash is a TPU kernel: benchmarks/tpu_compile.py


def bench_memory(workdir: str) -> tuple[dict, str]:
  """Table 4: compiled peak memory of the train step, dense and fused attention."""
  rows, record = [], []
  for n in [int(x) for x in _MEMORY_LENGTHS.value]:
    for k in [0] + [int(x) for x in _PAUSES.value]:
      peaks = {
        impl: peak_bytes(run_config(n, _BATCH.value, k, impl), os.path.join(workdir, f"mem_{n}_{k}_{impl}"))
        for impl in MEMORY_IMPLS
      }
      ratio = peaks["xla"] / peaks["dot_product"]
      rows.append([str(n), str(k), *(f"{peaks[i] / _MIB:.0f}" for i in MEMORY_IMPLS), f"{ratio:.2f}"])
      record.append(dict(length=n, pauses=k, **{f"{i}_peak_bytes": peaks[i] for i in MEMORY_IMPLS}))
  title = (
    f"### 4. Train-step peak memory (compiled memory analysis), B={_BATCH.value}, private layout\n\n"
    "xla = dense scores (the reference), dot_product = jax.nn.dot_product_attention (its XLA "
    "form off GPU); splash, a TPU kernel, is measured by benchmarks/tpu_compile.py "
    "--attention_impl=xla,splash\n"
  )
  header = ["N", "K", "xla peak MiB", "dot_product peak MiB", "xla / dot_product"]
  return dict(rows=record), title + _markdown(header, rows)


GROWTH_VARIANTS = (  # (loss.vocab_chunk is set, model.remat_policy) of table 6's rows
  (False, "none"),
  (True, "none"),
  (False, "full"),
  (True, "full"),
)


def bench_growth(workdir: str) -> tuple[dict, str]:
  """Table 6: what grows with K. Compiled peak of the train step at K = 0 and each K, with
  full or chunked logits and with or without remat, beside the size of one copy of the
  ``[B, N, K+1, V+1]`` float32 logits.

  Per slot = (peak(K) - peak(0)) / K; the K = 0 step is ``ce``'s, so this also holds the
  switch to a CYB loss. Since the previous K = (peak(K_i) - peak(K_{i-1})) / (K_i - K_{i-1})
  between two CYB steps (from the second ``--pauses`` value on) leaves that switch out.
  """
  n, b, chunk = _GROWTH_LENGTH.value, _BATCH.value, _GROWTH_CHUNK.value
  pauses = [0] + [int(x) for x in _PAUSES.value]
  vocab = common.model_fields()["vocab_size"]
  rows, record = [], []
  for chunked, remat in GROWTH_VARIANTS:
    peaks = {}
    for k in pauses:
      config = run_config(n, b, k, "xla")
      config.loss.vocab_chunk = chunk if chunked else None
      config.model.remat_policy = remat
      peaks[k] = peak_bytes(config, os.path.join(workdir, f"growth_{int(chunked)}_{remat}_{k}"))
      record.append(dict(vocab_chunk=chunk if chunked else None, remat_policy=remat, pauses=k, peak_bytes=peaks[k]))
    for i, k in enumerate(pauses[1:], start=1):
      prev = pauses[i - 1] if i > 1 else None  # a CYB step before this one
      logits = b * n * (k + 1) * (vocab + 1) * 4
      rows.append(
        [
          f"chunk {chunk}" if chunked else "full logits",
          remat,
          str(k),
          f"{peaks[0] / _MIB:.0f}",
          f"{peaks[k] / _MIB:.0f}",
          f"{(peaks[k] - peaks[0]) / k / _MIB:.0f}",
          "-" if prev is None else f"{(peaks[k] - peaks[prev]) / (k - prev) / _MIB:.0f}",
          f"{logits / _MIB:.0f}",
          f"{peaks[k] / peaks[0]:.2f}",
        ]
      )
  title = (
    f"### 6. What grows with K: train-step peak memory (compiled), N={n}, B={b}, V={vocab}, "
    "dense attention, private layout\n\n"
    "logits = one float32 copy of [B, N, K+1, V+1]; per slot = (peak(K) - peak(0)) / K, from "
    "the ce step at K = 0; since the previous K = the same between two CYB steps\n"
  )
  header = [
    "vocab head",
    "remat",
    "K",
    "peak K=0 MiB",
    "peak MiB",
    "per slot MiB",
    "per slot since the previous K MiB",
    "logits MiB",
    "peak / K=0",
  ]
  return dict(length=n, batch=b, rows=record), title + _markdown(header, rows)


def bench_profile(workdir: str, top: int = 12) -> tuple[dict, str]:
  """Table 5: thread-seconds of the K = 0 and largest-K steps by (in a loop, method/primitive)."""
  n, k = _PROFILE_LENGTH.value, max(int(x) for x in _PAUSES.value)
  totals = {}
  for pauses in (0, k):
    step = Step(run_config(n, _BATCH.value, pauses), os.path.join(workdir, f"prof_{pauses}"))
    totals[pauses] = profile_ops(step.compiled, step)
    del step
  keys = sorted(set(totals[0]) | set(totals[k]), key=lambda key: -totals[k].get(key, 0.0))
  sums = {p: sum(t.values()) for p, t in totals.items()}
  loop_share = sum(v for (in_loop, _), v in totals[k].items() if in_loop) / sums[k]
  rows = [
    [
      ("pause scan" if in_loop else "outside"),
      label,
      f"{1e3 * totals[0].get((in_loop, label), 0.0):.1f}",
      f"{1e3 * totals[k].get((in_loop, label), 0.0):.1f}",
      f"{totals[k].get((in_loop, label), 0.0) / sums[k]:.1%}",
    ]
    for in_loop, label in keys[:top]
  ]
  rows.append(["all", "", f"{1e3 * sums[0]:.0f}", f"{1e3 * sums[k]:.0f}", "100%"])
  title = (
    f"### 5. Where the train step's time goes (jax.profiler thread-seconds, one step), "
    f"N={n}, B={_BATCH.value}: K=0 versus K={k}; {loop_share:.0%} of the K={k} step "
    f"inside the pause scan and its transpose; slots / (K+1) x K=0 = "
    f"{sums[k] / ((k + 1) * sums[0]):.3f}\n"
  )
  record = dict(
    length=n, pauses=k, totals={str(p): {f"{a}|{b}": v for (a, b), v in t.items()} for p, t in totals.items()}
  )
  return record, title + _markdown(["where", "method / primitive", "K=0 ms", f"K={k} ms", f"share of K={k}"], rows)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _QUICK.value:
    common.set_quick_sizes(_QUICK_SIZES)
  if any(int(k) < 1 for k in _PAUSES.value):
    raise app.UsageError(f"--pauses={','.join(_PAUSES.value)}: every K must be >= 1 (K = 0 always runs)")
  unknown = set(_SKIP.value) - {"loop", "steps", "memory", "profile", "growth"}
  if unknown:
    raise app.UsageError(f"--skip: {sorted(unknown)} not among loop, steps, memory, profile, growth")
  command = " ".join(["python", *sys.argv])
  load = os.getloadavg()
  print(
    f"# Training-loop benchmark: {jax.devices()[0].device_kind} x{jax.device_count()}, "
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
    f"jax {jax.__version__}\n\n`{command}`\n\nload average at start: "
    f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n",
    flush=True,
  )
  peak = mfu.measured_matmul_peak(size=_PEAK_SIZE.value)
  print(f"float32 matmul peak ({_PEAK_SIZE.value}^3): {peak / 1e9:.1f} GFLOP/s\n", flush=True)
  record: dict[str, Any] = dict(command=command, device=jax.devices()[0].device_kind, load_start=load, peak_flops=peak)
  with tempfile.TemporaryDirectory() as workdir:
    for name, bench in (
      ("loop", lambda: bench_loop(peak, workdir)),
      ("steps", lambda: bench_steps(peak, workdir)),
      ("memory", lambda: bench_memory(workdir)),
      ("profile", lambda: bench_profile(workdir)),
      ("growth", lambda: bench_growth(workdir)),
    ):
      if name not in _SKIP.value and (name != "profile" or _PROFILE_LENGTH.value):
        record[name], table = bench()
        print(table + "\n", flush=True)
  common.finish_record(record, _OUT.value)


if __name__ == "__main__":
  app.run(main)
