"""Per-step statistics of one prediction per position (docs/design.md section 3), from logits or hidden states.

``step_log_probs`` (full logits), ``step_log_probs_from_parts`` (vocabulary and DK logits
apart), ``checked_step_log_probs`` (raises on bad targets) and ``chunked_step_log_probs``
(scan over vocabulary chunks, never materialising the logits) all return the same
:class:`StepLogProbs`, computed in float32 from logsumexps and gathers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from cyb_jax.losses._common import NEG_INF
from cyb_jax.losses._common import Array
from cyb_jax.losses._common import ArrayLike
from cyb_jax.losses._common import compute_dtype


class StepLogProbs(NamedTuple):
  """Per-step log-probabilities of one prediction per position (docs/design.md section 3).

  Attributes:
    log_dk: ``[..., S]`` float32, ``log d_k``; ``-inf`` at the final step.
    log_answer: ``[..., S]`` float32, ``log r_k = log(1 - d_k)``; ``0`` at the final step.
    log_target: ``[..., S]`` float32, ``log c_k``; NaN where the target id is outside
      ``[0, V)`` (see :func:`step_log_probs`).
    correct: ``[..., S]`` bool, ``argmax_{v<V} z_k[v] == y``.
  """

  log_dk: Array
  log_answer: Array
  log_target: Array
  correct: Array

  @property
  def num_steps(self) -> int:
    """``K + 1``."""
    return self.log_dk.shape[-1]


def _check_logits(logits: Array, targets: Array) -> None:
  if logits.ndim < 2:
    raise ValueError(f"logits must have shape [..., K+1, V+1] (at least 2 axes), got {logits.shape}.")
  if logits.shape[-1] < 2:
    raise ValueError(
      f"the last axis of logits is V+1 (vocabulary plus <don't know>) and must be >= 2,"
      f" got {logits.shape[-1]} (logits shape {logits.shape})."
    )
  if tuple(targets.shape) != tuple(logits.shape[:-2]):
    raise ValueError(
      f"targets shape {targets.shape} must equal logits.shape[:-2] = "
      f"{logits.shape[:-2]} (logits shape {logits.shape} is [..., K+1, V+1])."
    )
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}.")


def check_vocab_size(last_axis: int, vocab_size: int | None) -> None:
  """Raises ``ValueError`` unless ``vocab_size`` is None or the logits' last axis is ``vocab_size + 1``."""
  if vocab_size is not None and last_axis != vocab_size + 1:
    missing = " (no <don't know> column?)" if last_axis == vocab_size else ""
    raise ValueError(
      f"logits' last axis is {last_axis}, but vocab_size={vocab_size} needs V+1 = {vocab_size + 1}: "
      f"the vocabulary plus <don't know> as the last entry{missing}."
    )


def _assemble(
  lse_voc_MS: Array, dk_MS: Array, target_logit_MS: Array, pred_MS: Array, targets_M: Array, vocab_size: int
) -> StepLogProbs:
  """Builds StepLogProbs from per-step reductions over the vocabulary.

  Args:
    lse_voc_MS: ``logsumexp_{v<V} z_k[v]``.
    dk_MS: ``z_k[V]``.
    target_logit_MS: ``z_k[y]`` (any value where the target is out of range).
    pred_MS: ``argmax_{v<V} z_k[v]``.
    targets_M: target ids ``y``.
    vocab_size: ``V``.
  """
  num_steps = lse_voc_MS.shape[-1]
  lse_all_MS = jnp.logaddexp(lse_voc_MS, dk_MS)
  final_S = jnp.arange(num_steps) == num_steps - 1
  log_dk = jnp.where(final_S, NEG_INF, dk_MS - lse_all_MS)
  log_answer = jnp.where(final_S, 0.0, lse_voc_MS - lse_all_MS)
  in_range_M = (targets_M >= 0) & (targets_M < vocab_size)
  log_target = jnp.where(in_range_M[..., None], target_logit_MS - lse_voc_MS, jnp.nan)
  correct = pred_MS == targets_M[..., None]
  return StepLogProbs(log_dk, log_answer, log_target, correct)


def step_log_probs(logits: ArrayLike, targets: ArrayLike, *, vocab_size: int | None = None) -> StepLogProbs:
  """Per-step statistics from full logits (docs/design.md section 3).

  Args:
    logits: ``[..., K+1, V+1]`` in any float dtype; DK is the last entry.
    targets: ``[...]`` integer ids in ``[0, V)``.
    vocab_size: ``V``, if given: the logits' last axis must be ``V + 1``, so a model that
      forgot the ``<don't know>`` column (``[..., K+1, V]``) is refused instead of having its
      last vocabulary entry read as DK.

  Returns:
    :class:`StepLogProbs` with ``[..., K+1]`` float32 fields, from logsumexps and a
    gather (no softmax over ``V+1``). The final step is forced to answer.

  Out-of-range target ids (``< 0`` or ``>= V``, including the DK id ``V``) are not
  clipped: their ``log_target`` is NaN, so a loss that reads them with a non-zero
  weight is NaN rather than silently wrong (the trainer stops on a NaN loss). At
  weight 0 they are selected away and change neither losses nor gradients. Use
  :func:`checked_step_log_probs` to raise instead.

  A model that computes the vocabulary and DK logits separately should call
  :func:`step_log_probs_from_parts` instead: slicing joined logits apart costs two
  extra ``[..., V+1]`` buffers in the backward pass.

  Raises:
    ValueError: at trace time for mismatched shapes, a last axis < 2 or other than
      ``vocab_size + 1``, or float targets.
  """
  logits = jnp.asarray(logits)
  targets = jnp.asarray(targets)
  _check_logits(logits, targets)
  check_vocab_size(logits.shape[-1], vocab_size)
  vocab_size = logits.shape[-1] - 1
  return step_log_probs_from_parts(logits[..., :vocab_size], logits[..., vocab_size], targets)


def step_log_probs_from_parts(vocab_logits: ArrayLike, dk_logits: ArrayLike, targets: ArrayLike) -> StepLogProbs:
  """:func:`step_log_probs` of ``concat(vocab_logits, dk_logits[..., None])``, without the concat.

  Args:
    vocab_logits: ``[..., K+1, V]`` vocabulary logits, any float dtype.
    dk_logits: ``[..., K+1]`` the ``<don't know>`` logit of each step.
    targets: ``[...]`` integer ids in ``[0, V)``.
  """
  vocab_logits = jnp.asarray(vocab_logits)
  dk_logits = jnp.asarray(dk_logits)
  targets = jnp.asarray(targets)
  if vocab_logits.ndim < 2 or vocab_logits.shape[-1] < 1:
    raise ValueError(f"vocab_logits must be [..., K+1, V] with V >= 1, got {vocab_logits.shape}.")
  if tuple(dk_logits.shape) != tuple(vocab_logits.shape[:-1]):
    raise ValueError(
      f"dk_logits shape {dk_logits.shape} must equal vocab_logits.shape[:-1] = {vocab_logits.shape[:-1]}."
    )
  joined_shape = vocab_logits.shape[:-1] + (vocab_logits.shape[-1] + 1,)
  _check_logits(jax.ShapeDtypeStruct(joined_shape, vocab_logits.dtype), targets)
  vocab_size = vocab_logits.shape[-1]
  dtype = compute_dtype(jnp.result_type(vocab_logits, dk_logits))
  z_SxV = vocab_logits.astype(dtype)
  lse_voc = jax.nn.logsumexp(z_SxV, axis=-1)
  safe_targets = jnp.clip(targets, 0, vocab_size - 1)
  target_logit = jnp.take_along_axis(
    z_SxV, jnp.broadcast_to(safe_targets[..., None, None], z_SxV.shape[:-1] + (1,)), axis=-1
  )[..., 0]
  pred = jnp.argmax(z_SxV, axis=-1)
  return _assemble(lse_voc, dk_logits.astype(dtype), target_logit, pred, targets, vocab_size)


def checked_step_log_probs(logits: ArrayLike, targets: ArrayLike) -> StepLogProbs:
  """:func:`step_log_probs` that raises on target ids outside ``[0, V)``.

  Eagerly it raises ``JaxRuntimeError`` at once; under ``jax.jit`` wrap the caller with
  ``jax.experimental.checkify.checkify`` and call ``err.throw()`` on the result.
  """
  logits = jnp.asarray(logits)
  targets = jnp.asarray(targets)
  vocab_size = logits.shape[-1] - 1
  checkify.check(
    jnp.all((targets >= 0) & (targets < vocab_size)),
    f"target ids must lie in [0, V={vocab_size}); got min {{lo}} and max {{hi}}",
    lo=jnp.min(targets),
    hi=jnp.max(targets),
  )
  return step_log_probs(logits, targets)


def chunked_step_log_probs(
  hidden: ArrayLike,
  output_kernel: ArrayLike,
  dk_kernel: ArrayLike,
  targets: ArrayLike,
  *,
  vocab_chunk: int,
  dk_bias: ArrayLike = 0.0,
  logit_softcap: float | None = None,
) -> StepLogProbs:
  """Per-step statistics from hidden states, never materialising the logits.

  Computes exactly :func:`step_log_probs` of ``logits = concat(hidden @ output_kernel,
  hidden @ dk_kernel + dk_bias)`` by scanning over vocabulary chunks of width
  ``vocab_chunk`` with a running logsumexp, target logit and argmax. The scan body is
  rematerialised, so the backward pass also holds one ``[M, vocab_chunk]`` chunk at a
  time: peak memory is ``O(M * vocab_chunk)`` instead of ``O(M * V)``.

  Args:
    hidden: ``[..., K+1, D]`` final hidden states, any float dtype (products are
      accumulated in float32).
    output_kernel: ``[D, V]`` vocabulary projection.
    dk_kernel: ``[D]`` (or ``[D, 1]``) DK projection.
    targets: ``[...]`` integer ids in ``[0, V)`` (NaN ``log_target`` otherwise).
    vocab_chunk: chunk width, ``1 <= vocab_chunk``; V need not be a multiple.
    dk_bias: scalar bias of the DK logit.
    logit_softcap: ``c > 0`` caps the vocabulary logits as ``c tanh(z / c)`` (Gemma's final
      soft cap; the DK logit is not capped), None for none.

  Returns:
    :class:`StepLogProbs`, equal (values and gradients) to the full path.
  """
  hidden = jnp.asarray(hidden)
  output_kernel = jnp.asarray(output_kernel)
  dk_kernel = jnp.asarray(dk_kernel)
  targets = jnp.asarray(targets)
  if hidden.ndim < 2:
    raise ValueError(f"hidden must be [..., K+1, D], got shape {hidden.shape}.")
  d_model = hidden.shape[-1]
  if output_kernel.ndim != 2 or output_kernel.shape[0] != d_model:
    raise ValueError(f"output_kernel must be [D={d_model}, V], got {output_kernel.shape}.")
  if dk_kernel.shape not in ((d_model,), (d_model, 1)):
    raise ValueError(f"dk_kernel must be [D={d_model}] or [D, 1], got {dk_kernel.shape}.")
  if tuple(targets.shape) != tuple(hidden.shape[:-2]):
    raise ValueError(
      f"targets shape {targets.shape} must equal hidden.shape[:-2] = "
      f"{hidden.shape[:-2]} (hidden shape {hidden.shape} is [..., K+1, D])."
    )
  if not isinstance(vocab_chunk, int) or vocab_chunk < 1:
    raise ValueError(f"vocab_chunk={vocab_chunk!r} must be a positive int.")
  if logit_softcap is not None and not logit_softcap > 0:
    raise ValueError(f"logit_softcap={logit_softcap!r} must be None or > 0.")
  vocab_size = output_kernel.shape[1]
  if vocab_size < 1:
    raise ValueError("output_kernel has an empty vocabulary axis (V = 0).")

  batch_shape, num_steps = hidden.shape[:-2], hidden.shape[-2]
  h_MxD = hidden.reshape(-1, d_model)
  targets_MS = jnp.broadcast_to(targets[..., None], batch_shape + (num_steps,)).reshape(-1)
  acc = compute_dtype(jnp.result_type(hidden, output_kernel))
  dk_M = jnp.einsum("md,d->m", h_MxD, dk_kernel.reshape(d_model), preferred_element_type=acc) + jnp.asarray(
    dk_bias, acc
  )

  chunk = min(vocab_chunk, vocab_size)
  num_chunks = -(-vocab_size // chunk)
  padded = num_chunks * chunk
  w_DxVp = jnp.pad(output_kernel, ((0, 0), (0, padded - vocab_size)))
  w_CxDxc = w_DxVp.reshape(d_model, num_chunks, chunk).transpose(1, 0, 2)
  offsets_C = jnp.arange(num_chunks) * chunk

  @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
  def body(carry, xs):
    lse_M, tgt_M, best_M, arg_M = carry
    w_DxC, offset = xs
    z_MxC = jnp.einsum("md,dc->mc", h_MxD, w_DxC, preferred_element_type=acc)
    if logit_softcap is not None:
      z_MxC = logit_softcap * jnp.tanh(z_MxC / logit_softcap)
    ids_C = offset + jnp.arange(chunk)
    z_MxC = jnp.where(ids_C < vocab_size, z_MxC, NEG_INF)
    lse_M = jnp.logaddexp(lse_M, jax.nn.logsumexp(z_MxC, axis=-1))
    tgt_M = tgt_M + jnp.sum(jnp.where(ids_C == targets_MS[:, None], z_MxC, 0.0), axis=-1)
    z_stop = jax.lax.stop_gradient(z_MxC)
    chunk_best_M = jnp.max(z_stop, axis=-1)
    better_M = chunk_best_M > best_M  # strict: the first maximum wins, as in argmax
    best_M = jnp.where(better_M, chunk_best_M, best_M)
    arg_M = jnp.where(better_M, offset + jnp.argmax(z_stop, axis=-1), arg_M)
    return (lse_M, tgt_M, best_M, arg_M), None

  num_rows = h_MxD.shape[0]
  init = (
    jnp.full((num_rows,), NEG_INF, acc),
    jnp.zeros((num_rows,), acc),
    jnp.full((num_rows,), NEG_INF, acc),
    jnp.zeros((num_rows,), jnp.int32),
  )
  (lse_M, tgt_M, _, arg_M), _ = jax.lax.scan(body, init, (w_CxDxc, offsets_C))

  shape_S = batch_shape + (num_steps,)
  return _assemble(
    lse_M.reshape(shape_S), dk_M.reshape(shape_S), tgt_M.reshape(shape_S), arg_M.reshape(shape_S), targets, vocab_size
  )
