"""The losses by name: what each one takes, reads out and carries, and one way to call them all.

A :class:`LossSpec` describes a loss once: its function, its hyper-parameters with their
defaults, the step a fixed-halting baseline always reads out (``ce``: step 0, ``pause_ce``:
step K) and whether it carries a dual-ascent multiplier (``cyb_dp``). :func:`make_loss`
binds hyper-parameters (checked at once, with the loss's own messages) into a
:class:`Loss` with one signature for every loss::

    loss = losses.make_loss("cyb_dp", budget=0.5)
    loss_state = loss.init_state()                       # the multiplier mu (0 for others)
    value, metrics, loss_state = loss(stats, weights, loss_state)

With a pause warm-up (docs/design.md section 11; ``make_loss(..., pause_warmup_steps=W)``)
the loss is :func:`~cyb_jax.losses.all_steps_loss` (or ``pause_ce``) while the optimiser
step is below ``W`` and the configured loss from step ``W`` on; the step is an argument, so
a resumed run switches at the same step.

Nothing outside this package branches on a loss name: the trainer, the evaluation, the
report and the experiment ask the spec.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from cyb_jax.losses import objectives
from cyb_jax.losses import quantities
from cyb_jax.losses._common import F32
from cyb_jax.losses._common import Array
from cyb_jax.losses._common import ArrayLike
from cyb_jax.losses._common import Metrics
from cyb_jax.losses._common import check_scalar
from cyb_jax.losses.stats import StepLogProbs

# A loss function's keyword arguments from (hyper-parameters, K + 1).
_Binder = Callable[[Mapping[str, Any], int], dict[str, Any]]


class LossSums(NamedTuple):
  """A batch's additive sums, from which :meth:`Loss.value_from_sums` computes its loss.

  Sums of micro-batches (or of shards, by ``jax.lax.psum``) add elementwise, and
  ``value_from_sums`` of the total is the loss of the whole batch, exactly, whatever the
  number of real (weight > 0) positions in each part; see :meth:`Loss.sums` for the gradient.

  Attributes:
    loss: ``sum_n w_n l_n`` of the loss's per-position term (everything but a batch-level term).
    warmup: the same of the pause warm-up's loss (0 without a warm-up).
    weight: ``sum_n w_n``.
    halting: ``[K+1]`` ``sum_n w_n pi_n`` (CYB-VA with ``kl="batch"``: its KL is of their mean).
    pauses: ``sum_n w_n E[pauses_n]`` (CYB-DP: its budget term is of their mean).
  """

  loss: Array
  warmup: Array
  weight: Array
  halting: Array
  pauses: Array


def _whole_value(value: Array, metrics: Metrics, hparams: Mapping[str, Any]) -> Array:
  del metrics, hparams
  return value


def _va_mean_part(value: Array, metrics: Metrics, hparams: Mapping[str, Any]) -> Array:
  return value if hparams["kl"] == "token" else metrics["expected_nll"]


def _va_batch_term(sums: LossSums, kwargs: Mapping[str, Any]) -> Array:
  if kwargs["kl"] == "token":
    return jnp.zeros((), F32)
  pi_bar_S = quantities.safe_divide(sums.halting, sums.weight)
  return jnp.asarray(kwargs["beta"], F32) * objectives.batch_kl(pi_bar_S, jnp.log(kwargs["prior"]))


def _dp_mean_part(value: Array, metrics: Metrics, hparams: Mapping[str, Any]) -> Array:
  del value, hparams
  return metrics["nll_mix"]


def _dp_batch_term(sums: LossSums, kwargs: Mapping[str, Any]) -> Array:
  mean_pauses = quantities.safe_divide(sums.pauses, sums.weight)
  return objectives.budget_term(mean_pauses, sums.weight, budget=kwargs["budget"], multiplier=kwargs["multiplier"])


def _no_batch_term(sums: LossSums, kwargs: Mapping[str, Any]) -> Array:
  del sums, kwargs
  return jnp.zeros((), F32)


def _va_sums_linear(hparams: Mapping[str, Any]) -> bool:
  return hparams["kl"] == "token"  # the batch KL is of the sums' mean halting distribution


def _hashable(hparams: Mapping[str, Any]) -> tuple:
  """The hyper-parameters as a hashable tuple (`make_loss` keeps sequences as tuples)."""
  return tuple(sorted(hparams.items()))


def _no_kwargs(hparams: Mapping[str, Any], num_steps: int) -> dict[str, Any]:
  del hparams, num_steps
  return {}


def _check_ap(hparams: Mapping[str, Any]) -> None:
  objectives.check_ap_hparams(hparams["gamma"], hparams["omega"])


def _bind_ap(hparams: Mapping[str, Any], num_steps: int) -> dict[str, Any]:
  del num_steps
  return {"gamma": hparams["gamma"], "omega": hparams["omega"]}


def _check_va(hparams: Mapping[str, Any]) -> None:
  objectives.check_va_hparams(hparams["beta"], hparams["kl"])
  kind = hparams["prior"]
  if kind not in objectives.PRIOR_KINDS:
    raise ValueError(f"prior={kind!r} is unknown; allowed: {', '.join(map(repr, objectives.PRIOR_KINDS))}.")
  if kind == "geometric":
    check_scalar("prior_continuation", hparams["prior_continuation"], low=0.0, high=np.inf, low_open=True)
  if kind == "explicit":  # its length is checked against K + 1 when the loss is bound
    objectives.make_prior(kind, len(hparams["prior_values"]), values=hparams["prior_values"])


def _bind_va(hparams: Mapping[str, Any], num_steps: int) -> dict[str, Any]:  # noqa: D103
  prior = objectives.make_prior(
    hparams["prior"], num_steps, continuation=hparams["prior_continuation"], values=tuple(hparams["prior_values"])
  )
  return {"prior": prior, "beta": hparams["beta"], "kl": hparams["kl"]}


def _check_dp(hparams: Mapping[str, Any]) -> None:
  check_scalar("budget", hparams["budget"], low=0.0, high=np.inf)
  objectives.update_multiplier(hparams["multiplier_init"], 0.0, rate=hparams["multiplier_rate"])


def _bind_dp(hparams: Mapping[str, Any], num_steps: int) -> dict[str, Any]:
  del num_steps
  return {"budget": hparams["budget"]}


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What a loss is, once.

  Attributes:
    name: its config name (``loss.name``).
    function: ``(stats, weights, **kwargs) -> (loss, metrics)``, a public function of
      :mod:`cyb_jax.losses`.
    hparams: hyper-parameter name -> default, the keywords :func:`make_loss` takes.
    fixed_step: None for a loss whose model halts itself; else the step a baseline always
      reads out, as an index into the K+1 steps (``0``: step 0, ``-1``: step K).
    dual_ascent: the loss carries a Lagrange multiplier updated by dual ascent
      (:func:`~cyb_jax.losses.update_multiplier`); it is the :class:`Loss`'s state.
    max_pauses: the largest K the loss can train (``ce``: 0), None for any.
    check: raises ``ValueError`` for bad hyper-parameters (all of ``hparams`` given).
    bind: the function's keyword arguments from the hyper-parameters and K + 1.
    mean_part: ``(value, metrics, hparams)`` -> the part of the loss that is a weighted mean
      over positions (the whole loss but for a batch-level term).
    batch_term: ``(sums, kwargs)`` -> the batch-level term from a batch's :class:`LossSums`
      (``kwargs`` as ``bind`` gives them, with ``multiplier`` for dual ascent); 0 for most.
    sums_linear: ``hparams`` -> whether the loss is linear in its sums once their ``weight``
      is known (see :attr:`Loss.sums_are_linear`); True but for a nonlinear batch term.
  """

  name: str
  function: Callable[..., tuple[Array, Metrics]]
  hparams: Mapping[str, Any]
  fixed_step: int | None = None
  dual_ascent: bool = False
  max_pauses: int | None = None
  check: Callable[[Mapping[str, Any]], None] = lambda hparams: None
  bind: _Binder = _no_kwargs
  mean_part: Callable[[Array, Metrics, Mapping[str, Any]], Array] = _whole_value
  batch_term: Callable[[LossSums, Mapping[str, Any]], Array] = _no_batch_term
  sums_linear: Callable[[Mapping[str, Any]], bool] = lambda hparams: True

  def __hash__(self) -> int:  # hparams is a read-only mapping, which has no hash of its own
    return hash((self.name, _hashable(self.hparams)))

  def readout_step(self, num_steps: int) -> int | None:
    """The step in ``[0, K]`` this loss's model always answers at, or None (it halts itself)."""
    return None if self.fixed_step is None else self.fixed_step % num_steps

  def check_max_pauses(self, max_pauses: int) -> None:
    """Raises ``ValueError`` if the loss cannot train a model with K = ``max_pauses``."""
    if self.max_pauses is not None and max_pauses > self.max_pauses:
      raise ValueError(
        f"loss.name={self.name!r} trains no pauses: set model.max_pauses="
        f"{self.max_pauses} (got max_pauses={max_pauses})."
      )


def _spec(**fields) -> LossSpec:
  return LossSpec(**dict(fields, hparams=types.MappingProxyType(fields.get("hparams", {}))))


SPECS: Mapping[str, LossSpec] = types.MappingProxyType(
  {
    s.name: s
    for s in (
      _spec(name="ce", function=objectives.cross_entropy_loss, fixed_step=0, max_pauses=0),
      _spec(name="pause_ce", function=objectives.pause_cross_entropy_loss, fixed_step=-1),
      _spec(
        name="cyb_ap",
        function=objectives.cyb_ap_loss,
        hparams={"gamma": 0.9, "omega": 0.0},
        check=_check_ap,
        bind=_bind_ap,
      ),
      _spec(
        name="cyb_va",
        function=objectives.cyb_va_loss,
        hparams={"prior": "geometric", "prior_continuation": 0.5, "prior_values": (), "beta": 1.0, "kl": "token"},
        check=_check_va,
        bind=_bind_va,
        mean_part=_va_mean_part,
        batch_term=_va_batch_term,
        sums_linear=_va_sums_linear,
      ),
      _spec(
        name="cyb_dp",
        function=objectives.cyb_dp_loss,
        hparams={"budget": 1.0, "multiplier_init": 0.0, "multiplier_rate": 0.01},
        dual_ascent=True,
        check=_check_dp,
        bind=_bind_dp,
        mean_part=_dp_mean_part,
        batch_term=_dp_batch_term,
      ),
    )
  }
)
"""Every loss by its config name, in the order the project lists them."""

LOSSES: Mapping[str, Callable[..., tuple[Array, Metrics]]] = types.MappingProxyType(
  {name: spec.function for name, spec in SPECS.items()}
)
"""Loss functions by their config name (``loss.name``)."""


def get_spec(name: str) -> LossSpec:
  """The :class:`LossSpec` of ``name``; ``ValueError`` naming the known losses otherwise."""
  if name not in SPECS:
    raise ValueError(f"loss.name={name!r} is unknown; allowed: {sorted(SPECS)}.")
  return SPECS[name]


WARMUP_LOSSES: Mapping[str, Callable[..., tuple[Array, Metrics]]] = types.MappingProxyType(
  {
    "all_steps": objectives.all_steps_loss,
    "pause_ce": objectives.pause_cross_entropy_loss,
  }
)
"""What the pause warm-up trains, by name (``loss.pause_warmup_loss``)."""


@dataclasses.dataclass(frozen=True)
class Loss:
  """A loss with its hyper-parameters bound; build it with :func:`make_loss`.

  Call it as ``loss(stats, weights, loss_state) -> (value, metrics, new_loss_state)``,
  where ``stats`` is a :class:`~cyb_jax.losses.StepLogProbs` ``[..., K+1]``, ``weights``
  ``[...]``, and ``loss_state`` a float32 scalar: the CYB-DP multiplier ``mu`` for a
  dual-ascent loss (then ``new_loss_state = max(0, mu + rate * pause_excess)``), kept
  unchanged by every other loss.

  Attributes:
    spec: the loss's :class:`LossSpec`.
    hparams: every hyper-parameter of the spec, defaults filled in.
    pause_warmup_steps: ``W``: optimiser steps ``0..W-1`` train ``pause_warmup_loss``
      instead (0: none, the configured loss at every step).
    pause_warmup_loss: a key of :data:`WARMUP_LOSSES`.
  """

  spec: LossSpec
  hparams: Mapping[str, Any]
  pause_warmup_steps: int = 0
  pause_warmup_loss: str = "all_steps"

  def __hash__(self) -> int:  # hashable, so a Loss can be a static argument of jax.jit
    return hash((self.spec, _hashable(self.hparams), self.pause_warmup_steps, self.pause_warmup_loss))

  @property
  def name(self) -> str:
    return self.spec.name

  def check_num_steps(self, num_steps: int) -> None:
    """Raises ``ValueError`` if this loss cannot train a model with ``num_steps = K + 1``
    steps (``ce`` with pauses, an explicit prior of another length)."""
    self.spec.check_max_pauses(num_steps - 1)
    self.spec.bind(self.hparams, num_steps)

  def init_state(self) -> Array:
    """The initial loss state: ``multiplier_init`` for a dual-ascent loss, else 0."""
    value = self.hparams["multiplier_init"] if self.spec.dual_ascent else 0.0
    return jnp.asarray(value, F32)

  def _in_warmup(self, step: ArrayLike | None) -> Array | None:
    """Whether optimiser step ``step`` is in the pause warm-up (None: there is none)."""
    if not self.pause_warmup_steps:
      return None
    if step is None:
      raise ValueError(
        f"this {self.name!r} loss has pause_warmup_steps={self.pause_warmup_steps}: pass the optimiser step (step=...)."
      )
    return jnp.asarray(step) < self.pause_warmup_steps

  def _kwargs(self, num_steps: int, loss_state: ArrayLike) -> dict[str, Any]:
    kwargs = self.spec.bind(self.hparams, num_steps)
    if self.spec.dual_ascent:
      kwargs["multiplier"] = loss_state
    return kwargs

  @property
  def sums_are_linear(self) -> bool:
    """Whether :meth:`value_from_sums` is linear in the sums once their ``weight`` is known (all
    losses but CYB-VA with ``kl="batch"``): then its gradient w.r.t. the sums depends on the
    total weight alone, which the data give before any forward pass."""
    return self.spec.sums_linear(self.hparams)

  def sums(
    self, stats: StepLogProbs, weights: ArrayLike, loss_state: ArrayLike, step: ArrayLike | None = None
  ) -> tuple[LossSums, Metrics]:
    """``(sums, metrics)`` of a batch (or micro-batch, or shard): its :class:`LossSums` and the
    loss's metrics (weighted means, as :meth:`value_and_metrics` gives them).

    The accumulation rule: for parts ``i`` with sums ``s_i`` of one batch,
    ``value_from_sums(sum_i s_i)`` is the batch's loss, and its gradient w.r.t. any parameter
    theta is ``sum_i d<c, s_i(theta)>/d theta`` with ``c = d value_from_sums / d sums`` at the
    total: one backward pass per part with the constant cotangent ``c``. Where
    :attr:`sums_are_linear`, ``c`` needs only the total weight (zeros elsewhere do); else
    (CYB-VA's batch KL) a forward pass over the parts first gives the total. ``step`` as in
    :meth:`value_and_metrics`.
    """
    kwargs = self._kwargs(stats.num_steps, loss_state)
    value, metrics = self.spec.function(stats, weights, **kwargs)
    weight = metrics["weight_sum"]
    warmup = jnp.zeros((), F32)
    in_warmup = self._in_warmup(step)
    if in_warmup is not None:  # both losses are summed; value_from_sums picks by the step
      warmup = WARMUP_LOSSES[self.pause_warmup_loss](stats, weights)[0] * weight
      metrics = dict(metrics, pause_warmup=in_warmup.astype(F32))
    sums = LossSums(
      loss=self.spec.mean_part(value, metrics, self.hparams) * weight,
      warmup=warmup,
      weight=weight,
      halting=metrics["halt_probs"] * weight,
      pauses=metrics["expected_pauses"] * weight,
    )
    return sums, metrics

  def value_from_sums(self, sums: LossSums, loss_state: ArrayLike, step: ArrayLike | None = None) -> Array:
    """The loss of the batch whose parts' :class:`LossSums` were added into ``sums`` (0 when no
    position carries weight)."""
    kwargs = self._kwargs(sums.halting.shape[-1], loss_state)
    value = quantities.safe_divide(sums.loss, sums.weight) + self.spec.batch_term(sums, kwargs)
    in_warmup = self._in_warmup(step)
    if in_warmup is None:
      return value
    return jnp.where(in_warmup, quantities.safe_divide(sums.warmup, sums.weight), value)

  def value_and_metrics(
    self, stats: StepLogProbs, weights: ArrayLike, loss_state: ArrayLike, step: ArrayLike | None = None
  ) -> tuple[Array, Metrics]:
    """``(loss, metrics)`` at optimiser step ``step``, without the state update.

    The metrics are the configured loss's (plus ``pause_warmup``, 1 during the warm-up, when
    there is one), so they mean the same at every step.
    """
    kwargs = self._kwargs(stats.num_steps, loss_state)
    value, metrics = self.spec.function(stats, weights, **kwargs)
    in_warmup = self._in_warmup(step)
    if in_warmup is None:
      return value, metrics
    warm_value, _ = WARMUP_LOSSES[self.pause_warmup_loss](stats, weights)
    return jnp.where(in_warmup, warm_value, value), dict(metrics, pause_warmup=in_warmup.astype(F32))

  def update_state(self, loss_state: ArrayLike, metrics: Metrics, step: ArrayLike | None = None) -> Array:
    """The next loss state from a step's (full-batch) metrics: dual ascent (not during the
    pause warm-up, whose loss has no budget), or unchanged."""
    loss_state = jnp.asarray(loss_state, F32)
    if not self.spec.dual_ascent:
      return loss_state
    updated = objectives.update_multiplier(loss_state, metrics["pause_excess"], rate=self.hparams["multiplier_rate"])
    in_warmup = self._in_warmup(step)
    return updated if in_warmup is None else jnp.where(in_warmup, loss_state, updated)

  def __call__(
    self, stats: StepLogProbs, weights: ArrayLike, loss_state: ArrayLike | None = None, step: ArrayLike | None = None
  ) -> tuple[Array, Metrics, Array]:
    if loss_state is None:
      loss_state = self.init_state()
    value, metrics = self.value_and_metrics(stats, weights, loss_state, step)
    return value, metrics, self.update_state(loss_state, metrics, step)


def make_loss(name: str, *, pause_warmup_steps: int = 0, pause_warmup_loss: str = "all_steps", **hparams: Any) -> Loss:
  """The loss ``name`` with ``hparams`` bound (the rest at :attr:`LossSpec.hparams` defaults).

  Args:
    name: a key of :data:`SPECS`.
    pause_warmup_steps: ``W >= 0`` optimiser steps of pause warm-up first (see :class:`Loss`).
    pause_warmup_loss: what the warm-up trains, a key of :data:`WARMUP_LOSSES`.
    **hparams: the loss's hyper-parameters (:attr:`LossSpec.hparams`).

  Raises:
    ValueError: an unknown loss or hyper-parameter, or a value outside its allowed range
      (the loss's own message).
  """
  spec = get_spec(name)
  if isinstance(pause_warmup_steps, bool) or not isinstance(pause_warmup_steps, int) or pause_warmup_steps < 0:
    raise ValueError(f"pause_warmup_steps={pause_warmup_steps!r} must be an int >= 0.")
  if pause_warmup_loss not in WARMUP_LOSSES:
    raise ValueError(f"pause_warmup_loss={pause_warmup_loss!r} is unknown; allowed: {sorted(WARMUP_LOSSES)}.")
  if pause_warmup_steps and spec.max_pauses == 0:
    raise ValueError(f"loss {name!r} trains no pauses: pause_warmup_steps must be 0, got {pause_warmup_steps}.")
  unknown = sorted(set(hparams) - set(spec.hparams))
  if unknown:
    raise ValueError(f"loss {name!r} takes no hyper-parameter {unknown}; it takes {sorted(spec.hparams) or 'none'}.")
  # Sequences (a config's list of prior values) as tuples: the bound loss compares and hashes by value.
  bound = types.MappingProxyType(
    {k: tuple(v) if isinstance(v, list) else v for k, v in {**spec.hparams, **hparams}.items()}
  )
  spec.check(bound)
  return Loss(spec=spec, hparams=bound, pause_warmup_steps=pause_warmup_steps, pause_warmup_loss=pause_warmup_loss)


def make_loss_from_config(loss_config: Mapping[str, Any]) -> Loss:
  """:func:`make_loss` of ``loss_config["name"]`` with the spec's hyper-parameters read from it.

  ``loss_config`` is any mapping (e.g. an ``ml_collections.ConfigDict``) that has ``name``
  and the hyper-parameters of that loss, and optionally ``pause_warmup_steps`` and
  ``pause_warmup_loss``; fields other losses take are ignored.
  """
  spec = get_spec(loss_config["name"])
  warmup = {k: loss_config[k] for k in ("pause_warmup_steps", "pause_warmup_loss") if k in loss_config}
  return make_loss(spec.name, **warmup, **{k: loss_config[k] for k in spec.hparams if k in loss_config})
