"""Catch Your Breath losses: per-step statistics, the five training losses, evaluation.

Notation (docs/design.md sections 3-5). A model makes ``S = K + 1`` attempts (steps
``k = 0..K``) at every output position. Step ``k`` emits ``V + 1`` logits ``z_k``:
the ``V`` vocabulary entries and ``<don't know>`` (DK) as the LAST entry. For a
position with target ``y``::

    log d_k  = z_k[V] - logsumexp(z_k[0..V])        DK ("pause") at step k
    log r_k  = logsumexp(z_k[0..V-1]) - logsumexp(z_k[0..V])   answer at step k
    log c_k  = z_k[y] - logsumexp(z_k[0..V-1])      y, given an answer at step k
    final step forced: log d_K = -inf, log r_K = 0
    log s_k  = sum_{j<k} log d_j                    reach step k
    log pi_k = log s_k + log r_k                    halting distribution
    nll_mix  = -logsumexp_k(log pi_k + log c_k)

Everything here is a pure function of arrays: jittable, differentiable, valid for any
leading batch shape ``...`` and any ``K >= 0``, computed in float32 whatever the input
dtype (float64 inputs under ``jax.enable_x64`` stay float64). Nothing materialises a
softmax over ``[..., K+1, V+1]``; the chunked path never materialises the logits at all.
The package needs JAX and NumPy only (``pip install cyb_jax``; the rest of cyb_jax is the
``train`` extra). "docs/design.md" in docstrings is the repository's design document, which the
wheel installs as ``<sys.prefix>/share/doc/cyb_jax/design.md``.

Modules: :mod:`~cyb_jax.losses.stats` (per-step statistics), :mod:`~cyb_jax.losses.quantities`
(derived quantities, weighted reductions), :mod:`~cyb_jax.losses.objectives` (the losses,
priors, dual ascent), :mod:`~cyb_jax.losses.protocols` (evaluation protocols),
:mod:`~cyb_jax.losses.registry` (:class:`LossSpec`, :func:`make_loss`).

Shape suffixes: ``S`` = K+1 steps, ``V`` = vocabulary (without DK), ``D`` = model width,
``M`` = flattened positions times steps.
"""

from cyb_jax.losses.objectives import KL_MODES
from cyb_jax.losses.objectives import PRIOR_KINDS
from cyb_jax.losses.objectives import all_steps_loss
from cyb_jax.losses.objectives import ap_log_stop
from cyb_jax.losses.objectives import cross_entropy_loss
from cyb_jax.losses.objectives import cyb_ap_loss
from cyb_jax.losses.objectives import cyb_dp_loss
from cyb_jax.losses.objectives import cyb_va_loss
from cyb_jax.losses.objectives import geometric_prior
from cyb_jax.losses.objectives import make_prior
from cyb_jax.losses.objectives import pause_cross_entropy_loss
from cyb_jax.losses.objectives import uniform_prior
from cyb_jax.losses.objectives import update_multiplier
from cyb_jax.losses.protocols import HaltResult
from cyb_jax.losses.protocols import PositionStats
from cyb_jax.losses.protocols import check_protocol
from cyb_jax.losses.protocols import evaluate
from cyb_jax.losses.protocols import fixed_halting
from cyb_jax.losses.protocols import position_outcomes
from cyb_jax.losses.protocols import protocol_figures
from cyb_jax.losses.protocols import protocol_sums
from cyb_jax.losses.protocols import threshold_halting
from cyb_jax.losses.quantities import expected_pauses
from cyb_jax.losses.quantities import log_halting
from cyb_jax.losses.quantities import log_reach
from cyb_jax.losses.quantities import nll_mix
from cyb_jax.losses.quantities import weighted_mean
from cyb_jax.losses.quantities import weighted_sum
from cyb_jax.losses.registry import LOSSES
from cyb_jax.losses.registry import SPECS
from cyb_jax.losses.registry import WARMUP_LOSSES
from cyb_jax.losses.registry import Loss
from cyb_jax.losses.registry import LossSpec
from cyb_jax.losses.registry import LossSums
from cyb_jax.losses.registry import get_spec
from cyb_jax.losses.registry import make_loss
from cyb_jax.losses.registry import make_loss_from_config
from cyb_jax.losses.stats import StepLogProbs
from cyb_jax.losses.stats import checked_step_log_probs
from cyb_jax.losses.stats import chunked_step_log_probs
from cyb_jax.losses.stats import step_log_probs
from cyb_jax.losses.stats import step_log_probs_from_parts

__all__ = [
  "KL_MODES",
  "LOSSES",
  "PRIOR_KINDS",
  "SPECS",
  "WARMUP_LOSSES",
  "HaltResult",
  "Loss",
  "LossSpec",
  "LossSums",
  "PositionStats",
  "StepLogProbs",
  "all_steps_loss",
  "ap_log_stop",
  "check_protocol",
  "checked_step_log_probs",
  "chunked_step_log_probs",
  "cross_entropy_loss",
  "cyb_ap_loss",
  "cyb_dp_loss",
  "cyb_va_loss",
  "evaluate",
  "expected_pauses",
  "fixed_halting",
  "geometric_prior",
  "get_spec",
  "log_halting",
  "log_reach",
  "make_loss",
  "make_loss_from_config",
  "make_prior",
  "nll_mix",
  "pause_cross_entropy_loss",
  "position_outcomes",
  "protocol_figures",
  "protocol_sums",
  "step_log_probs",
  "step_log_probs_from_parts",
  "threshold_halting",
  "uniform_prior",
  "update_multiplier",
  "weighted_mean",
  "weighted_sum",
]
