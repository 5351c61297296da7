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
:func:`summarize` reduces them to the protocol figures; :func:`by_difficulty` groups positions
by the difficulty label of the synthetic task, :func:`by_token` by the token just read ("pause
after X") and by the token being predicted. Means are weighted by the batch ``weights``;
positions with weight 0 count nowhere.

Shape suffixes: ``B`` rows, ``N`` positions, ``S`` = K+1 steps, ``M`` flattened positions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
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


def _flat(stats: PositionStats) -> PositionStats:
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
  s = _flat(stats)
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


def average_ranks(x: Sequence[float]) -> np.ndarray:
  """1-based ranks of ``x``; tied values share the mean of the ranks they span.

  ``average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]``.
  """
  x = np.asarray(x, np.float64).reshape(-1)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  # Group boundaries of equal values in sorted order; a group spanning 0-based sorted
  # indices [a, b) gets rank (a + 1 + b) / 2.
  new_group = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
  group_id = np.cumsum(new_group) - 1
  starts = np.flatnonzero(new_group)
  ends = np.concatenate([starts[1:], [x.size]])
  ranks = np.empty(x.size)
  ranks[order] = ((starts + 1 + ends) / 2.0)[group_id]
  return ranks


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rank correlation with ties: the Pearson correlation of average ranks.

  Returns NaN with fewer than 2 pairs or when either side is constant (undefined), as
  ``scipy.stats.spearmanr`` does.
  """
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  if x.shape != y.shape:
    raise ValueError(f"rank_correlation needs paired samples, got {x.size} and {y.size} values.")
  if x.size < 2:
    return math.nan
  rx = average_ranks(x) - (x.size + 1) / 2.0
  ry = average_ranks(y) - (y.size + 1) / 2.0
  denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
  return float(rx @ ry) / denom if denom > 0 else math.nan


@dataclasses.dataclass(frozen=True)
class GroupStats:
  """Pause statistics of the positions sharing one key (a difficulty level or a token id).

  Attributes:
    key: the level or token id.
    name: its printable name (level name or token piece).
    count: positions with weight > 0.
    weight: their weight sum (the denominator of every mean below).
    mean_pauses: mean threshold pauses ``k*``.
    pause_rate: share of positions with ``k* > 0``.
    std_pauses: population standard deviation of ``k*`` (how variable the pausing is).
    mean_expected_pauses: mean ``E[pauses]`` under the model's own halting.
    accuracy_step0: accuracy without pausing (``argmax c_0``).
    accuracy: accuracy at ``k*``.
    gain: ``accuracy - accuracy_step0``, the accuracy gained by pausing.
    nll_step0, nll: mean ``-log c_0`` and ``-log c_{k*}``.
  """

  key: int
  name: str
  count: int
  weight: float
  mean_pauses: float
  pause_rate: float
  std_pauses: float
  mean_expected_pauses: float
  accuracy_step0: float
  accuracy: float
  gain: float
  nll_step0: float
  nll: float


def _group(keys_M: np.ndarray, s: PositionStats, num_keys: int,
           name: Callable[[int], str]) -> list[GroupStats]:
  """One GroupStats per key in ``0..num_keys-1`` over flat stats; keys < 0 are dropped."""
  w = s.weights.astype(np.float64)
  use = (keys_M >= 0) & (w != 0)
  keys, w = keys_M[use], w[use]
  total = lambda x: np.bincount(keys, weights=w * np.asarray(x, np.float64)[use], minlength=num_keys)
  count = np.bincount(keys, minlength=num_keys)
  weight = np.bincount(keys, weights=w, minlength=num_keys)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = lambda x: np.where(weight > 0, total(x) / weight, np.nan)
    pauses = s.pauses.astype(np.float64)
    mean_pauses = mean(pauses)
    std = np.sqrt(np.maximum(mean(pauses**2) - mean_pauses**2, 0.0))
    acc0, acc = mean(s.correct_step0), mean(s.correct)
    columns = dict(mean_pauses=mean_pauses, pause_rate=mean(pauses > 0), std_pauses=std,
                   mean_expected_pauses=mean(s.expected_pauses), accuracy_step0=acc0, accuracy=acc,
                   gain=acc - acc0, nll_step0=mean(s.nll_step0), nll=mean(s.nll))
  return [GroupStats(key=i, name=name(i), count=int(count[i]), weight=float(weight[i]),
                     **{k: float(v[i]) for k, v in columns.items()}) for i in range(num_keys)]


@dataclasses.dataclass(frozen=True)
class DifficultyStats:
  """Pause statistics per difficulty level (the synthetic task's labels).

  Attributes:
    levels: one :class:`GroupStats` per level ``0..L-1`` (count 0 and NaN means if absent).
    spearman_levels: rank correlation between the level and its mean threshold pauses
      ``k*``, over the levels present (does the model pause more on harder levels?).
    spearman_levels_expected: the same for the mean ``E[pauses]`` (informative also when
      ``k*`` is the same everywhere).
    spearman_positions: rank correlation between level and ``k*`` over single positions
      (weight > 0, unweighted; heavily tied, so average ranks).
  """

  levels: tuple[GroupStats, ...]
  spearman_levels: float
  spearman_levels_expected: float
  spearman_positions: float


def by_difficulty(stats: PositionStats, difficulty: np.ndarray,
                  names: Sequence[str] | None = None) -> DifficultyStats:
  """Groups positions by the difficulty level of their target.

  Args:
    stats: :class:`PositionStats` (NumPy or device arrays) of any leading shape ``[...]``.
    difficulty: int ``[...]`` level per position, ``>= 0``; ``-1`` (or weight 0) is ignored.
    names: level names (index = level); by default ``"level i"`` for ``0..max level``.

  Returns:
    :class:`DifficultyStats`.
  """
  s = _flat(stats)
  level_M = np.asarray(difficulty).reshape(-1).astype(np.int64)
  if level_M.size != s.weights.size:
    raise ValueError(f"difficulty has {level_M.size} entries (shape {np.shape(difficulty)}) but there are "
                     f"{s.weights.size} positions.")
  scored = (level_M >= 0) & (s.weights != 0)
  top_level = int(level_M[scored].max()) if scored.any() else -1
  if names is None:
    names = tuple(f"level {i}" for i in range(top_level + 1))
  elif top_level >= len(names):
    raise ValueError(f"difficulty level {top_level} has no name; names are {tuple(names)} "
                     f"(levels 0..{len(names) - 1}).")
  levels = _group(level_M, s, len(names), lambda i: str(names[i]))
  present = [g for g in levels if g.count > 0]
  return DifficultyStats(
      levels=tuple(levels),
      spearman_levels=rank_correlation([g.key for g in present], [g.mean_pauses for g in present]),
      spearman_levels_expected=rank_correlation([g.key for g in present],
                                                [g.mean_expected_pauses for g in present]),
      spearman_positions=rank_correlation(level_M[scored], s.pauses[scored]))


@dataclasses.dataclass(frozen=True)
class TokenStats:
  """Pause statistics per token id, keyed by the token read and by the token predicted.

  Attributes:
    after: per input id ("pause after X"), ids with count > 0, ascending.
    before: per target id ("pause before predicting Y"), ids with count > 0, ascending.
    most_after, least_after: the ``top`` input ids with count >= ``min_count`` by mean
      threshold pauses, descending / ascending; ties are broken by mean ``E[pauses]`` (same
      direction), then more positions first, then the smaller id.
    most_before, least_before: the same for target ids.
    ambiguous_after: the ``top`` input ids with count >= ``min_count`` after which the next
      token is hardest to predict without pausing (highest mean ``-log c_0``: an ambiguous
      context), descending; their ``std_pauses`` says whether the model pauses after them
      in some contexts and not in others.
    spearman_ambiguity: rank correlation, over input ids with count >= ``min_count``,
      between that step-0 NLL and the mean pauses ``k*`` (NaN if either is constant).
    min_count, top: the selection settings.
  """

  after: tuple[GroupStats, ...]
  before: tuple[GroupStats, ...]
  most_after: tuple[GroupStats, ...]
  least_after: tuple[GroupStats, ...]
  most_before: tuple[GroupStats, ...]
  least_before: tuple[GroupStats, ...]
  ambiguous_after: tuple[GroupStats, ...]
  spearman_ambiguity: float
  min_count: int
  top: int


def _frequent(groups: Sequence[GroupStats], min_count: int) -> list[GroupStats]:
  return [g for g in groups if g.count >= min_count]


def _ranked(groups: Sequence[GroupStats], *, min_count: int, top: int, most: bool) -> tuple[GroupStats, ...]:
  frequent = _frequent(groups, min_count)
  sign = -1.0 if most else 1.0
  return tuple(sorted(frequent, key=lambda g: (sign * g.mean_pauses, sign * g.mean_expected_pauses,
                                               -g.count, g.key))[:top])


def by_token(stats: PositionStats, inputs: np.ndarray, targets: np.ndarray, *,
             piece: Callable[[int], str] | None = None, min_count: int = 20, top: int = 20) -> TokenStats:
  """Groups positions by the token read there and by the token predicted there.

  Args:
    stats: :class:`PositionStats` of any leading shape ``[...]``.
    inputs: int ``[...]``, the token read at each position (its pauses come "after" it).
    targets: int ``[...]``, the token predicted at each position.
    piece: id -> printable name (e.g. ``DataInfo.piece``); default ``str(id)``.
    min_count: least number of positions for a token to enter the most/least lists.
    top: length of those lists.

  Returns:
    :class:`TokenStats`.
  """
  if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
    raise ValueError(f"min_count={min_count!r} must be an int >= 1.")
  if isinstance(top, bool) or not isinstance(top, int) or top < 0:
    raise ValueError(f"top={top!r} must be an int >= 0.")
  s = _flat(stats)
  ids = {}
  for label, value in (("inputs", inputs), ("targets", targets)):
    value = np.asarray(value).reshape(-1).astype(np.int64)
    if value.size != s.weights.size:
      raise ValueError(f"{label} has {value.size} entries (shape {np.shape(value)}) but there are "
                       f"{s.weights.size} positions.")
    if (value[s.weights != 0] < 0).any():
      raise ValueError(f"{label} holds negative token ids at scored positions: {np.unique(value[value < 0])}.")
    ids[label] = value
  name = piece or str
  num_keys = int(max(ids["inputs"].max(initial=-1), ids["targets"].max(initial=-1))) + 1
  groups = {label: [g for g in _group(np.where(s.weights != 0, v, -1), s, num_keys, lambda i: "")
                    if g.count > 0] for label, v in ids.items()}
  groups = {label: tuple(dataclasses.replace(g, name=name(g.key)) for g in gs) for label, gs in groups.items()}
  rank = functools.partial(_ranked, min_count=min_count, top=top)
  frequent = _frequent(groups["inputs"], min_count)
  ambiguous = sorted(frequent, key=lambda g: (-g.nll_step0, g.key))[:top]
  spearman = rank_correlation([g.nll_step0 for g in frequent], [g.mean_pauses for g in frequent])
  return TokenStats(
      after=groups["inputs"], before=groups["targets"],
      most_after=rank(groups["inputs"], most=True), least_after=rank(groups["inputs"], most=False),
      most_before=rank(groups["targets"], most=True), least_before=rank(groups["targets"], most=False),
      ambiguous_after=tuple(ambiguous), spearman_ambiguity=spearman, min_count=min_count, top=top)
