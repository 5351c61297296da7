"""Training a pause-aware language model: the loop (the step: :mod:`cyb_jax.training.steps`;
the programs: :mod:`cyb_jax.training.programs`).

``train_and_evaluate(config, workdir)`` is the whole job (``launch/train.py`` only parses
flags): it builds the run's pieces (:mod:`cyb_jax.training.components`), the mesh and a sharded train
state, resumes from the newest checkpoint in ``workdir`` (or fine-tunes from
``config.init_from``), trains with AdamW, evaluates with the protocols of docs/design.md
section 5 (:mod:`cyb_jax.analysis.evaluation`), checkpoints, and writes ``metrics.jsonl``,
TensorBoard events and ``report.md``.

One train step (:func:`train_step`) is a pure function of ``(state, batch)``, jitted by
:func:`make_programs` with explicit in/out shardings and a donated state; the loop compiles it
once ahead of time. The loop never waits on the device per step: batches are produced and
placed in a thread (:mod:`cyb_jax.training.prefetch`), a non-finite step is refused on device, and the
host reads metrics and finite flags only at log, eval and checkpoint steps (and the end).
"""

from __future__ import annotations

import math
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from cyb_jax import files
from cyb_jax import metrics_writer
from cyb_jax import sharding
from cyb_jax.training import checkpoint as ckpt_lib
from cyb_jax.training import components
from cyb_jax.training import hosts
from cyb_jax.training import init_from
from cyb_jax.training import mfu
from cyb_jax.training import prefetch
from cyb_jax.training.programs import Programs
from cyb_jax.training.programs import make_programs
from cyb_jax.training.programs import model_flops_per_device
from cyb_jax.training.programs import state_shardings
from cyb_jax.training.steps import Batch
from cyb_jax.training.steps import TrainState
from cyb_jax.training.steps import init_state
from cyb_jax.training.steps import train_step

# The step functions and the programs, by the names the trainer has always offered.
__all__ = [
  "BATCH_KEYS",
  "Batch",
  "NonFiniteLossError",
  "Programs",
  "TrainState",
  "init_state",
  "make_programs",
  "model_flops_per_device",
  "state_shardings",
  "train_and_evaluate",
  "train_step",
]

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
PREFETCH_DEPTH = 2  # batches produced and placed on the devices ahead of the step
MAX_STEPS_IN_FLIGHT = 2  # steps the host dispatches ahead of the device at most


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


def _non_finite_message(step: int, m: dict, last_good: int | None, workdir: str) -> str:
  what = (
    f"the training loss is {m['loss']} at step {step}"
    if not math.isfinite(m["loss"])
    else f"the gradient of the training loss is {m['grad_norm']} at step {step} (the loss is {m['loss']})"
  )
  good = f"step {last_good}" if last_good is not None else "none"
  return (
    f"{what}, the first non-finite step (its update was refused); "
    f"stopped. The last good checkpoint is {good} in {ckpt_lib.checkpoint_dir(workdir)}. "
    "Lower optimizer.learning_rate or check the data."
  )


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, mininterval=1.0)


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
      logging.warning(
        "Resuming step %d with a changed learning-rate schedule (%s); set "
        "optimizer.schedule_steps to the checkpoint's value to extend the run "
        "without changing the schedule.",
        latest,
        change,
      )
    state, data_state, saved_meta = checkpointer.restore(latest, abstract_state)
    data.train.set_state(hosts.own_data_state(data_state))
    logging.info("Resumed from step %d.", latest)
    return state, latest, int(saved_meta.get("train_tokens", 0))
  state = programs.init(jax.random.key(config.seed))
  if config.init_from:
    params = init_from.initial_params(config, model_cfg, state.params, programs.shardings.params)
    state = state.replace(
      params=params, opt_state=jax.jit(programs.tx.init, out_shardings=programs.shardings.opt_state)(params)
    )
  return state, None, 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints one run in ``workdir``; resumes if it has one.

  Returns:
    The final eval figures (:func:`cyb_jax.analysis.evaluation.figures` over the eval set), plus
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
    state, latest, train_tokens = _restore_or_init(
      config, workdir, programs, checkpointer, data, meta, model_cfg, abstract_state
    )
    if latest is not None:
      writer.truncate_after(latest)
    eval_batches = [sharding.global_batch({k: b[k] for k in BATCH_KEYS}, mesh) for b in data.eval_batches]

    def evaluate_now(step: int) -> dict:
      if not eval_batches:
        return {}
      figures = programs.evaluate(state.params, eval_batches)
      row = {f"eval/{k}": v for k, v in figures.items() if k not in ("weight_sum", "num_positions")}
      row["eval/accuracy"] = figures["threshold_accuracy"]
      row["train_tokens"] = train_tokens
      writer.write(step, row)
      return figures

    def save(step: int, data_state: dict) -> None:
      checkpointer.save(
        step, state, hosts.gather_data_states(data_state), dict(meta, train_tokens=train_tokens, step=step)
      )

    start = step = int(state.step)
    stopped, last_good, final = "completed", latest, {}
    tokens_per_step = config.data.batch_size * config.data.seq_len
    profiler = mfu.ProfileWindow(profile_window, os.fspath(files.resolve(workdir) / "profile"))
    pending = prefetch.PendingSteps(("finite", "loss", "grad_norm", "weight_sum"), MAX_STEPS_IN_FLIGHT)

    def sync() -> None:
      """Reads the finite flags of the steps since the last sync and counts their tokens."""
      nonlocal train_tokens
      for s, m in pending.read():
        if not m["finite"]:
          raise NonFiniteLossError(_non_finite_message(s, m, last_good, workdir))
        train_tokens += int(round(float(m["weight_sum"])))  # global target tokens

    data_state = data.train.get_state()  # as of the last consumed batch
    batches = prefetch.Prefetcher(
      prefetch.train_batches(data.train, mesh, BATCH_KEYS),
      count=max(config.num_train_steps - start, 0),
      depth=PREFETCH_DEPTH,
    )
    bar = _progress(config.num_train_steps, start, config.progress_bar and is_main)
    step_fn, flops, peak, t_last, steps_since = None, None, None, time.perf_counter(), 0
    try:
      with hosts.Preemption() as preemption:
        for batch, batch_data_state in batches:
          if step_fn is None:  # compiled once, ahead of time, for these shapes and shardings
            step_fn = programs.train_step.lower(state, batch).compile()
            # Accounting (MFU's peak and FLOPs, the program's memory) never stops the run: a
            # figure that fails is logged once and left out.
            accounting = mfu.account_train_step(
              model_cfg,
              batch["inputs"].shape,
              mesh,
              step_fn,
              configured_peak=config.peak_flops_per_device,
              with_mfu=is_main,
            )
            flops, peak = accounting.flops_per_device, accounting.peak_flops_per_device
            t_last = time.perf_counter()
          profiler.before(step + 1)
          with profiler.annotation(step + 1):
            state, metrics = step_fn(state, batch)
          step, steps_since, data_state = step + 1, steps_since + 1, batch_data_state
          pending.add(step, metrics)
          profiler.after(step, state)
          last = step == config.num_train_steps
          is_log, is_eval, is_save = (
            last or step % every == 0
            for every in (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps)
          )
          if is_log or is_eval or is_save:
            sync()  # before any row or checkpoint: every step since the last one was finite
          if is_log:
            now = time.perf_counter()
            seconds = now - t_last
            host = _host(metrics)
            row = {
              f"train/{k}": v
              for k, v in host.items()
              if k != "finite" and (np.ndim(v) == 0 or k in ("halt_probs", "accuracy_per_step"))
            }
            row["train_tokens"] = train_tokens
            postfix = dict(loss=f"{float(host['loss']):.4f}", pauses=f"{float(host['expected_pauses']):.2f}")
            if seconds > 0:  # a clock that did not advance gives no rate (it never divides by 0)
              row["train/tokens_per_sec"] = steps_since * tokens_per_step / seconds
              postfix["tok_s"] = f"{row['train/tokens_per_sec']:,.0f}"
            if flops is not None and seconds > 0:
              value = mfu.or_warn("train/mfu", mfu.mfu, flops, steps_since, seconds, peak)
              if value is None:  # warned once: no MFU for the rest of the run
                flops = None
              else:
                row["train/mfu"] = value
                postfix["mfu"] = f"{value:.1%}"
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
    from cyb_jax.analysis import report  # pylint: disable=g-import-not-at-top

    report.write_report(
      workdir,
      model_cfg=model_cfg,
      params=params,
      eval_batches=data.eval_batches,
      info=data.info,
      loss_name=config.loss.name,
      protocol=components.protocol(config),
      vocab_chunk=components.vocab_chunk(config),
    )
