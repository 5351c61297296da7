"""Where does a model pause, and does pausing pay? Per-position pause statistics of an eval set.

Device side (pure, jitted). :func:`position_stats` runs the model on one batch and records, for
every position ``n`` (DESIGN section 2: slots ``(n, k)``, ``k = 0..K``, all predicting
``x_{n+1}``), what the evaluation protocols of DESIGN section 5 did there:

    k*        threshold(tau): the first k with d_k <= tau (K if none); a fixed-step model
              (``ce``: 0, ``pause_ce``: K) always reads its fixed step
    E[pauses] sum_{k=1..K} s_k under the model's own halting (the fixed step for fixed models)
    -log c_{k*}, [argmax c_{k*} == y]     the answer the threshold protocol gives
    -log c_0,    [argmax c_0 == y]        the answer without any pause

so the accuracy gain from pausing at a position is ``correct(k*) - correct(0)``.
:func:`stats_from_step_log_probs` is the same computation from precomputed
:class:`cyb_jax.losses.StepLogProbs`; both equal ``losses.threshold_halting`` /
``losses.expected_pauses`` / ``losses.evaluate`` on the same logits.

Host side (NumPy). :func:`eval_set_stats` stacks the statistics of a whole eval set;
:func:`summarize` reduces them to the protocol figures; :mod:`cyb_jax.pause_groups` groups them
by difficulty and by token. Means are weighted by the batch ``weights``; positions with weight
0 count nowhere.

Shape suffixes: ``B`` rows, ``N`` positions, ``S`` = K+1 steps, ``M`` flattened positions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax.model import ModelConfig

_F32 = jnp.float32


class PositionStats(NamedTuple):
  """What the evaluation protocols did at each position; leading shape ``[...]`` (``[B, N]``).

  Positions with weight 0 hold zeros (``False``), never NaN.

  Attributes:
    pauses: int32, ``k*``: pauses taken by threshold(tau) halting (or the fixed step).
    expected_pauses: float32, ``E[pauses] = sum_{k>=1} s_k`` (the fixed step for fixed models).
    nll: float32, ``-log c_{k*}``.
    correct: bool, ``argmax c_{k*} == y``.
    nll_step0: float32, ``-log c_0``.
    correct_step0: bool, ``argmax c_0 == y``.
    nll_mix: float32, ``-logsumexp_k(log pi_k + log c_k)`` (``-log c_{k*}`` for fixed models).
    halt_probs: float32 ``[..., S]``, ``pi_k`` (one-hot at the fixed step for fixed models).
    nll_per_step: float32 ``[..., S]``, ``-log c_k``.
    correct_per_step: bool ``[..., S]``, ``argmax c_k == y``.
    weights: float32, the batch weights.
  """

  pauses: Any
  expected_pauses: Any
  nll: Any
  correct: Any
  nll_step0: Any
  correct_step0: Any
  nll_mix: Any
  halt_probs: Any
  nll_per_step: Any
  correct_per_step: Any
  weights: Any

  @property
  def num_steps(self) -> int:
    """``K + 1``."""
    return self.halt_probs.shape[-1]


def check_protocol(tau: float, fixed_step: int | None, num_steps: int) -> None:
  """Raises ``ValueError`` for a concrete ``tau`` outside ``[0, 1]`` or a ``fixed_step`` outside
  ``[-(K+1), K]`` (``num_steps = K + 1``); traced values pass."""
  _check_tau(tau)
  _check_fixed_step(fixed_step, num_steps)


def _check_tau(tau: float) -> None:
  if isinstance(tau, (int, float, np.floating, np.integer)) and not 0.0 <= float(tau) <= 1.0:
    raise ValueError(f"tau={tau!r} is a probability threshold on <don't know> and must lie in [0, 1].")


def _check_fixed_step(fixed_step: int | None, num_steps: int) -> None:
  if fixed_step is None:
    return
  if isinstance(fixed_step, bool) or not isinstance(fixed_step, (int, np.integer)) or not (
      -num_steps <= fixed_step < num_steps):
    raise ValueError(
        f"fixed_step={fixed_step!r} must be None (the model halts itself) or an int step in "
        f"[-{num_steps}, {num_steps - 1}] (K = {num_steps - 1}; 0 for ce, -1 for pause_ce).")


def stats_from_step_log_probs(steps: losses.StepLogProbs, weights: jax.typing.ArrayLike,
                              tau: jax.typing.ArrayLike,
                              fixed_step: int | None = None) -> PositionStats:
  """Per-position protocol outcomes from per-step statistics (pure, jittable).

  Args:
    steps: :class:`~cyb_jax.losses.StepLogProbs` with fields ``[..., K+1]``.
    weights: ``[...]`` position weights; where 0 every output is 0 / ``False``.
    tau: threshold on ``d_k`` in ``[0, 1]`` (read only when ``fixed_step`` is None).
    fixed_step: None for a model that halts itself, else the step it always reads
      (``0`` for ``ce``, ``-1`` = K for ``pause_ce``), as in :func:`losses.evaluate`.

  Returns:
    :class:`PositionStats` with ``[...]`` fields (``[..., K+1]`` for the per-step ones).
  """
  num_steps = steps.num_steps
  _check_tau(tau)
  _check_fixed_step(fixed_step, num_steps)
  w = jnp.asarray(weights, _F32)
  if w.shape != steps.log_dk.shape[:-1]:
    raise ValueError(f"weights shape {w.shape} must equal the positions' shape {steps.log_dk.shape[:-1]}.")
  keep = w != 0
  if fixed_step is None:
    halt = losses.threshold_halting(steps, tau)
    expected = losses.expected_pauses(steps)
    halt_probs_S = jnp.exp(losses.log_halting(steps))
    mix = losses.nll_mix(steps)
  else:
    halt = losses.fixed_halting(steps, fixed_step)
    expected = jnp.full(w.shape, fixed_step % num_steps, _F32)
    halt_probs_S = jax.nn.one_hot(halt.step, num_steps, dtype=_F32)
    mix = halt.nll

  def masked(x):
    k = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
    return jnp.where(k, x, jnp.zeros((), x.dtype))

  return PositionStats(
      pauses=masked(halt.step),
      expected_pauses=masked(expected),
      nll=masked(halt.nll),
      correct=masked(halt.correct),
      nll_step0=masked(-steps.log_target[..., 0]),
      correct_step0=masked(steps.correct[..., 0]),
      nll_mix=masked(mix),
      halt_probs=masked(halt_probs_S),
      nll_per_step=masked(-steps.log_target),
      correct_per_step=masked(steps.correct),
      weights=w,
  )


@functools.partial(jax.jit, static_argnames=("model_cfg", "fixed_step", "vocab_chunk"))
def _position_stats(model_cfg: ModelConfig, params, inputs_BxN, targets_BxN, weights_BxN,
                    segment_ids_BxN, positions_BxN, tau, *, fixed_step, vocab_chunk):
  if vocab_chunk is None:
    logits_BxNxSxV1 = model_lib.step_logits(model_cfg, params, inputs_BxN, segment_ids=segment_ids_BxN,
                                            positions=positions_BxN)
    steps = losses.step_log_probs(logits_BxNxSxV1, targets_BxN)
  else:
    hidden_BxNxSxD = model_lib.step_hidden(model_cfg, params, inputs_BxN, segment_ids=segment_ids_BxN,
                                           positions=positions_BxN)
    output_kernel_DxV, dk_kernel_D, dk_bias = model_lib.output_projection(model_cfg, params)
    steps = losses.chunked_step_log_probs(hidden_BxNxSxD, output_kernel_DxV, dk_kernel_D, targets_BxN,
                                          vocab_chunk=vocab_chunk, dk_bias=dk_bias)
  return stats_from_step_log_probs(steps, weights_BxN, tau, fixed_step)


def position_stats(model_cfg: ModelConfig, params, batch: Mapping[str, Any], tau: float,
                   fixed_step: int | None = None, *, vocab_chunk: int | None = None) -> PositionStats:
  """Runs the model on one batch and returns its per-position pause statistics (jitted).

  Args:
    model_cfg: the model's config.
    params: its parameters.
    batch: ``inputs``, ``targets`` (int ``[B, N]``), ``weights`` (``[B, N]``) and optionally
      ``segment_ids`` and ``positions`` (int ``[B, N]``; default one segment per row).
    tau: threshold on ``d_k`` in ``[0, 1]``.
    fixed_step: None, or the step a fixed-step model reads (0 for ``ce``, -1 for ``pause_ce``).
    vocab_chunk: None computes the full logits ``[B, N, K+1, V+1]``; an int computes the
      same statistics from hidden states in vocabulary chunks of that width
      (:func:`losses.chunked_step_log_probs`), for large vocabularies.

  Returns:
    :class:`PositionStats` of ``[B, N]`` device arrays (see :func:`stats_from_step_log_probs`).
  """
  missing = [k for k in ("inputs", "targets", "weights") if k not in batch]
  if missing:
    raise ValueError(f"batch lacks {missing}; it has {sorted(batch)} and needs inputs, targets, weights.")
  inputs = jnp.asarray(batch["inputs"])
  if inputs.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
    raise ValueError(f"batch['inputs'] must be an integer array [B, N], got {inputs.dtype} {inputs.shape}.")
  shape = inputs.shape
  arrays = {}
  for key in ("targets", "weights", "segment_ids", "positions"):
    if key in batch:
      arrays[key] = jnp.asarray(batch[key])
      if arrays[key].shape != shape:
        raise ValueError(f"batch[{key!r}] has shape {arrays[key].shape}; inputs have {shape}.")
  segment_ids = arrays.get("segment_ids", jnp.ones(shape, jnp.int32)).astype(jnp.int32)
  positions = arrays.get("positions", jnp.broadcast_to(jnp.arange(shape[1]), shape)).astype(jnp.int32)
  _check_tau(tau)
  _check_fixed_step(fixed_step, model_cfg.num_steps)
  if vocab_chunk is not None and (isinstance(vocab_chunk, bool) or not isinstance(vocab_chunk, int)
                                  or vocab_chunk < 1):
    raise ValueError(f"vocab_chunk={vocab_chunk!r} must be None or a positive int.")
  return _position_stats(model_cfg, params, inputs.astype(jnp.int32), arrays["targets"].astype(jnp.int32),
                         arrays["weights"].astype(_F32), segment_ids, positions, jnp.asarray(tau, _F32),
                         fixed_step=fixed_step, vocab_chunk=vocab_chunk)


@dataclasses.dataclass(frozen=True)
class EvalSetStats:
  """Per-position statistics of a whole eval set, on the host; rows of all batches stacked.

  Attributes:
    stats: :class:`PositionStats` of NumPy arrays ``[R, N]`` (``[R, N, K+1]``).
    inputs: int32 ``[R, N]``, the token read at each position.
    targets: int32 ``[R, N]``, the token predicted there.
    difficulty: int32 ``[R, N]`` level of the target (synthetic data; -1 at weight 0), or None.
  """

  stats: PositionStats
  inputs: np.ndarray
  targets: np.ndarray
  difficulty: np.ndarray | None


def eval_set_stats(model_cfg: ModelConfig, params, eval_batches: Sequence[Mapping[str, Any]], tau: float,
                   fixed_step: int | None = None, *, vocab_chunk: int | None = None) -> EvalSetStats:
  """:func:`position_stats` over every batch of an eval set, stacked on the host.

  All batches should share one shape (one compilation). ``difficulty`` is kept only if every
  batch has it.

  Raises:
    ValueError: if ``eval_batches`` is empty.
  """
  if not eval_batches:
    raise ValueError("eval_batches is empty: there are no positions to analyse (data.eval_batches = 0?).")
  parts = [jax.device_get(position_stats(model_cfg, params, b, tau, fixed_step, vocab_chunk=vocab_chunk))
           for b in eval_batches]
  stats = PositionStats(*(np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(len(parts[0]))))
  column = lambda key: np.concatenate([np.asarray(b[key], np.int32) for b in eval_batches])
  has_difficulty = all("difficulty" in b for b in eval_batches)
  return EvalSetStats(stats=stats, inputs=column("inputs"), targets=column("targets"),
                      difficulty=column("difficulty") if has_difficulty else None)


# --------------------------------------------------------------------------------------------
# Host-side reductions.
# --------------------------------------------------------------------------------------------


def flat(stats: PositionStats) -> PositionStats:
  """Every field as NumPy with the positions flattened: ``[M]`` (``[M, S]`` per step)."""
  num_steps = np.asarray(stats.halt_probs).shape[-1]
  out = {}
  for name, value in stats._asdict().items():
    value = np.asarray(value)
    per_step = name in ("halt_probs", "nll_per_step", "correct_per_step")
    out[name] = value.reshape(-1, num_steps) if per_step else value.reshape(-1)
  return PositionStats(**out)


def _weighted_mean(x_M: np.ndarray, w_M: np.ndarray) -> Any:
  """``sum(w x) / sum(w)`` over the leading axis; NaN when all weights are 0."""
  x_M = np.asarray(x_M, np.float64)
  total = w_M.sum()
  if total <= 0:
    return np.full(x_M.shape[1:], np.nan) if x_M.ndim > 1 else math.nan
  w_b = w_M.reshape(w_M.shape + (1,) * (x_M.ndim - 1))
  return np.where(w_b != 0, w_b * x_M, 0.0).sum(axis=0) / total


def summarize(stats: PositionStats) -> dict[str, Any]:
  """The evaluation protocols of DESIGN section 5 over all positions (weighted means).

  Keys (floats, lists of K+1 floats for the per-step ones; NaN when every weight is 0):
    ``nll_mix``, ``expected_pauses``, ``compute_mix`` (= 1 + expected pauses): the model
    under its own halting; ``threshold_nll``, ``threshold_accuracy``, ``threshold_pauses``,
    ``compute_threshold``: threshold(tau) halting; ``step0_nll``, ``step0_accuracy``: never
    pausing; ``accuracy_gain`` = threshold accuracy - step-0 accuracy; ``halt_probs`` (mean
    ``pi_k``), ``threshold_step_probs`` (share of positions with ``k* = k``),
    ``accuracy_per_step``, ``nll_per_step``; ``weight_sum``, ``num_positions`` (weight > 0).
  These equal :func:`losses.evaluate` on the same statistics.
  """
  s = flat(stats)
  w = s.weights.astype(np.float64)
  num_steps = s.halt_probs.shape[-1]
  mean = lambda x: _weighted_mean(x, w)
  out = {
      "nll_mix": mean(s.nll_mix),
      "expected_pauses": mean(s.expected_pauses),
      "threshold_nll": mean(s.nll),
      "threshold_accuracy": mean(s.correct),
      "threshold_pauses": mean(s.pauses),
      "step0_nll": mean(s.nll_step0),
      "step0_accuracy": mean(s.correct_step0),
      "halt_probs": mean(s.halt_probs),
      "threshold_step_probs": mean(np.eye(num_steps)[s.pauses]),
      "accuracy_per_step": mean(s.correct_per_step),
      "nll_per_step": mean(s.nll_per_step),
  }
  out["compute_mix"] = 1.0 + out["expected_pauses"]
  out["compute_threshold"] = 1.0 + out["threshold_pauses"]
  out["accuracy_gain"] = out["threshold_accuracy"] - out["step0_accuracy"]
  out = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in out.items()}
  out["weight_sum"] = float(w.sum())
  out["num_positions"] = int((w > 0).sum())
  return out
