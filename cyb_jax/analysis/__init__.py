"""Where the pauses go: per-position statistics grouped by difficulty level and by token.

:func:`by_difficulty` groups the positions of :class:`cyb_jax.losses.PositionStats` (from
:func:`cyb_jax.analysis.evaluation.eval_set_stats`) by the
difficulty label of the synthetic task, :func:`by_token` by the token just read ("pause after
X") and by the token being predicted; :func:`rank_correlation` (Spearman with ties) says whether
pauses rise with difficulty. Means are weighted by the batch ``weights``; positions with weight
0 count nowhere. Host side (NumPy).

The package `cyb_jax.analysis` evaluates trained parameters and says where they pause:
`evaluation` (the one evaluation path: parameters -> protocol figures), this module (pause
statistics by difficulty and token), `words` and `word_report` (by word and tag), `tables`,
`plots` and `report` (report.md). It imports `model`, `losses`, `data` and the foundations,
never `training` or `experiment`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from collections.abc import Sequence

import numpy as np

import cyb_jax
from cyb_jax.losses import PositionStats

_PER_STEP_FIELDS = ("halt_probs", "nll_per_step", "correct_per_step")


def flat(stats: PositionStats) -> PositionStats:
  """Every field as NumPy with the positions flattened: ``[M]`` (``[M, S]`` per step)."""
  num_steps = np.asarray(stats.halt_probs).shape[-1]
  out = {}
  for name, value in stats._asdict().items():
    value = np.asarray(value)
    out[name] = value.reshape(-1, num_steps) if name in _PER_STEP_FIELDS else value.reshape(-1)
  return PositionStats(**out)


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


def group_positions(
  keys_M: np.ndarray, s: PositionStats, num_keys: int, name: Callable[[int], str]
) -> list[GroupStats]:
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
    columns = dict(
      mean_pauses=mean_pauses,
      pause_rate=mean(pauses > 0),
      std_pauses=std,
      mean_expected_pauses=mean(s.expected_pauses),
      accuracy_step0=acc0,
      accuracy=acc,
      gain=acc - acc0,
      nll_step0=mean(s.nll_step0),
      nll=mean(s.nll),
    )
  return [
    GroupStats(
      key=i, name=name(i), count=int(count[i]), weight=float(weight[i]), **{k: float(v[i]) for k, v in columns.items()}
    )
    for i in range(num_keys)
  ]


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


def by_difficulty(stats: PositionStats, difficulty: np.ndarray, names: Sequence[str] | None = None) -> DifficultyStats:
  """Groups positions by the difficulty level of their target.

  Args:
    stats: :class:`PositionStats` (NumPy or device arrays) of any leading shape ``[...]``.
    difficulty: int ``[...]`` level per position, ``>= 0``; ``-1`` (or weight 0) is ignored.
    names: level names (index = level); by default ``"level i"`` for ``0..max level``.

  Returns:
    :class:`DifficultyStats`.
  """
  s = flat(stats)
  level_M = np.asarray(difficulty).reshape(-1).astype(np.int64)
  if level_M.size != s.weights.size:
    raise ValueError(
      f"difficulty has {level_M.size} entries (shape {np.shape(difficulty)}) but there are {s.weights.size} positions."
    )
  scored = (level_M >= 0) & (s.weights != 0)
  top_level = int(level_M[scored].max()) if scored.any() else -1
  if names is None:
    names = tuple(f"level {i}" for i in range(top_level + 1))
  elif top_level >= len(names):
    raise ValueError(
      f"difficulty level {top_level} has no name; names are {tuple(names)} (levels 0..{len(names) - 1})."
    )
  levels = group_positions(level_M, s, len(names), lambda i: str(names[i]))
  present = [g for g in levels if g.count > 0]
  return DifficultyStats(
    levels=tuple(levels),
    spearman_levels=rank_correlation([g.key for g in present], [g.mean_pauses for g in present]),
    spearman_levels_expected=rank_correlation([g.key for g in present], [g.mean_expected_pauses for g in present]),
    spearman_positions=rank_correlation(level_M[scored], s.pauses[scored]),
  )


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


def ranked(groups: Sequence[GroupStats], *, min_count: int, top: int, most: bool) -> tuple[GroupStats, ...]:
  frequent = _frequent(groups, min_count)
  sign = -1.0 if most else 1.0
  return tuple(
    sorted(frequent, key=lambda g: (sign * g.mean_pauses, sign * g.mean_expected_pauses, -g.count, g.key))[:top]
  )


def by_token(
  stats: PositionStats,
  inputs: np.ndarray,
  targets: np.ndarray,
  *,
  piece: Callable[[int], str] | None = None,
  min_count: int = 20,
  top: int = 20,
) -> TokenStats:
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
  s = flat(stats)
  ids = {}
  for label, value in (("inputs", inputs), ("targets", targets)):
    value = np.asarray(value).reshape(-1).astype(np.int64)
    if value.size != s.weights.size:
      raise ValueError(
        f"{label} has {value.size} entries (shape {np.shape(value)}) but there are {s.weights.size} positions."
      )
    if (value[s.weights != 0] < 0).any():
      raise ValueError(f"{label} holds negative token ids at scored positions: {np.unique(value[value < 0])}.")
    ids[label] = value
  name = piece or str
  num_keys = int(max(ids["inputs"].max(initial=-1), ids["targets"].max(initial=-1))) + 1
  groups = {
    label: [g for g in group_positions(np.where(s.weights != 0, v, -1), s, num_keys, lambda i: "") if g.count > 0]
    for label, v in ids.items()
  }
  groups = {label: tuple(dataclasses.replace(g, name=name(g.key)) for g in gs) for label, gs in groups.items()}
  rank = functools.partial(ranked, min_count=min_count, top=top)
  frequent = _frequent(groups["inputs"], min_count)
  ambiguous = sorted(frequent, key=lambda g: (-g.nll_step0, g.key))[:top]
  spearman = rank_correlation([g.nll_step0 for g in frequent], [g.mean_pauses for g in frequent])
  return TokenStats(
    after=groups["inputs"],
    before=groups["targets"],
    most_after=rank(groups["inputs"], most=True),
    least_after=rank(groups["inputs"], most=False),
    most_before=rank(groups["targets"], most=True),
    least_before=rank(groups["targets"], most=False),
    ambiguous_after=tuple(ambiguous),
    spearman_ambiguity=spearman,
    min_count=min_count,
    top=top,
  )


# Submodules reached as attributes (``cyb_jax.analysis.x``) without importing them first (PEP 562).
__getattr__ = cyb_jax.lazy_submodules(globals(), ("evaluation", "words", "word_report", "tables", "plots", "report"))
