"""Training a pause-aware language model: the train step, the sharded programs, the loop.

``train_and_evaluate(config, workdir)`` is the whole job (``launch/train.py`` only parses
flags): it builds the run's pieces (:mod:`cyb_jax.components`), the mesh and a sharded train
state, resumes from the newest checkpoint in ``workdir`` (or fine-tunes from
``config.init_from``), trains with AdamW, evaluates with the protocols of docs/design.md
section 5 (:mod:`cyb_jax.evaluation`), checkpoints, and writes ``metrics.jsonl``,
TensorBoard events and ``report.md``.

One train step (:func:`train_step`) is a pure function of ``(state, batch)``, jitted by
:func:`make_programs` with explicit in/out shardings and a donated state; the loop compiles it
once ahead of time. The loop never waits on the device per step: batches are produced and
placed in a thread (:mod:`cyb_jax.prefetch`), a non-finite step is refused on device, and the
host reads metrics and finite flags only at log, eval and checkpoint steps (and the end).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from cyb_jax import checkpoint as ckpt_lib
from cyb_jax import components
from cyb_jax import evaluation
from cyb_jax import files
from cyb_jax import hosts
from cyb_jax import losses
from cyb_jax import metrics_writer
from cyb_jax import mfu
from cyb_jax import model as model_lib
from cyb_jax import prefetch
from cyb_jax import sharding

Batch = dict[str, jax.Array]

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
PREFETCH_DEPTH = 2  # batches produced and placed on the devices ahead of the step
MAX_STEPS_IN_FLIGHT = 2  # steps the host dispatches ahead of the device at most


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes; saved whole in checkpoints.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: the model's parameter pytree.
    opt_state: the optax optimiser state.
    multiplier: float32 scalar, the loss state of :class:`cyb_jax.losses.Loss`: the CYB-DP
      Lagrange multiplier mu (a loss without dual ascent keeps it unchanged).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  multiplier: jax.Array


def train_step(state: TrainState, batch: Batch, *, model_cfg: model_lib.ModelConfig,
               loss: losses.Loss, tx: optax.GradientTransformation, schedule: optax.Schedule,
               accum_steps: int = 1, vocab_chunk: int | None = None) -> tuple[TrainState, dict]:
  """One optimiser step on a global batch ``[B, N]``.

  With ``accum_steps > 1`` the batch is split into micro-batches whose gradients are
  combined with weights proportional to their token counts, which equals the
  full-batch gradient for every loss that is a weighted mean over positions (all but
  ``cyb_va`` with ``kl="batch"``, whose KL is then taken per micro-batch). The loss state
  (the CYB-DP multiplier) is updated once, from the full batch's metrics.

  If the loss or the gradient norm is not finite the returned state EQUALS ``state`` (the
  update is refused on device, no host sync) and ``metrics["finite"]`` is False.
  """

  def loss_and_metrics(params, micro):
    stats = evaluation.step_stats(model_cfg, params, micro, vocab_chunk=vocab_chunk)
    return loss.value_and_metrics(stats, micro["weights"], state.multiplier)

  grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
  if accum_steps == 1:
    (value, metrics), grads = grad_fn(state.params, batch)
  else:
    micro_batches = jax.tree.map(
        lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)

    def accumulate(carry, micro):
      (value, metrics), grads = grad_fn(state.params, micro)
      w = metrics["weight_sum"]
      scaled = jax.tree.map(lambda x: x * w, (value, metrics, grads))
      return jax.tree.map(jnp.add, carry, (scaled, w)), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    shapes = jax.eval_shape(lambda: (lambda r: ((r[0][0], r[0][1], r[1]), r[0][1]["weight_sum"]))(
        grad_fn(state.params, first)))
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    (sums, total), _ = jax.lax.scan(accumulate, zeros, micro_batches)
    total = jnp.maximum(total, 1e-9)
    value, metrics, grads = jax.tree.map(lambda x: x / total, sums)
    metrics["weight_sum"] = total
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
  metrics = dict(metrics, loss=value, grad_norm=grad_norm, learning_rate=schedule(state.step),
                 finite=finite)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         multiplier=loss.update_state(state.multiplier, metrics))
  # A non-finite loss or gradient refuses the update on device: the state comes back as it
  # went in, and the host stops at its next sync point (``metrics["finite"]`` False).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return new_state, metrics


def state_shardings(model_cfg, tx, mesh: Mesh, rules) -> TrainState:
  """NamedShardings of the train state from the parameters' logical axis names."""
  param_specs = model_lib.param_logical_axes(model_cfg)
  param_shardings = sharding.logical_shardings(param_specs, mesh, rules)
  abstract_params = jax.eval_shape(model_lib.init_params, model_cfg, jax.random.key(0))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt, param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return TrainState(step=sharding.replicated(mesh), params=param_shardings,
                    opt_state=opt_shardings, multiplier=sharding.replicated(mesh))


def init_state(rng: jax.Array, *, model_cfg, tx, loss_state: jax.Array) -> TrainState:
  """A fresh train state: initial parameters, optimiser state and ``loss_state``."""
  params = model_lib.init_params(model_cfg, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    multiplier=jnp.asarray(loss_state, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Programs:
  """The sharded, jitted programs of one run (built by :func:`make_programs`).

  Attributes:
    tx: the optax optimiser.
    shardings: a ``TrainState`` of NamedShardings, one per leaf.
    init: ``rng -> TrainState``, a fresh state placed by ``shardings``.
    train_step: ``(state, batch) -> (state, metrics)``; donates ``state``.
    eval_step: ``(params, batch) -> sums``, :func:`cyb_jax.evaluation.eval_sums` of that batch.
    loss: the run's :class:`cyb_jax.losses.Loss`.
  """

  tx: optax.GradientTransformation
  shardings: TrainState
  init: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]]
  eval_step: Callable[[Any, Batch], dict]
  loss: losses.Loss

  def abstract_state(self, rng: jax.Array) -> TrainState:
    """Shapes, dtypes and shardings of the state (the target of a checkpoint restore).

    Call it under ``sharding.mesh_context``: tracing meets the activation constraints.
    """
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        jax.eval_shape(self.init, rng), self.shardings)


def make_programs(config: ml_collections.ConfigDict, model_cfg: model_lib.ModelConfig,
                  mesh: Mesh, rules, *, loss: losses.Loss | None = None) -> Programs:
  """Jits init, train and eval steps of ``config`` with explicit shardings on ``mesh``.

  Nothing is compiled until first called (or lowered); nothing runs on ``mesh``'s
  devices here, so ``mesh`` may be made of TPU topology devices (AOT compilation).
  ``loss`` is the run's loss if already built (else built from ``config.loss``).

  Raises:
    ValueError: a micro-batch (``data.batch_size / optimizer.grad_accum_steps`` rows) does
      not split evenly over the mesh's ``data * fsdp`` devices.
  """
  accum = config.optimizer.grad_accum_steps
  sharding.check_batch_divisible(
      config.data.batch_size // accum, mesh,
      name="data.batch_size" if accum == 1 else f"data.batch_size / grad_accum_steps {accum}")
  loss = loss or components.make_loss(config)
  tx, schedule = components.make_optimizer(config)
  vocab_chunk = components.vocab_chunk(config)
  shardings = state_shardings(model_cfg, tx, mesh, rules)
  batch_sharding = sharding.batch_sharding(mesh)
  init = jax.jit(functools.partial(init_state, model_cfg=model_cfg, tx=tx,
                                   loss_state=loss.init_state()),
                 out_shardings=shardings)
  step = jax.jit(
      functools.partial(train_step, model_cfg=model_cfg, loss=loss, tx=tx,
                        schedule=schedule, accum_steps=config.optimizer.grad_accum_steps,
                        vocab_chunk=vocab_chunk),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  evaluate = jax.jit(
      functools.partial(evaluation.eval_sums, model_cfg=model_cfg,
                        protocol=components.protocol(config), vocab_chunk=vocab_chunk),
      in_shardings=(shardings.params, batch_sharding),
      out_shardings=sharding.replicated(mesh))
  return Programs(tx=tx, shardings=shardings, init=init, train_step=step, eval_step=evaluate,
                  loss=loss)


def merge_init_params(fresh: Any, source: Any) -> tuple[Any, list[str], list[str]]:
  """Copies every parameter of ``source`` into ``fresh`` where the path exists.

  Parameters only in ``fresh`` (a K = 0 model has no ``pause_embed``) stay freshly
  initialised; a parameter in both with different shapes is an error.

  Returns:
    ``(params, copied paths, fresh paths)``.
  """
  flat_source = {jax.tree_util.keystr(k): v for k, v in
                 jax.tree_util.tree_flatten_with_path(source)[0]}
  copied, kept = [], []

  def pick(path, fresh_leaf):
    key = jax.tree_util.keystr(path)
    if key not in flat_source:
      kept.append(key)
      return fresh_leaf
    src = np.asarray(flat_source[key])
    if src.shape != fresh_leaf.shape:
      raise ckpt_lib.IncompatibleCheckpointError(
          f"init_from: parameter {key} has shape {src.shape} in the checkpoint but "
          f"{fresh_leaf.shape} in this model.")
    copied.append(key)
    return jax.device_put(src.astype(fresh_leaf.dtype), fresh_leaf.sharding)

  params = jax.tree_util.tree_map_with_path(pick, fresh)
  return params, copied, kept


def model_flops_per_device(config, model_cfg, loss, batch: Batch) -> float:
  """Model FLOPs of one train step of ``batch``'s shapes, per device.

  XLA's HLO cost analysis (:func:`cyb_jax.mfu.lowered_flops`) of the unpartitioned step,
  lowered (not compiled) with every loop unrolled and nothing recomputed: the pause scan
  unrolled, layers not scanned, no remat, no vocabulary chunks, one micro-batch. XLA counts
  a loop body once, so the compiled program's own count would miss K - 1 pause steps;
  remat and chunking are hardware FLOPs, not model FLOPs. Divided by the device count.
  """
  twin = dataclasses.replace(model_cfg, unroll_pause_scan=True, scan_layers=False,
                             remat_policy="none")
  tx, schedule = components.make_optimizer(config)
  state = jax.eval_shape(functools.partial(init_state, model_cfg=twin, tx=tx,
                                           loss_state=loss.init_state()), jax.random.key(0))
  step = functools.partial(train_step, model_cfg=twin, loss=loss, tx=tx, schedule=schedule)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  return mfu.lowered_flops(jax.jit(step).lower(state, shapes)) / jax.device_count()


def _non_finite_message(step: int, m: dict, last_good: int | None, workdir: str) -> str:
  what = (f"the training loss is {m['loss']} at step {step}" if not math.isfinite(m["loss"])
          else f"the gradient of the training loss is {m['grad_norm']} at step {step} (the "
          f"loss is {m['loss']})")
  good = f"step {last_good}" if last_good is not None else "none"
  return (f"{what}, the first non-finite step (its update was refused); "
          f"stopped. The last good checkpoint is {good} in {ckpt_lib.checkpoint_dir(workdir)}. "
          "Lower optimizer.learning_rate or check the data.")


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
              dynamic_ncols=True, mininterval=1.0)


def _restore_or_init(config, workdir, programs, checkpointer, data, meta, model_cfg, abstract_state):
  """The state to train from: the newest checkpoint, else a fresh (or ``init_from``) state.

  Returns:
    ``(state, latest checkpoint step or None, train_tokens so far)``.
  """
  latest = checkpointer.latest_step()
  if latest is not None:
    saved_meta = checkpointer.restore_meta(latest)
    ckpt_lib.check_compatible(saved_meta, meta, what=f"the checkpoint of step {latest} in {workdir}")
    for change in components.schedule_changes(saved_meta.get("schedule"), config):
      logging.warning("Resuming step %d with a changed learning-rate schedule (%s); set "
                      "optimizer.schedule_steps to the checkpoint's value to extend the run "
                      "without changing the schedule.", latest, change)
    state, data_state, saved_meta = checkpointer.restore(latest, abstract_state)
    data.train.set_state(hosts.own_data_state(data_state))
    logging.info("Resumed from step %d.", latest)
    return state, latest, int(saved_meta.get("train_tokens", 0))
  state = programs.init(jax.random.key(config.seed))
  if config.init_from:
    source_params, source_meta = ckpt_lib.restore_params_for_init(config.init_from)
    source_vocab = source_meta.get("model", {}).get("vocab_size")
    if source_vocab != model_cfg.vocab_size:
      raise ckpt_lib.IncompatibleCheckpointError(
          f"init_from={config.init_from!r} has vocab_size {source_vocab}, this model "
          f"{model_cfg.vocab_size}.")
    params, copied, kept = merge_init_params(state.params, source_params)
    state = state.replace(params=params, opt_state=jax.jit(
        programs.tx.init, out_shardings=programs.shardings.opt_state)(params))
    logging.info("init_from %s: copied %d parameters; fresh: %s", config.init_from,
                 len(copied), kept)
  return state, None, 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints one run in ``workdir``; resumes if it has one.

  Returns:
    The final eval figures (:func:`cyb_jax.evaluation.figures` over the eval set), plus
    ``step``, ``train_tokens`` and ``stopped`` ("completed" or "preempted").

  Raises:
    ValueError: for a bad config, before anything is written.
    IncompatibleCheckpointError: resuming with a different model shape or vocabulary.
    NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
  """
  loss = components.validate(config)
  profile_window = mfu.check_profile_steps(config.profile_steps)
  mfu.check_configured_peak(config.peak_flops_per_device)
  workdir = os.fspath(files.resolve(workdir))
  data = components.make_run_data(config, workdir)
  model_cfg = components.model_config(config, data.info.vocab_size)
  is_main = jax.process_index() == 0
  peak = mfu.peak_flops_per_device(config.peak_flops_per_device) if is_main else None

  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  programs = make_programs(config, model_cfg, mesh, rules, loss=loss)
  files.resolve(workdir).mkdir(parents=True, exist_ok=True)
  if is_main:
    ckpt_lib.save_config(workdir, config)
  meta = components.run_meta(model_cfg, config)

  with sharding.mesh_context(mesh, rules):
    abstract_state = programs.abstract_state(jax.random.key(config.seed))
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
    state, latest, train_tokens = _restore_or_init(config, workdir, programs, checkpointer, data,
                                                   meta, model_cfg, abstract_state)
    if latest is not None:
      writer.truncate_after(latest)
    eval_batches = [sharding.global_batch({k: b[k] for k in BATCH_KEYS}, mesh)
                    for b in data.eval_batches]

    def evaluate_now(step: int) -> dict:
      if not eval_batches:
        return {}
      sums = None
      for batch in eval_batches:
        sums = evaluation.add_sums(sums, programs.eval_step(state.params, batch))
      figures = evaluation.figures(sums)
      row = {f"eval/{k}": v for k, v in figures.items()
             if k not in ("weight_sum", "num_positions")}
      row["eval/accuracy"] = figures["threshold_accuracy"]
      row["train_tokens"] = train_tokens
      writer.write(step, row)
      return figures

    def save(step: int, data_state: dict) -> None:
      checkpointer.save(step, state, hosts.gather_data_states(data_state),
                        dict(meta, train_tokens=train_tokens, step=step))

    start = step = int(state.step)
    stopped, last_good, final = "completed", latest, {}
    tokens_per_step = config.data.batch_size * config.data.seq_len
    profiler = mfu.ProfileWindow(profile_window, os.fspath(files.resolve(workdir) / "profile"))
    pending = prefetch.PendingSteps(("finite", "loss", "grad_norm", "weight_sum"),
                                    MAX_STEPS_IN_FLIGHT)

    def sync() -> None:
      """Reads the finite flags of the steps since the last sync and counts their tokens."""
      nonlocal train_tokens
      for s, m in pending.read():
        if not m["finite"]:
          raise NonFiniteLossError(_non_finite_message(s, m, last_good, workdir))
        train_tokens += int(round(float(m["weight_sum"])))  # global target tokens

    data_state = data.train.get_state()  # as of the last consumed batch
    batches = prefetch.Prefetcher(prefetch.train_batches(data.train, mesh, BATCH_KEYS),
                                  count=max(config.num_train_steps - start, 0),
                                  depth=PREFETCH_DEPTH)
    bar = _progress(config.num_train_steps, start, config.progress_bar and is_main)
    step_fn, flops, t_last, steps_since = None, None, time.perf_counter(), 0
    try:
      with hosts.Preemption() as preemption:
        for batch, batch_data_state in batches:
          if step_fn is None:  # compiled once, ahead of time, for these shapes and shardings
            step_fn = programs.train_step.lower(state, batch).compile()
            flops = model_flops_per_device(config, model_cfg, loss, batch) if peak else None
            t_last = time.perf_counter()
          profiler.before(step + 1)
          with profiler.annotation(step + 1):
            state, metrics = step_fn(state, batch)
          step, steps_since, data_state = step + 1, steps_since + 1, batch_data_state
          pending.add(step, metrics)
          profiler.after(step, state)
          last = step == config.num_train_steps
          is_log, is_eval, is_save = (last or step % every == 0 for every in (
              config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps))
          if is_log or is_eval or is_save:
            sync()  # before any row or checkpoint: every step since the last one was finite
          if is_log:
            now = time.perf_counter()
            host = _host(metrics)
            row = {f"train/{k}": v for k, v in host.items() if k != "finite" and (
                np.ndim(v) == 0 or k in ("halt_probs", "accuracy_per_step"))}
            row.update({"train_tokens": train_tokens,
                        "train/tokens_per_sec": steps_since * tokens_per_step / (now - t_last)})
            postfix = dict(loss=f"{float(host['loss']):.4f}",
                           pauses=f"{float(host['expected_pauses']):.2f}",
                           tok_s=f"{row['train/tokens_per_sec']:,.0f}")
            if flops is not None:
              row["train/mfu"] = mfu.mfu(flops, steps_since, now - t_last, peak)
              postfix["mfu"] = f"{row['train/mfu']:.1%}"
            writer.write(step, row)
            bar.set_postfix(postfix, refresh=False)
            t_last, steps_since = now, 0
          bar.update(1)
          paused_at = time.perf_counter()  # eval and checkpoint time is not train time
          if is_eval:
            final = evaluate_now(step)
          if is_save:
            save(step, data_state)
            last_good = step
          if preemption.should_stop(step):
            sync()
            if last_good != step:
              save(step, data_state)
            stopped = "preempted"
            break
          t_last += time.perf_counter() - paused_at
    finally:
      profiler.close()
      batches.close()
      bar.close()
      checkpointer.close()
      writer.close()

    if stopped == "completed" and not final:
      final = evaluate_now(step)
    if stopped == "completed" and config.write_report and data.eval_batches:
      _write_report(config, workdir, model_cfg, state.params, data, is_main)
  return dict(final, step=step, train_tokens=train_tokens, stopped=stopped)


def _write_report(config, workdir, model_cfg, params, data, is_main) -> None:
  """report.md of the finished run (every process takes part; process 0 writes alone)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    params = multihost_utils.process_allgather(params)
  if is_main:
    from cyb_jax import report  # pylint: disable=g-import-not-at-top
    report.write_report(workdir, model_cfg=model_cfg, params=params,
                        eval_batches=data.eval_batches, info=data.info,
                        loss_name=config.loss.name, protocol=components.protocol(config),
                        vocab_chunk=components.vocab_chunk(config))
