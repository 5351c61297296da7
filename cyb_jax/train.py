"""Training and evaluation of a pause-aware language model with the CYB losses.

``train_and_evaluate(config, workdir)`` is the whole job (``launch/train.py`` only
parses flags): it builds the data, the mesh and a sharded train state, resumes
from the newest checkpoint in ``workdir`` (or fine-tunes from ``config.init_from``),
trains with AdamW, evaluates with the DESIGN section 5 protocols, checkpoints, and
writes ``metrics.jsonl``, TensorBoard events and ``report.md``.

One train step (``train_step``) is a pure function of ``(state, batch)``, jitted
with explicit in/out shardings and a donated state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cyb_jax import checkpoint as ckpt_lib
from cyb_jax import losses
from cyb_jax import metrics_writer
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.data import make_data, validate_data_config

Batch = dict[str, jax.Array]
LossFn = Callable[[losses.StepLogProbs, jax.Array, jax.Array], tuple[jax.Array, dict]]

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes; saved whole in checkpoints.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: the model's parameter pytree.
    opt_state: the optax optimiser state.
    multiplier: float32 scalar, the CYB-DP Lagrange multiplier mu (0 for other losses).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  multiplier: jax.Array


# ------------------------------------------------------------------------------------
# Config -> components.
# ------------------------------------------------------------------------------------


def make_model_config(config: ml_collections.ConfigDict, data_vocab_size: int
                      ) -> model_lib.ModelConfig:
  """The ModelConfig of ``config.model``; ``vocab_size = 0`` takes the data's vocabulary.

  ``model.init_pause_prob = p > 0`` sets ``dk_bias_init = logit(p) + log V``: at
  initialisation the vocabulary logits are near 0, so P(<don't know>) starts near ``p``
  at every step and the pause steps receive gradient from the start.
  """
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)}
  m = dict(config.model)
  init_pause_prob = float(m.pop("init_pause_prob", 0.0))
  unknown = sorted(set(m) - fields)
  if unknown:
    raise ValueError(f"unknown model config fields {unknown}; allowed: {sorted(fields)}.")
  vocab = int(m.pop("vocab_size", 0)) or data_vocab_size
  if vocab < data_vocab_size:
    raise ValueError(f"model.vocab_size={vocab} is smaller than the data's vocabulary "
                     f"({data_vocab_size} ids); use 0 to take the data's.")
  for key in ("num_kv_heads", "head_dim"):  # 0 in the config means "derive it".
    m[key] = int(m.get(key) or 0) or None
  if not 0.0 <= init_pause_prob < 1.0:
    raise ValueError(f"model.init_pause_prob={init_pause_prob} must lie in [0, 1) "
                     "(0 = use model.dk_bias_init as given).")
  if init_pause_prob > 0:
    m["dk_bias_init"] = math.log(init_pause_prob / (1 - init_pause_prob)) + math.log(vocab)
  return model_lib.ModelConfig(vocab_size=vocab, **m)


def make_prior(loss_config: ml_collections.ConfigDict, num_steps: int) -> jax.Array:
  kind = loss_config.prior
  if kind == "geometric":
    return losses.geometric_prior(num_steps, loss_config.prior_continuation)
  if kind == "uniform":
    return losses.uniform_prior(num_steps)
  if kind == "explicit":
    values = np.asarray(loss_config.prior_values, np.float32)
    if values.shape != (num_steps,):
      raise ValueError(f"loss.prior_values has {values.size} entries; the explicit prior "
                       f"needs K+1 = {num_steps}.")
    return jnp.asarray(values)
  raise ValueError(f"loss.prior={kind!r} is unknown; allowed: 'geometric', 'uniform', "
                   "'explicit'.")


def make_loss_fn(loss_config: ml_collections.ConfigDict, num_steps: int) -> LossFn:
  """``(stats, weights, multiplier) -> (loss, metrics)`` for ``loss_config.name``.

  Hyper-parameters are checked here, once, with the loss's own messages.
  """
  name = loss_config.name
  if name not in losses.LOSSES:
    raise ValueError(f"loss.name={name!r} is unknown; allowed: {sorted(losses.LOSSES)}.")
  if name == "ce" and num_steps > 1:
    raise ValueError(f"loss.name='ce' trains no pauses: set model.max_pauses=0 (got "
                     f"max_pauses={num_steps - 1}).")
  if name == "cyb_ap":
    fn = functools.partial(losses.cyb_ap_loss, gamma=loss_config.gamma,
                           omega=loss_config.omega)
  elif name == "cyb_va":
    fn = functools.partial(losses.cyb_va_loss, prior=make_prior(loss_config, num_steps),
                           beta=loss_config.beta, kl=loss_config.kl)
  elif name == "cyb_dp":
    losses.update_multiplier(loss_config.multiplier_init, 0.0,
                             rate=loss_config.multiplier_rate)  # checks both values
    return functools.partial(_dp_loss, budget=loss_config.budget)
  else:
    fn = losses.LOSSES[name]
  # Check the hyper-parameters now (they are checked at trace time: nothing runs).
  jax.eval_shape(lambda: fn(losses.step_log_probs(jnp.zeros((1, num_steps, 2)),
                                                  jnp.zeros((1,), jnp.int32)), jnp.ones((1,))))
  return lambda stats, weights, multiplier: fn(stats, weights)


def _dp_loss(stats, weights, multiplier, *, budget):
  return losses.cyb_dp_loss(stats, weights, budget=budget, multiplier=multiplier)


def fixed_step_of(loss_name: str) -> int | None:
  """The step a baseline always reads (``ce``: 0, ``pause_ce``: K), None for CYB losses."""
  return {"ce": 0, "pause_ce": -1}.get(loss_name)


def make_optimizer(config: ml_collections.ConfigDict, num_train_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup, cosine decay and global-norm clipping."""
  o = config
  if o.learning_rate <= 0:
    raise ValueError(f"optimizer.learning_rate={o.learning_rate} must be > 0.")
  if o.warmup_steps < 0:
    raise ValueError(f"optimizer.warmup_steps={o.warmup_steps} must be >= 0.")
  warmup = min(o.warmup_steps, num_train_steps // 2)
  if warmup != o.warmup_steps:
    logging.warning("optimizer.warmup_steps=%d shortened to %d (half of num_train_steps=%d).",
                    o.warmup_steps, warmup, num_train_steps)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_train_steps, warmup + 1),
      end_value=o.learning_rate * o.end_learning_rate_fraction)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = []
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails fast, before anything is written, on values that cannot work."""
  for name in ("num_train_steps", "eval_every_steps", "checkpoint_every_steps",
               "log_every_steps", "keep_checkpoints"):
    value = config[name]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive integer.")
  if config.model.max_pauses < 0:
    raise ValueError(f"model.max_pauses={config.model.max_pauses} must be >= 0 (K, the most "
                     "pauses per token).")
  accum = config.optimizer.grad_accum_steps
  if accum < 1 or config.data.batch_size % accum:
    raise ValueError(f"optimizer.grad_accum_steps={accum} must be >= 1 and divide "
                     f"data.batch_size={config.data.batch_size}.")
  if not 0 <= config.eval.tau <= 1:
    raise ValueError(f"eval.tau={config.eval.tau} must lie in [0, 1].")
  if config.loss.vocab_chunk < 0:
    raise ValueError(f"loss.vocab_chunk={config.loss.vocab_chunk} must be >= 0.")
  if config.init_from and not os.path.isdir(config.init_from):
    raise ValueError(f"init_from={config.init_from!r} is not a folder.")
  validate_data_config(config.data, process_count=jax.process_count())
  make_loss_fn(config.loss, config.model.max_pauses + 1)


def make_run_data(config: ml_collections.ConfigDict, workdir: str):
  return make_data(config.data, seed=config.seed, workdir=workdir,
                   process_index=jax.process_index(), process_count=jax.process_count())


def run_meta(config: ml_collections.ConfigDict, model_cfg: model_lib.ModelConfig) -> dict:
  """Facts a checkpoint must share with a config to be resumed by it."""
  return {"model": dataclasses.asdict(model_cfg), "loss": config.loss.name}


# ------------------------------------------------------------------------------------
# Pure step functions.
# ------------------------------------------------------------------------------------


def compute_stats(model_cfg: model_lib.ModelConfig, params: Any, batch: Batch, *,
                  vocab_chunk: int = 0) -> losses.StepLogProbs:
  """Per-step statistics ``[B, N, K+1]`` of a batch (chunked over the vocabulary if asked)."""
  hidden_BxNxKxD = model_lib.step_hidden(model_cfg, params, batch["inputs"],
                                         segment_ids=batch["segment_ids"],
                                         positions=batch["positions"])
  if vocab_chunk:
    kernel_DxV, dk_D, dk_bias = model_lib.output_projection(model_cfg, params)
    return losses.chunked_step_log_probs(hidden_BxNxKxD, kernel_DxV, dk_D, batch["targets"],
                                         vocab_chunk=vocab_chunk, dk_bias=dk_bias)
  vocab_BxNxKxV, dk_BxNxK = model_lib.split_logits_from_hidden(model_cfg, params, hidden_BxNxKxD)
  return losses.step_log_probs_from_parts(vocab_BxNxKxV, dk_BxNxK, batch["targets"])


def train_step(state: TrainState, batch: Batch, *, model_cfg: model_lib.ModelConfig,
               loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
               accum_steps: int = 1, multiplier_rate: float = 0.0,
               vocab_chunk: int = 0) -> tuple[TrainState, dict]:
  """One optimiser step on a global batch ``[B, N]``.

  With ``accum_steps > 1`` the batch is split into micro-batches whose gradients are
  combined with weights proportional to their token counts, which equals the
  full-batch gradient for every loss that is a weighted mean over positions (all but
  ``cyb_va`` with ``kl="batch"``, whose KL is then taken per micro-batch).
  """

  def loss_and_metrics(params, micro):
    stats = compute_stats(model_cfg, params, micro, vocab_chunk=vocab_chunk)
    return loss_fn(stats, micro["weights"], state.multiplier)

  grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
  if accum_steps == 1:
    (loss, metrics), grads = grad_fn(state.params, batch)
  else:
    micro_batches = jax.tree.map(
        lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:]), batch)

    def accumulate(carry, micro):
      (loss, metrics), grads = grad_fn(state.params, micro)
      w = metrics["weight_sum"]
      scaled = jax.tree.map(lambda x: x * w, (loss, metrics, grads))
      return jax.tree.map(jnp.add, carry, (scaled, w)), None

    first = jax.tree.map(lambda x: x[0], micro_batches)
    shapes = jax.eval_shape(lambda: (lambda r: ((r[0][0], r[0][1], r[1]), r[0][1]["weight_sum"]))(
        grad_fn(state.params, first)))
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    (sums, total), _ = jax.lax.scan(accumulate, zeros, micro_batches)
    total = jnp.maximum(total, 1e-9)
    loss, metrics, grads = jax.tree.map(lambda x: x / total, sums)
    metrics["weight_sum"] = total
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  multiplier = state.multiplier
  if "pause_excess" in metrics:
    multiplier = losses.update_multiplier(multiplier, metrics["pause_excess"],
                                          rate=multiplier_rate)
  metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                 learning_rate=schedule(state.step))
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         multiplier=multiplier)
  return new_state, metrics


def eval_step(params: Any, batch: Batch, *, model_cfg: model_lib.ModelConfig, tau: float,
              fixed_step: int | None, vocab_chunk: int = 0) -> dict:
  """DESIGN section 5 figures of one batch, as weighted means plus ``weight_sum``."""
  stats = compute_stats(model_cfg, params, batch, vocab_chunk=vocab_chunk)
  return losses.evaluate(stats, batch["weights"], tau, fixed_step=fixed_step)


def combine_eval(per_batch: list[dict]) -> dict:
  """Token-weighted mean of per-batch :func:`eval_step` figures."""
  weights = np.array([float(m["weight_sum"]) for m in per_batch])
  total = max(weights.sum(), 1e-9)
  out = {}
  for key in per_batch[0]:
    if key == "weight_sum":
      continue
    out[key] = sum(w * np.asarray(m[key], np.float64) for w, m in zip(weights, per_batch)) / total
  out["tokens"] = weights.sum()
  return out


# ------------------------------------------------------------------------------------
# State creation and placement.
# ------------------------------------------------------------------------------------


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


def init_state(rng: jax.Array, *, model_cfg, tx, multiplier_init: float) -> TrainState:
  params = model_lib.init_params(model_cfg, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    multiplier=jnp.asarray(multiplier_init, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Programs:
  """The sharded, jitted programs of one run (built by :func:`make_programs`).

  Attributes:
    tx: the optax optimiser.
    shardings: a ``TrainState`` of NamedShardings, one per leaf.
    init: ``rng -> TrainState``, a fresh state placed by ``shardings``.
    train_step: ``(state, batch) -> (state, metrics)``; donates ``state``.
    eval_step: ``(params, batch) -> figures`` of ``losses.evaluate`` for that batch.
  """

  tx: optax.GradientTransformation
  shardings: TrainState
  init: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]]
  eval_step: Callable[[Any, Batch], dict]

  def abstract_state(self, rng: jax.Array) -> TrainState:
    """Shapes, dtypes and shardings of the state (the target of a checkpoint restore).

    Call it under ``sharding.mesh_context``: tracing meets the activation constraints.
    """
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        jax.eval_shape(self.init, rng), self.shardings)


def make_programs(config: ml_collections.ConfigDict, model_cfg: model_lib.ModelConfig,
                  mesh: Mesh, rules) -> Programs:
  """Jits init, train and eval steps of ``config`` with explicit shardings on ``mesh``.

  Nothing is compiled until first called (or lowered); nothing runs on ``mesh``'s
  devices here, so ``mesh`` may be made of TPU topology devices (AOT compilation).

  Raises:
    ValueError: a micro-batch (``data.batch_size / optimizer.grad_accum_steps`` rows) does
      not split evenly over the mesh's ``data * fsdp`` devices.
  """
  accum = config.optimizer.grad_accum_steps
  sharding.check_batch_divisible(
      config.data.batch_size // accum, mesh,
      name="data.batch_size" if accum == 1 else f"data.batch_size / grad_accum_steps {accum}")
  loss_fn = make_loss_fn(config.loss, model_cfg.num_steps)
  tx, schedule = make_optimizer(config.optimizer, config.num_train_steps)
  shardings = state_shardings(model_cfg, tx, mesh, rules)
  batch_sharding = sharding.batch_sharding(mesh)
  init = jax.jit(functools.partial(init_state, model_cfg=model_cfg, tx=tx,
                                   multiplier_init=config.loss.multiplier_init),
                 out_shardings=shardings)
  step = jax.jit(
      functools.partial(train_step, model_cfg=model_cfg, loss_fn=loss_fn, tx=tx,
                        schedule=schedule, accum_steps=config.optimizer.grad_accum_steps,
                        multiplier_rate=config.loss.multiplier_rate,
                        vocab_chunk=config.loss.vocab_chunk),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  evaluate = jax.jit(
      functools.partial(eval_step, model_cfg=model_cfg, tau=config.eval.tau,
                        fixed_step=fixed_step_of(config.loss.name),
                        vocab_chunk=config.loss.vocab_chunk),
      in_shardings=(shardings.params, batch_sharding),
      out_shardings=sharding.replicated(mesh))
  return Programs(tx=tx, shardings=shardings, init=init, train_step=step, eval_step=evaluate)


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


# ------------------------------------------------------------------------------------
# The job.
# ------------------------------------------------------------------------------------


class _Preemption:
  """Turns SIGTERM into a flag checked between steps (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      # Multi-host: JAX's preemption service owns SIGTERM and picks one step at which every
      # process stops (reached_preemption_sync_point); a Python handler here would make each
      # process stop at a different step and the collective save hang.
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, no preemption saves
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if self.requested:
      return True
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return False


_DATA_STATE_BYTES = 1 << 16


def gather_data_states(state: dict) -> dict:
  """Every process's data-iterator state, keyed by process index (as a string).

  Iterators that read process-local shards (TFDS) have a different position on every
  process; the checkpoint keeps them all. On one process this is ``{"0": state}``.
  """
  if jax.process_count() == 1:
    return {"0": state}
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  encoded = json.dumps(state).encode()
  if len(encoded) > _DATA_STATE_BYTES:
    raise ValueError(f"data iterator state is {len(encoded)} bytes; at most "
                     f"{_DATA_STATE_BYTES} can be gathered.")
  buffer = np.zeros((_DATA_STATE_BYTES + 4,), np.uint8)
  buffer[:4] = np.frombuffer(np.uint32(len(encoded)).tobytes(), np.uint8)
  buffer[4:4 + len(encoded)] = np.frombuffer(encoded, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buffer))
  states = {}
  for index, row in enumerate(gathered):
    size = int(np.frombuffer(row[:4].tobytes(), np.uint32)[0])
    states[str(index)] = json.loads(row[4:4 + size].tobytes().decode())
  return states


def own_data_state(states: dict) -> dict:
  """This process's state from :func:`gather_data_states`' output."""
  key = str(jax.process_index())
  if key not in states:
    raise ckpt_lib.IncompatibleCheckpointError(
        f"the checkpoint holds data states of processes {sorted(states)}, not of process "
        f"{key}: resume with the same number of processes ({len(states)}).")
  return states[key]


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
              dynamic_ncols=True, mininterval=1.0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and checkpoints one run in ``workdir``; resumes if it has one.

  Returns:
    The final eval figures (``losses.evaluate`` keys, token-weighted over the eval set),
    plus ``step``, ``train_tokens`` and ``stopped`` ("completed" or "preempted").

  Raises:
    ValueError: for a bad config, before anything is written.
    IncompatibleCheckpointError: resuming with a different model shape or vocabulary.
    NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)
  data = make_run_data(config, workdir)
  model_cfg = make_model_config(config, data.info.vocab_size)
  is_main = jax.process_index() == 0

  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  programs = make_programs(config, model_cfg, mesh, rules)
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    ckpt_lib.save_config(workdir, config)
  meta = run_meta(config, model_cfg)

  with sharding.mesh_context(mesh, rules):
    abstract_state = programs.abstract_state(jax.random.key(config.seed))

    checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    writer = metrics_writer.MetricsWriter(workdir, enabled=is_main)
    latest = checkpointer.latest_step()
    train_tokens = 0
    if latest is not None:
      ckpt_lib.check_compatible(checkpointer.restore_meta(latest), meta,
                                what=f"the checkpoint of step {latest} in {workdir}")
      state, data_state, saved_meta = checkpointer.restore(latest, abstract_state)
      data.train.set_state(own_data_state(data_state))
      train_tokens = int(saved_meta.get("train_tokens", 0))
      writer.truncate_after(latest)
      logging.info("Resumed from step %d.", latest)
    else:
      state = programs.init(jax.random.key(config.seed))
      if config.init_from:
        source_params, source_meta = ckpt_lib.restore_params_for_init(config.init_from)
        if source_meta.get("model", {}).get("vocab_size") != model_cfg.vocab_size:
          raise ckpt_lib.IncompatibleCheckpointError(
              f"init_from={config.init_from!r} has vocab_size "
              f"{source_meta.get('model', {}).get('vocab_size')}, this model "
              f"{model_cfg.vocab_size}.")
        params, copied, kept = merge_init_params(state.params, source_params)
        state = state.replace(params=params, opt_state=jax.jit(
            programs.tx.init, out_shardings=programs.shardings.opt_state)(params))
        logging.info("init_from %s: copied %d parameters; fresh: %s", config.init_from,
                     len(copied), kept)

    eval_batches = [sharding.global_batch({k: b[k] for k in BATCH_KEYS}, mesh)
                    for b in data.eval_batches]

    def evaluate_now(step: int) -> dict:
      if not eval_batches:
        return {}
      figures = combine_eval([_host(programs.eval_step(state.params, b))
                              for b in eval_batches])
      row = {f"eval/{k}": v for k, v in figures.items() if k != "tokens"}
      row["eval/accuracy"] = figures["threshold_accuracy"]
      row["train_tokens"] = train_tokens
      writer.write(step, row)
      return figures

    def save(step: int) -> None:
      checkpointer.save(step, state, gather_data_states(data.train.get_state()),
                        dict(meta, train_tokens=train_tokens, step=step))

    start = int(state.step)
    step = start
    stopped = "completed"
    tokens_per_step = config.data.batch_size * config.data.seq_len
    last_good = latest
    final = {}
    bar = _progress(config.num_train_steps, start, config.progress_bar and is_main)
    t_last, steps_since = time.perf_counter(), 0
    try:
      with _Preemption() as preemption:
        while step < config.num_train_steps:
          local = next(data.train)
          batch = sharding.global_batch({k: local[k] for k in BATCH_KEYS}, mesh)
          state, metrics = programs.train_step(state, batch)
          step += 1
          steps_since += 1
          loss = float(metrics["loss"])
          if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss} at step {step}; stopped. The last good "
                f"checkpoint is {'step ' + str(last_good) if last_good is not None else 'none'}"
                f" in {ckpt_lib.checkpoint_dir(workdir)}. Lower optimizer.learning_rate or "
                "check the data.")
          train_tokens += int(round(float(metrics["weight_sum"])))  # global target tokens
          if step % config.log_every_steps == 0 or step == config.num_train_steps:
            now = time.perf_counter()
            rate = steps_since * tokens_per_step / max(now - t_last, 1e-9)
            t_last, steps_since = now, 0
            host = _host(metrics)
            row = {f"train/{k}": v for k, v in host.items()
                   if np.ndim(v) == 0 or k in ("halt_probs", "accuracy_per_step")}
            row.update({"train_tokens": train_tokens, "train/tokens_per_sec": rate})
            writer.write(step, row)
            bar.set_postfix(loss=f"{loss:.4f}", pauses=f"{float(host['expected_pauses']):.2f}",
                            tok_s=f"{rate:,.0f}", refresh=False)
          bar.update(1)
          if step % config.eval_every_steps == 0 or step == config.num_train_steps:
            final = evaluate_now(step)
          if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
            save(step)
            last_good = step
          if preemption.should_stop(step):
            if last_good != step:
              save(step)
            stopped = "preempted"
            break
    finally:
      bar.close()
      checkpointer.close()
      writer.close()

    if stopped == "completed" and not final:
      final = evaluate_now(step)
    if stopped == "completed" and config.write_report and data.eval_batches:
      params = state.params
      if jax.process_count() > 1:  # every process takes part; process 0 then writes alone
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        params = multihost_utils.process_allgather(params)
      if is_main:
        from cyb_jax import report  # pylint: disable=g-import-not-at-top
        report.write_report(workdir, model_cfg=model_cfg, params=params,
                            eval_batches=data.eval_batches, info=data.info,
                            loss_name=config.loss.name, tau=config.eval.tau,
                            fixed_step=fixed_step_of(config.loss.name),
                            vocab_chunk=config.loss.vocab_chunk or None)
  return dict(final, step=step, train_tokens=train_tokens, stopped=stopped)

