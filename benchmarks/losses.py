r"""Benchmark of the loss library (issue 2): time and peak memory of forward + backward.

Two experiments, each a markdown table (and JSON with ``--out``):

1. **Losses versus cross-entropy over the same logits.** Every loss of
   :mod:`cyb_jax.losses` is timed as ``jax.value_and_grad`` with respect to the SAME
   ``logits_BxNxKxV1`` (``[B, N, K+1, V+1]``), through :func:`cyb_jax.losses.step_log_probs`.
   References: ``optax.softmax_cross_entropy_with_integer_labels`` over the vocabulary
   part ``logits[..., :V]`` of all ``K+1`` steps (mean), and our ``ce`` (step 0 only).
   Each loss is timed twice: returning the scalar only (``loss``), and returning the
   metrics dictionary too, as the trainer does (``+metrics``: adds e.g. the per-step argmax).

2. **Chunked versus full vocabulary path** at V = 32k. ``value_and_grad`` of ``cyb_ap``
   (with its metrics) with respect to ``(hidden, output_kernel, dk_kernel, dk_bias)``:
   (a) full: ``logits = concat(hidden @ output_kernel, hidden @ dk_kernel + dk_bias)``,
   then ``step_log_probs``, as the model's output head; (b)
   :func:`cyb_jax.losses.chunked_step_log_probs` for each ``--vocab_chunks`` width. A
   reference row runs optax cross-entropy over ``hidden @ output_kernel`` (no DK).

Memory is XLA's static buffer assignment of the compiled program
(``compiled.memory_analysis()``): deterministic, unlike the process RSS. The table's
"peak" is ``argument + output + temp - alias`` bytes; ``temp`` alone is what the loss
itself allocates beyond its inputs and outputs.

Timing: every program is compiled ahead of time (and, in table 1, run once as a warm-up
before timing); the repeats
are interleaved round-robin over all programs of a table (the starting program rotates
each round), so the load of a shared machine hits all programs alike, and the median
is reported. Compare the ratios within one run, not milliseconds across runs. Nothing
here asserts a timing.

  python benchmarks/losses.py                 # full sizes (a few minutes on 2 CPU cores)
  python benchmarks/losses.py --quick         # smoke test, seconds
  python benchmarks/losses.py --vocab=32768 --out=/tmp/losses_bench.json
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import app
from absl import flags

from cyb_jax import losses
from cyb_jax.training import mfu

_QUICK = flags.DEFINE_bool("quick", False, "Small sizes for a smoke test (overrides size flags).")
_OUT = flags.DEFINE_string("out", None, "Also write all figures as JSON to this path.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the random inputs.")
_SKIP_LOSSES = flags.DEFINE_bool("skip_losses", False, "Skip table 1 (losses vs cross-entropy).")
_SKIP_CHUNKED = flags.DEFINE_bool("skip_chunked", False, "Skip table 2 (chunked vs full).")
# Table 1.
_BATCH = flags.DEFINE_integer("batch", 8, "B of the loss table.")
_LENGTH = flags.DEFINE_integer("length", 256, "N of the loss table.")
_PAUSES = flags.DEFINE_integer("pauses", 3, "K (max pauses) of the loss table.")
_VOCAB = flags.DEFINE_integer("vocab", 8192, "V (without DK) of the loss table.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per program of the loss table.")
# Table 2.
_CHUNK_BATCH = flags.DEFINE_integer("chunk_batch", 4, "B of the chunked-vs-full table.")
_CHUNK_LENGTH = flags.DEFINE_integer("chunk_length", 1024, "N of the chunked-vs-full table.")
_CHUNK_PAUSES = flags.DEFINE_integer("chunk_pauses", 3, "K of the chunked-vs-full table.")
_CHUNK_VOCAB = flags.DEFINE_integer("chunk_vocab", 32768, "V of the chunked-vs-full table.")
_D_MODEL = flags.DEFINE_integer("d_model", 256, "D (hidden width) of the chunked-vs-full table.")
_VOCAB_CHUNKS = flags.DEFINE_list("vocab_chunks", ["2048", "4096", "8192"], "Chunk widths of the chunked path.")
_CHUNK_REPEATS = flags.DEFINE_integer(
  "chunk_repeats",
  1,
  "Timed repeats per program of the chunked-vs-full table (each run takes"
  " seconds to minutes on a CPU; no warm-up run, the programs are compiled ahead of time).",
)

_QUICK_SIZES = dict(
  batch=2,
  length=32,
  pauses=2,
  vocab=512,
  repeats=3,
  chunk_batch=2,
  chunk_length=64,
  chunk_pauses=1,
  chunk_vocab=1024,
  d_model=32,
  vocab_chunks=[128, 256],
  chunk_repeats=3,
)

_MIB = 2.0**20

# (loss, metrics) = fn(stats, weights_BxN); built per K because priors are [K+1].
LossFn = Callable[[losses.StepLogProbs, jax.Array], tuple[jax.Array, dict]]


# --------------------------------------------------------------------------------------
# What is measured.
# --------------------------------------------------------------------------------------


def cyb_losses(num_steps: int) -> dict[str, LossFn]:
  """The losses of table 1, by row label, for ``num_steps = K+1`` steps.

  ``ce``, ``pause_ce``, ``cyb_ap`` (gamma 0.9; omega 0 and 0.2), ``cyb_va`` (geometric
  prior with continuation 0.5, beta 1; ``kl`` token and batch) and ``cyb_dp`` (budget 1,
  multiplier 0.1). Each maps ``(stats [B, N, K+1], weights [B, N])`` to ``(loss, metrics)``.
  """
  prior_S = losses.geometric_prior(num_steps, 0.5)
  return {
    "ce": losses.cross_entropy_loss,
    "pause_ce": losses.pause_cross_entropy_loss,
    "cyb_ap(g=0.9,w=0)": functools.partial(losses.cyb_ap_loss, gamma=0.9, omega=0.0),
    "cyb_ap(g=0.9,w=0.2)": functools.partial(losses.cyb_ap_loss, gamma=0.9, omega=0.2),
    "cyb_va(token)": functools.partial(losses.cyb_va_loss, prior=prior_S, kl="token"),
    "cyb_va(batch)": functools.partial(losses.cyb_va_loss, prior=prior_S, kl="batch"),
    "cyb_dp": functools.partial(losses.cyb_dp_loss, budget=1.0, multiplier=0.1),
  }


def optax_cross_entropy(
  logits_BxNxKxV1: jax.Array, targets_BxN: jax.Array, weights_BxN: jax.Array
) -> tuple[jax.Array, dict]:
  """Reference: plain cross-entropy over the vocabulary part of every step's logits.

  ``loss = sum_{b,n,k} w_bn * (logsumexp_{v<V} z_bnk[v] - z_bnk[y_bn]) / ((K+1) sum w)``
  with ``optax.softmax_cross_entropy_with_integer_labels``; the DK entry (index V) is
  not read. Returns ``(loss, {})`` so that it has the signature of the CYB programs.
  """
  vocab_size = logits_BxNxKxV1.shape[-1] - 1
  num_steps = logits_BxNxKxV1.shape[-2]
  targets_BxNxK = jnp.broadcast_to(targets_BxN[..., None], targets_BxN.shape + (num_steps,))
  nll_BxNxK = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxKxV1[..., :vocab_size], targets_BxNxK)
  loss = jnp.sum(weights_BxN[..., None] * nll_BxNxK) / (num_steps * jnp.sum(weights_BxN))
  return loss, {}


def loss_from_logits(loss_fn: LossFn, with_metrics: bool) -> Callable[..., Any]:
  """``(logits [B, N, K+1, V+1], targets [B, N], weights [B, N]) -> (loss, metrics)``.

  Goes through :func:`cyb_jax.losses.step_log_probs`. Without metrics the metrics are
  dropped inside the program, so XLA removes the work only they need.
  """

  def fn(logits_BxNxKxV1, targets_BxN, weights_BxN):
    stats = losses.step_log_probs(logits_BxNxKxV1, targets_BxN)
    loss, metrics = loss_fn(stats, weights_BxN)
    return loss, (metrics if with_metrics else {})

  return fn


def _ap_loss(stats: losses.StepLogProbs, weights_BxN: jax.Array) -> tuple[jax.Array, dict]:
  return losses.cyb_ap_loss(stats, weights_BxN, gamma=0.9, omega=0.2)


def full_head_loss(
  hidden_BxNxKxD: jax.Array,
  kernel_DxV: jax.Array,
  dk_kernel_D: jax.Array,
  dk_bias: jax.Array,
  targets_BxN: jax.Array,
  weights_BxN: jax.Array,
) -> tuple[jax.Array, dict]:
  """CYB-AP (gamma 0.9, omega 0.2) through materialised logits ``[B, N, K+1, V+1]``.

  ``logits = concat(hidden @ kernel, hidden @ dk_kernel + dk_bias)`` (float32
  accumulation, as the model's output head), then ``step_log_probs``.
  """
  vocab_BxNxKxV = jnp.einsum("bnkd,dv->bnkv", hidden_BxNxKxD, kernel_DxV, preferred_element_type=jnp.float32)
  dk_BxNxK = jnp.einsum("bnkd,d->bnk", hidden_BxNxKxD, dk_kernel_D, preferred_element_type=jnp.float32) + dk_bias
  logits_BxNxKxV1 = jnp.concatenate([vocab_BxNxKxV, dk_BxNxK[..., None]], axis=-1)
  return _ap_loss(losses.step_log_probs(logits_BxNxKxV1, targets_BxN), weights_BxN)


def optax_head_loss(
  hidden_BxNxKxD: jax.Array,
  kernel_DxV: jax.Array,
  dk_kernel_D: jax.Array,
  dk_bias: jax.Array,
  targets_BxN: jax.Array,
  weights_BxN: jax.Array,
) -> tuple[jax.Array, dict]:
  """Reference head: :func:`optax_cross_entropy` over ``hidden @ kernel`` ``[B, N, K+1, V]``.

  The DK head is not used (its gradients are zero); the loss is the mean over all steps.
  """
  del dk_kernel_D, dk_bias
  vocab_BxNxKxV = jnp.einsum("bnkd,dv->bnkv", hidden_BxNxKxD, kernel_DxV, preferred_element_type=jnp.float32)
  num_steps = vocab_BxNxKxV.shape[-2]
  targets_BxNxK = jnp.broadcast_to(targets_BxN[..., None], targets_BxN.shape + (num_steps,))
  nll_BxNxK = optax.softmax_cross_entropy_with_integer_labels(vocab_BxNxKxV, targets_BxNxK)
  loss = jnp.sum(weights_BxN[..., None] * nll_BxNxK) / (num_steps * jnp.sum(weights_BxN))
  return loss, {}


def chunked_head_loss(
  hidden_BxNxKxD: jax.Array,
  kernel_DxV: jax.Array,
  dk_kernel_D: jax.Array,
  dk_bias: jax.Array,
  targets_BxN: jax.Array,
  weights_BxN: jax.Array,
  *,
  vocab_chunk: int,
) -> tuple[jax.Array, dict]:
  """:func:`full_head_loss` through ``chunked_step_log_probs`` (no ``[.., V+1]`` logits)."""
  stats = losses.chunked_step_log_probs(
    hidden_BxNxKxD, kernel_DxV, dk_kernel_D, targets_BxN, vocab_chunk=vocab_chunk, dk_bias=dk_bias
  )
  return _ap_loss(stats, weights_BxN)


# --------------------------------------------------------------------------------------
# Measuring.
# --------------------------------------------------------------------------------------


def compile_value_and_grad(
  fn: Callable[..., Any], args: Sequence[Any], argnums: int | tuple[int, ...]
) -> jax.stages.Compiled:
  """``jax.jit(jax.value_and_grad(fn, argnums, has_aux=True))`` compiled for ``args``."""
  grad_fn = jax.value_and_grad(fn, argnums=argnums, has_aux=True)
  return jax.jit(grad_fn).lower(*args).compile()


def memory_stats(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Static buffer sizes of a compiled program, in bytes: :func:`cyb_jax.training.mfu.compiled_bytes`.

  ``peak = argument + output + temp - alias``: everything the program holds while it
  runs under XLA's buffer assignment. XLA's own ``peak_memory_in_bytes`` is kept too
  (``xla_peak``; -1 where the backend gives none).
  """
  return mfu.compiled_bytes(compiled) | dict(xla_peak=getattr(compiled.memory_analysis(), "peak_memory_in_bytes", -1))


def interleaved_median_seconds(
  programs: dict[str, Callable[[], Any]], repeats: int, *, warmup: bool = True
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
  """Median and spread of the wall time of each zero-argument program.

  Each program runs once untimed (if ``warmup``), then ``repeats`` rounds run every
  program once, round-robin, starting one program later each round. A time ends when
  the outputs are ready (``jax.block_until_ready``).

  Returns:
    ``({name: {"median": s, "min": s, "max": s}}, {name: outputs of the last run}``).
  """
  if warmup:
    for run in programs.values():
      jax.block_until_ready(run())
  names = list(programs)
  times, outputs = {name: [] for name in names}, {}
  for r in range(repeats):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      start = time.perf_counter()
      outputs[name] = jax.block_until_ready(programs[name]())
      times[name].append(time.perf_counter() - start)
  summary = {name: dict(median=statistics.median(t), min=min(t), max=max(t)) for name, t in times.items()}
  return summary, outputs


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _check_sizes(minimum: int, **sizes: int) -> None:
  """Raises a usage error naming the first flag whose value is below ``minimum``."""
  for name, value in sizes.items():
    if value < minimum:
      raise app.UsageError(f"--{name}={value} must be >= {minimum}.")


# --------------------------------------------------------------------------------------
# The two tables.
# --------------------------------------------------------------------------------------


def bench_losses(
  batch: int, length: int, pauses: int, vocab: int, repeats: int, seed: int
) -> tuple[dict[str, Any], str]:
  """Table 1: every loss versus cross-entropy over the same ``[B, N, K+1, V+1]`` logits.

  Returns:
    ``(record, markdown)``: the record holds the sizes and, per program, median / min /
    max seconds and the memory fields of :func:`memory_stats`.
  """
  _check_sizes(1, batch=batch, length=length, vocab=vocab, repeats=repeats)
  _check_sizes(0, pauses=pauses)
  key_z, key_y = jax.random.split(jax.random.key(seed))
  num_steps = pauses + 1
  logits_BxNxKxV1 = 3.0 * jax.random.normal(key_z, (batch, length, num_steps, vocab + 1), jnp.float32)
  targets_BxN = jax.random.randint(key_y, (batch, length), 0, vocab, jnp.int32)
  weights_BxN = jnp.ones((batch, length), jnp.float32)
  args = (logits_BxNxKxV1, targets_BxN, weights_BxN)

  fns = {"optax_ce (ref)": (optax_cross_entropy, optax_cross_entropy)}
  for name, loss_fn in cyb_losses(num_steps).items():
    fns[name] = (loss_from_logits(loss_fn, False), loss_from_logits(loss_fn, True))
  compiled, memory = {}, {}
  for name, (plain, with_metrics) in fns.items():
    for mode, fn in (("loss", plain), ("+metrics", with_metrics)):
      compiled[(name, mode)] = compile_value_and_grad(fn, args, argnums=0)
      memory[(name, mode)] = memory_stats(compiled[(name, mode)])
  # optax's two modes are the same program: time it once, under both keys below.
  programs = {key: functools.partial(c, *args) for key, c in compiled.items() if key != ("optax_ce (ref)", "+metrics")}
  timings, _ = interleaved_median_seconds(programs, repeats)
  timings[("optax_ce (ref)", "+metrics")] = timings[("optax_ce (ref)", "loss")]

  t_ref = timings[("optax_ce (ref)", "loss")]["median"]
  m_ref = memory[("optax_ce (ref)", "loss")]["temp"]
  header = [
    "loss",
    "ms (loss)",
    "x optax",
    "x ce",
    "ms (+metrics)",
    "x optax",
    "x ce",
    "temp MiB (loss)",
    "temp MiB (+metrics)",
    "temp x optax (+metrics)",
  ]
  rows, record = [], []
  for name in fns:
    t = {mode: timings[(name, mode)]["median"] for mode in ("loss", "+metrics")}
    t_ce = {mode: timings[("ce", mode)]["median"] for mode in ("loss", "+metrics")}
    temp = {mode: memory[(name, mode)]["temp"] for mode in ("loss", "+metrics")}
    rows.append(
      [
        name,
        f"{1e3 * t['loss']:.1f}",
        f"{t['loss'] / t_ref:.2f}",
        f"{t['loss'] / t_ce['loss']:.2f}",
        f"{1e3 * t['+metrics']:.1f}",
        f"{t['+metrics'] / t_ref:.2f}",
        f"{t['+metrics'] / t_ce['+metrics']:.2f}",
        f"{temp['loss'] / _MIB:.1f}",
        f"{temp['+metrics'] / _MIB:.1f}",
        f"{temp['+metrics'] / m_ref:.2f}" if m_ref else "n/a",
      ]
    )
    for mode in ("loss", "+metrics"):
      record.append(
        dict(
          loss=name,
          mode=mode,
          seconds=timings[(name, mode)],
          ratio_to_optax=t[mode] / t_ref,
          ratio_to_ce=t[mode] / t_ce[mode],
          memory_bytes=memory[(name, mode)],
        )
      )
  logits_mib = logits_BxNxKxV1.nbytes / _MIB
  title = (
    f"### Losses vs cross-entropy: value_and_grad w.r.t. logits [B={batch}, N={length}, "
    f"K+1={num_steps}, V+1={vocab + 1}] float32 ({logits_mib:.0f} MiB), "
    f"median of {repeats} interleaved repeats\n"
  )
  sizes = dict(
    batch=batch, length=length, pauses=pauses, vocab=vocab, repeats=repeats, logits_bytes=logits_BxNxKxV1.nbytes
  )
  return dict(sizes=sizes, rows=record), title + _markdown(header, rows)


def bench_chunked(
  batch: int, length: int, pauses: int, vocab: int, d_model: int, vocab_chunks: Sequence[int], repeats: int, seed: int
) -> tuple[dict[str, Any], str]:
  """Table 2: CYB-AP through the full logits versus the chunked path.

  ``value_and_grad`` (with metrics) w.r.t. ``(hidden, output_kernel, dk_kernel, dk_bias)``
  for hidden ``[B, N, K+1, D]`` and an output kernel ``[D, V]``; reference: optax
  cross-entropy over the same ``hidden @ output_kernel`` (:func:`optax_head_loss`).

  Returns:
    ``(record, markdown)`` as :func:`bench_losses`, plus the loss value of each CYB
    program (the chunked ones equal the full one to float tolerance).
  """
  _check_sizes(1, chunk_batch=batch, chunk_length=length, chunk_vocab=vocab, d_model=d_model, chunk_repeats=repeats)
  _check_sizes(0, chunk_pauses=pauses)
  for chunk in vocab_chunks:
    _check_sizes(1, vocab_chunks=chunk)
  num_steps = pauses + 1
  key_h, key_w, key_dk, key_y = jax.random.split(jax.random.key(seed), 4)
  hidden_BxNxKxD = jax.random.normal(key_h, (batch, length, num_steps, d_model), jnp.float32)
  kernel_DxV = 2.0 * jax.random.normal(key_w, (d_model, vocab), jnp.float32) / d_model**0.5
  dk_kernel_D = jax.random.normal(key_dk, (d_model,), jnp.float32) / d_model**0.5
  dk_bias = jnp.zeros((), jnp.float32)
  targets_BxN = jax.random.randint(key_y, (batch, length), 0, vocab, jnp.int32)
  weights_BxN = jnp.ones((batch, length), jnp.float32)
  args = (hidden_BxNxKxD, kernel_DxV, dk_kernel_D, dk_bias, targets_BxN, weights_BxN)

  ref = "optax_ce full (ref)"
  fns = {ref: optax_head_loss, "full": full_head_loss}
  for chunk in vocab_chunks:
    fns[f"chunked({chunk})"] = functools.partial(chunked_head_loss, vocab_chunk=chunk)
  compiled = {name: compile_value_and_grad(fn, args, argnums=(0, 1, 2, 3)) for name, fn in fns.items()}
  memory = {name: memory_stats(c) for name, c in compiled.items()}
  timings, outputs = interleaved_median_seconds(
    {name: functools.partial(c, *args) for name, c in compiled.items()}, repeats, warmup=False
  )
  values = {name: float(out[0][0]) for name, out in outputs.items()}

  full_mem, t_full, t_ref = memory["full"], timings["full"]["median"], timings[ref]["median"]
  header = [
    "path",
    "temp MiB",
    "peak MiB",
    "temp / full",
    "peak / full",
    "ms (median)",
    "time / full",
    "time / optax",
    "loss - full loss",
  ]
  rows, record = [], []
  for name in fns:
    mem, t = memory[name], timings[name]["median"]
    diff = "n/a" if name == ref else f"{abs(values[name] - values['full']):.1e}"
    rows.append(
      [
        name,
        f"{mem['temp'] / _MIB:.1f}",
        f"{mem['peak'] / _MIB:.1f}",
        f"{mem['temp'] / full_mem['temp']:.3f}",
        f"{mem['peak'] / full_mem['peak']:.3f}",
        f"{1e3 * t:.0f}",
        f"{t / t_full:.2f}",
        f"{t / t_ref:.2f}",
        diff,
      ]
    )
    record.append(
      dict(
        path=name,
        seconds=timings[name],
        memory_bytes=mem,
        loss=values[name],
        temp_ratio_to_full=mem["temp"] / full_mem["temp"],
        peak_ratio_to_full=mem["peak"] / full_mem["peak"],
        time_ratio_to_full=t / t_full,
        time_ratio_to_optax=t / t_ref,
      )
    )
  rows_m = batch * length * num_steps
  title = (
    f"### Chunked vs full: value_and_grad of cyb_ap (+metrics) w.r.t. hidden [B={batch}, "
    f"N={length}, K+1={num_steps}, D={d_model}] and kernel [D, V={vocab}]; "
    f"N*B*(K+1) = {rows_m}; median of {repeats} interleaved run(s), no warm-up\n"
  )
  sizes = dict(
    batch=batch,
    length=length,
    pauses=pauses,
    vocab=vocab,
    d_model=d_model,
    vocab_chunks=list(vocab_chunks),
    repeats=repeats,
    rows=rows_m,
  )
  return dict(sizes=sizes, rows=record), title + _markdown(header, rows)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sizes = dict(
    batch=_BATCH.value,
    length=_LENGTH.value,
    pauses=_PAUSES.value,
    vocab=_VOCAB.value,
    repeats=_REPEATS.value,
    chunk_batch=_CHUNK_BATCH.value,
    chunk_length=_CHUNK_LENGTH.value,
    chunk_pauses=_CHUNK_PAUSES.value,
    chunk_vocab=_CHUNK_VOCAB.value,
    d_model=_D_MODEL.value,
    vocab_chunks=[int(c) for c in _VOCAB_CHUNKS.value],
    chunk_repeats=_CHUNK_REPEATS.value,
  )
  if _QUICK.value:
    sizes.update(_QUICK_SIZES)
  device = jax.devices()[0]
  env = dict(
    jax=jax.__version__,
    backend=jax.default_backend(),
    device=device.device_kind,
    cpu_count=os.cpu_count(),
    python=platform.python_version(),
  )
  print("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
  result: dict[str, Any] = dict(environment=env, quick=_QUICK.value)
  if not _SKIP_LOSSES.value:
    record, table = bench_losses(
      sizes["batch"], sizes["length"], sizes["pauses"], sizes["vocab"], sizes["repeats"], _SEED.value
    )
    result["losses"] = record
    print("\n" + table, flush=True)
  if not _SKIP_CHUNKED.value:
    record, table = bench_chunked(
      sizes["chunk_batch"],
      sizes["chunk_length"],
      sizes["chunk_pauses"],
      sizes["chunk_vocab"],
      sizes["d_model"],
      sizes["vocab_chunks"],
      sizes["chunk_repeats"],
      _SEED.value,
    )
    result["chunked"] = record
    print("\n" + table, flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=1)
    print(f"\nWrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
