"""Evaluating a model on batches: the one path from parameters to the docs/design.md section 5 figures.

Per batch, :func:`step_stats` runs the model to per-step statistics ``[B, N, K+1]`` (the
train step uses it too), :func:`cyb_jax.losses.position_outcomes` records what the
evaluation protocols did at each position and :func:`cyb_jax.losses.protocol_sums` sums them;
sums add across batches and :func:`cyb_jax.losses.protocol_figures` divides once. Every
consumer goes through these:

* the trainer's periodic eval: :func:`eval_sums` (jitted with shardings by the trainer);
* the report, ``launch/analyze.py`` and the experiment: :func:`eval_set_stats` keeps the
  per-position outcomes of a whole eval set on the host (for grouping by difficulty or by
  token) and :func:`summarize` reduces them with the same sums.

``protocol`` arguments are a :class:`Protocol`: the threshold ``tau`` and the read-out step
of a fixed-halting loss (``LossSpec.readout_step``), built by :func:`protocol_of`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax.model import ModelConfig

Batch = Mapping[str, Any]


class Protocol(NamedTuple):
  """How a model is evaluated (docs/design.md section 5).

  Attributes:
    tau: threshold of ``threshold(tau)`` halting on ``d_k``, in ``[0, 1]``.
    fixed_step: None for a model that halts itself, else the step in ``[0, K]`` it always
      reads out (both protocols then read that step).
  """

  tau: float = 0.5
  fixed_step: int | None = None


def protocol_of(loss_name: str, num_steps: int, tau: float) -> Protocol:
  """The protocol of a model trained with ``loss_name`` and ``num_steps = K + 1`` steps."""
  losses.check_protocol(tau, None, num_steps)
  return Protocol(tau=tau, fixed_step=losses.get_spec(loss_name).readout_step(num_steps))


def step_stats(
  model_cfg: ModelConfig, params: Any, batch: Batch, *, vocab_chunk: int | None = None
) -> losses.StepLogProbs:
  """Per-step statistics ``[B, N, K+1]`` of a batch (pure).

  Args:
    model_cfg, params: the model.
    batch: int ``inputs``, ``targets``, ``segment_ids``, ``positions`` ``[B, N]``.
    vocab_chunk: None computes the vocabulary and DK logits ``[B, N, K+1, V(+1)]``; an int
      computes the same statistics from hidden states in vocabulary chunks of that width
      (:func:`cyb_jax.losses.chunked_step_log_probs`), never materialising the logits.
  """
  hidden_BxNxKxD = model_lib.step_hidden(
    model_cfg, params, batch["inputs"], segment_ids=batch["segment_ids"], positions=batch["positions"]
  )
  if vocab_chunk is not None:
    kernel_DxV, dk_D, dk_bias = model_lib.output_projection(model_cfg, params)
    return losses.chunked_step_log_probs(
      hidden_BxNxKxD,
      kernel_DxV,
      dk_D,
      batch["targets"],
      vocab_chunk=vocab_chunk,
      dk_bias=dk_bias,
      logit_softcap=model_cfg.final_logit_softcap,
    )
  vocab_BxNxKxV, dk_BxNxK = model_lib.split_logits_from_hidden(model_cfg, params, hidden_BxNxKxD)
  return losses.step_log_probs_from_parts(vocab_BxNxKxV, dk_BxNxK, batch["targets"])


def eval_sums(
  params: Any, batch: Batch, *, model_cfg: ModelConfig, protocol: Protocol, vocab_chunk: int | None = None
) -> dict[str, jax.Array]:
  """:func:`cyb_jax.losses.protocol_sums` of one batch (pure; the trainer jits it)."""
  stats = step_stats(model_cfg, params, batch, vocab_chunk=vocab_chunk)
  return losses.protocol_sums(losses.position_outcomes(stats, batch["weights"], protocol.tau, protocol.fixed_step))


def add_sums(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> dict[str, Any]:
  """Adds two :func:`eval_sums` results (``a = None`` starts a total)."""
  return dict(b) if a is None else jax.tree.map(lambda x, y: x + y, dict(a), dict(b))


def figures(sums: Mapping[str, Any]) -> dict[str, Any]:
  """:func:`cyb_jax.losses.protocol_figures` of summed :func:`eval_sums`, as Python floats
  (lists for the per-step figures)."""
  means = jax.device_get(losses.protocol_figures(dict(sums)))
  out = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in means.items()}
  out["num_positions"] = int(out["num_positions"])
  return out


@functools.partial(jax.jit, static_argnames=("model_cfg", "fixed_step", "vocab_chunk"))
def _position_stats(model_cfg: ModelConfig, params, batch, tau, *, fixed_step, vocab_chunk):
  stats = step_stats(model_cfg, params, batch, vocab_chunk=vocab_chunk)
  return losses.position_outcomes(stats, batch["weights"], tau, fixed_step)


def position_stats(
  model_cfg: ModelConfig, params: Any, batch: Batch, protocol: Protocol, *, vocab_chunk: int | None = None
) -> losses.PositionStats:
  """Runs the model on one batch and returns what the protocols did at each position (jitted).

  Args:
    model_cfg, params: the model.
    batch: ``inputs``, ``targets`` (int ``[B, N]``), ``weights`` (``[B, N]``) and optionally
      ``segment_ids`` and ``positions`` (int ``[B, N]``; default one segment per row).
    protocol: the :class:`Protocol`.
    vocab_chunk: as in :func:`step_stats`.

  Returns:
    :class:`cyb_jax.losses.PositionStats` of ``[B, N]`` device arrays.
  """
  missing = [k for k in ("inputs", "targets", "weights") if k not in batch]
  if missing:
    raise ValueError(f"batch lacks {missing}; it has {sorted(batch)} and needs inputs, targets, weights.")
  inputs = jnp.asarray(batch["inputs"])
  if inputs.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
    raise ValueError(f"batch['inputs'] must be an integer array [B, N], got {inputs.dtype} {inputs.shape}.")
  shape = inputs.shape
  arrays = {"inputs": inputs.astype(jnp.int32)}
  for key in ("targets", "weights", "segment_ids", "positions"):
    if key in batch:
      arrays[key] = jnp.asarray(batch[key])
      if arrays[key].shape != shape:
        raise ValueError(f"batch[{key!r}] has shape {arrays[key].shape}; inputs have {shape}.")
  arrays.setdefault("segment_ids", jnp.ones(shape, jnp.int32))
  arrays.setdefault("positions", jnp.broadcast_to(jnp.arange(shape[1]), shape))
  for key in ("targets", "segment_ids", "positions"):
    arrays[key] = arrays[key].astype(jnp.int32)
  arrays["weights"] = arrays["weights"].astype(jnp.float32)
  losses.check_protocol(protocol.tau, protocol.fixed_step, model_cfg.num_steps)
  if vocab_chunk is not None and (isinstance(vocab_chunk, bool) or not isinstance(vocab_chunk, int) or vocab_chunk < 1):
    raise ValueError(f"vocab_chunk={vocab_chunk!r} must be None or a positive int.")
  return _position_stats(
    model_cfg,
    params,
    arrays,
    jnp.asarray(protocol.tau, jnp.float32),
    fixed_step=protocol.fixed_step,
    vocab_chunk=vocab_chunk,
  )


@dataclasses.dataclass(frozen=True)
class EvalSetStats:
  """Per-position outcomes of a whole eval set, on the host; rows of all batches stacked.

  Attributes:
    stats: :class:`cyb_jax.losses.PositionStats` of NumPy arrays ``[R, N]`` (``[R, N, K+1]``).
    inputs: int32 ``[R, N]``, the token read at each position.
    targets: int32 ``[R, N]``, the token predicted there.
    difficulty: int32 ``[R, N]`` level of the target (synthetic data; -1 at weight 0), or None.
  """

  stats: losses.PositionStats
  inputs: np.ndarray
  targets: np.ndarray
  difficulty: np.ndarray | None


def eval_set_stats(
  model_cfg: ModelConfig,
  params: Any,
  eval_batches: Sequence[Batch],
  protocol: Protocol,
  *,
  vocab_chunk: int | None = None,
) -> EvalSetStats:
  """:func:`position_stats` over every batch of an eval set, stacked on the host.

  All batches should share one shape (one compilation). ``difficulty`` is kept only if every
  batch has it.

  Raises:
    ValueError: if ``eval_batches`` is empty.
  """
  if not eval_batches:
    raise ValueError("eval_batches is empty: there are no positions to analyse (data.eval_batches = 0?).")
  parts = [
    jax.device_get(position_stats(model_cfg, params, b, protocol, vocab_chunk=vocab_chunk)) for b in eval_batches
  ]
  stats = losses.PositionStats(*(np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(len(parts[0]))))
  column = lambda key: np.concatenate([np.asarray(b[key], np.int32) for b in eval_batches])
  has_difficulty = all("difficulty" in b for b in eval_batches)
  return EvalSetStats(
    stats=stats,
    inputs=column("inputs"),
    targets=column("targets"),
    difficulty=column("difficulty") if has_difficulty else None,
  )


def summarize(stats: losses.PositionStats) -> dict[str, Any]:
  """The docs/design.md section 5 figures over all positions of ``stats`` (host or device arrays).

  The same reduction as the trainer's eval (:func:`cyb_jax.losses.protocol_sums`, then
  :func:`cyb_jax.losses.protocol_figures`): ``nll_mix``, ``expected_pauses``,
  ``compute_mix``; ``threshold_nll``, ``threshold_accuracy``, ``threshold_pauses``,
  ``compute_threshold``; ``step0_nll``, ``step0_accuracy``, ``accuracy_gain``; the per-step
  lists ``halt_probs``, ``threshold_step_probs``, ``accuracy_per_step``, ``nll_per_step``;
  ``weight_sum`` and ``num_positions``. Means are 0 when no position carries weight.
  """
  return figures(losses.protocol_sums(stats))
