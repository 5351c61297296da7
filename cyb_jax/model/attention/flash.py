"""Flash attention over packed documents with a differentiable log-normaliser (shape letters:
`cyb_jax.model.layers`; H query heads read G key/value heads, R = H / G).

`flash_attention(q, k, v, key_start, kernel)` returns `(out [B, N, H, E], lse [B, N, H])` of
causal attention in which query n sees the keys m with `key_start[n] <= m <= n` (packed
documents: `key_start` is the first index of n's document, and of n's window where a sliding
window applies; see `key_starts`). q is pre-scaled. Both outputs are differentiable, exactly:
the pause step merges the shared block with a private one through `lse`
(`blocks.merge_blocks`).

A `FlashKernel` computes the two halves of flash attention:

  * `forward(q, k, v, key_start) -> (out, lse)`, with `lse[b, n, h] = log sum_m exp(s[n, m])`
    over the visible keys (float32, natural log);
  * `backward(q, k, v, key_start, out, lse, d_out) -> (dq, dk, dv)`, the flash backward pass:
    P = exp(s - lse) recomputed blockwise, dS = P (d_out V^T - delta), with
    `delta[n] = sum_e out[n, e] d_out[n, e]`. A kernel reads `out` only through `delta`.

The log-normaliser's cotangent g therefore costs no kernel pass: d lse / d s[n, m] = P[n, m], so
the score gradient with both cotangents is P (d_out V^T - (delta - g)), which is the backward
pass of

    out' = out - g d_out / |d_out|^2    (per query and head, in float32),

since `sum_e out' d_out = delta - g`. Where `d_out` is zero in a row, g has nothing to ride on
and is dropped: differentiate lse only together with out, as the pause merge does, where g and
`d_out` vanish together (both are the merged output's cotangent times the shared block's share).

`flash_attention` keeps `(q, k, v, key_start, out, lse)` as residuals: one forward and one
backward kernel call per attention call, no recomputation of the forward.

Kernels:

  * `MosaicGpuFlash`: tokamax's Pallas Mosaic GPU flash attention (sm80, sm90 and sm100 kernels,
    16-bit inputs), which takes the documents as per-query `k_start` ranges: no `[N, N]` mask or
    bias exists forward or backward. Its forward returns the softmax statistics (row maximum m,
    denominator l); `lse = m + log l`, and the backward is handed `(lse, 1)` for `(m, l)`.
  * `ReferenceFlash`: the same contract in dense jnp (float32 scores `[B, G, R, N, N]`), for
    every platform but cuda and for the tests: the tests check `flash_attention`'s exact
    gradients (the log-normaliser's fold included) through it on a CPU.
  * `PlatformFlash`: the GPU kernel in programs lowered for cuda (`jax.lax.platform_dependent`,
    decided by the platform lowered for, never by the process's default backend), the reference
    everywhere else. Both halves switch separately inside `flash_attention`'s custom VJP, so no
    branch's residuals ever appear in the program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol

import jax
import jax.numpy as jnp

from cyb_jax.model.attention.blocks import MASKED as _MASKED


class FlashKernel(Protocol):
  """The two halves of flash attention (module docstring); hashable (a static argument)."""

  def forward(self, q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN) -> tuple[jax.Array, jax.Array]: ...

  def backward(self, q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN, out_BxNxHxE, lse_BxNxH, d_out_BxNxHxE): ...


def key_starts(segment_ids_BxN: jax.Array, window: int | None = None) -> jax.Array:
  """`[B, N]` int32: the first key each query sees, the start of its document (and of its window).

  Documents are contiguous runs of equal segment ids (packing), and positions restart with each
  document, so a window n - position(m) < W starts at index max(document start, n - W + 1).
  """
  b, n = segment_ids_BxN.shape
  index_N = jnp.arange(n, dtype=jnp.int32)
  new_document_BxN = jnp.concatenate(
    [jnp.ones((b, 1), bool), segment_ids_BxN[:, 1:] != segment_ids_BxN[:, :-1]], axis=1
  )
  start_BxN = jax.lax.cummax(jnp.where(new_document_BxN, index_N, 0), axis=1)
  if window is not None:
    start_BxN = jnp.maximum(start_BxN, index_N - (window - 1))
  return start_BxN.astype(jnp.int32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def flash_attention(q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN, kernel: FlashKernel):
  """`(out [B, N, H, E] in q's dtype, lse [B, N, H] float32)`; both differentiable (module docstring)."""
  return kernel.forward(q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN)


def _flash_fwd(q, k, v, key_start, kernel):
  out, lse = kernel.forward(q, k, v, key_start)
  return (out, lse), (q, k, v, key_start, out, lse)


def _flash_bwd(kernel, residuals, cotangents):
  q, k, v, key_start, out, lse = residuals
  d_out, d_lse_BxNxH = cotangents
  d_out = d_out.astype(q.dtype)
  d_out_f32 = d_out.astype(jnp.float32)
  norm2_BxNxHx1 = jnp.sum(jnp.square(d_out_f32), axis=-1, keepdims=True)
  fold_BxNxHx1 = jnp.where(
    norm2_BxNxHx1 > 0, d_lse_BxNxH[..., None] / jnp.where(norm2_BxNxHx1 > 0, norm2_BxNxHx1, 1), 0
  )
  out_folded = out.astype(jnp.float32) - fold_BxNxHx1 * d_out_f32
  dq, dk, dv = kernel.backward(q, k, v, key_start, out_folded, lse, d_out)
  return dq, dk, dv, None


flash_attention.defvjp(_flash_fwd, _flash_bwd)


def _visible_BxNxN(key_start_BxN: jax.Array) -> jax.Array:
  n = key_start_BxN.shape[1]
  index_N = jnp.arange(n)
  return (index_N[None, None, :] <= index_N[None, :, None]) & (index_N[None, None, :] >= key_start_BxN[:, :, None])


@dataclasses.dataclass(frozen=True)
class ReferenceFlash:
  """`FlashKernel` in dense jnp: float32 scores `[B, G, R, N, N]`, the backward from `(out, d_out)`
  through `delta` exactly as a flash kernel's."""

  def _probabilities(self, q_BxNxHxE, k_BxNxGxE, key_start_BxN, lse_BxNxH=None):
    """`(scores or probabilities [B, G, R, N, M], q [B, G, R, N, E])`: P = exp(s - lse) given lse."""
    b, n, h, e = q_BxNxHxE.shape
    g = k_BxNxGxE.shape[2]
    q_BxGxRxNxE = jnp.transpose(q_BxNxHxE.reshape(b, n, g, h // g, e), (0, 2, 3, 1, 4))
    scores = jnp.einsum("bgrne,bmge->bgrnm", q_BxGxRxNxE, k_BxNxGxE, preferred_element_type=jnp.float32)
    visible_Bx1x1xNxM = _visible_BxNxN(key_start_BxN)[:, None, None]
    if lse_BxNxH is None:
      return jnp.where(visible_Bx1x1xNxM, scores, _MASKED), q_BxGxRxNxE
    lse_BxGxRxNx1 = jnp.transpose(lse_BxNxH.reshape(b, n, g, h // g), (0, 2, 3, 1))[..., None]
    return jnp.where(visible_Bx1x1xNxM, jnp.exp(scores - lse_BxGxRxNx1), 0.0), q_BxGxRxNxE

  @staticmethod
  def _heads_last(x_BxGxRxNxE):
    b, g, r, n, e = x_BxGxRxNxE.shape
    return jnp.transpose(x_BxGxRxNxE, (0, 3, 1, 2, 4)).reshape(b, n, g * r, e)

  def forward(self, q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN):
    b, n, h, _ = q_BxNxHxE.shape
    scores_BxGxRxNxM, _ = self._probabilities(q_BxNxHxE, k_BxNxGxE, key_start_BxN)
    lse_BxGxRxN = jax.nn.logsumexp(scores_BxGxRxNxM, axis=-1)
    p = jnp.exp(scores_BxGxRxNxM - lse_BxGxRxN[..., None])
    out = jnp.einsum("bgrnm,bmge->bgrne", p, v_BxNxGxE.astype(jnp.float32))
    lse_BxNxH = jnp.transpose(lse_BxGxRxN, (0, 3, 1, 2)).reshape(b, n, h)
    return self._heads_last(out).astype(q_BxNxHxE.dtype), lse_BxNxH

  def backward(self, q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN, out_BxNxHxE, lse_BxNxH, d_out_BxNxHxE):
    b, n, h, e = q_BxNxHxE.shape
    g = k_BxNxGxE.shape[2]
    f32 = jnp.float32
    p_BxGxRxNxM, q_BxGxRxNxE = self._probabilities(q_BxNxHxE, k_BxNxGxE, key_start_BxN, lse_BxNxH)
    d_out_BxGxRxNxE = jnp.transpose(d_out_BxNxHxE.reshape(b, n, g, h // g, e), (0, 2, 3, 1, 4)).astype(f32)
    delta_BxNxH = jnp.sum(out_BxNxHxE.astype(f32) * d_out_BxNxHxE.astype(f32), axis=-1)
    delta_BxGxRxN = jnp.transpose(delta_BxNxH.reshape(b, n, g, h // g), (0, 2, 3, 1))
    dp = jnp.einsum("bgrne,bmge->bgrnm", d_out_BxGxRxNxE, v_BxNxGxE.astype(f32))
    ds_BxGxRxNxM = p_BxGxRxNxM * (dp - delta_BxGxRxN[..., None])
    dq = self._heads_last(jnp.einsum("bgrnm,bmge->bgrne", ds_BxGxRxNxM, k_BxNxGxE.astype(f32)))
    dk = jnp.einsum("bgrnm,bgrne->bmge", ds_BxGxRxNxM, q_BxGxRxNxE.astype(f32))
    dv = jnp.einsum("bgrnm,bgrne->bmge", p_BxGxRxNxM, d_out_BxGxRxNxE)
    return dq.astype(q_BxNxHxE.dtype), dk.astype(k_BxNxGxE.dtype), dv.astype(v_BxNxGxE.dtype)


@dataclasses.dataclass(frozen=True)
class MosaicGpuFlash:
  """`FlashKernel` by tokamax's Pallas Mosaic GPU flash attention (16-bit inputs, any head width
  and length: tokamax pads). tokamax picks the sm80 / sm90 / sm100 kernel from the GPU that is
  JAX's default device (`jax.default_device` selects a GPU topology's device when compiling for
  one from a host without a GPU, as `benchmarks/gpu_compile.py` does)."""

  @staticmethod
  def _op():
    # The op's public alias (tokamax.ops.gpu) also imports tokamax's Triton kernels, which need
    # jax-triton; the Mosaic kernel does not.
    from tokamax._src.ops.attention import pallas_mosaic_gpu  # noqa: PLC0415

    return pallas_mosaic_gpu.PallasMosaicGpuFlashAttention()

  @staticmethod
  def _mask(key_start_BxN):
    from tokamax._src.ops.attention import base  # noqa: PLC0415

    return base.Mask(k_start=key_start_BxN[:, None, :], is_causal=True)

  @classmethod
  def unavailable_reason(cls) -> str | None:
    """Why this process cannot trace the kernel for a GPU; None if it can."""
    try:
      op = cls._op()
    except ImportError as e:
      return f"tokamax is not installed ({e}; pip install 'cyb_jax[gpu]')"
    from jax.extend import backend  # noqa: PLC0415

    device = backend.get_default_device()
    if not op.supported_on(device):
      return f"JAX's default device {device} is not a GPU that tokamax's Mosaic kernel supports (sm80+)"
    return None

  def forward(self, q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN):
    out_BxNxHxE, (max_BxHxN, denominator_BxHxN) = self._op()(
      q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, mask=self._mask(key_start_BxN), logits_scale=1.0, return_residuals=True
    )
    lse_BxHxN = max_BxHxN + jnp.log(denominator_BxHxN)
    return out_BxNxHxE.astype(q_BxNxHxE.dtype), jnp.swapaxes(lse_BxHxN, 1, 2).astype(jnp.float32)

  def backward(self, q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN, out_BxNxHxE, lse_BxNxH, d_out_BxNxHxE):
    lse_BxHxN = jnp.swapaxes(lse_BxNxH, 1, 2)
    default = jax.lax.DotAlgorithmPreset.DEFAULT
    grads = self._op().vjp(
      (lse_BxHxN, jnp.ones_like(lse_BxHxN)),  # (m, l) with P = exp(s - m) / l
      out_BxNxHxE,
      d_out_BxNxHxE,
      q_BxNxHxE,
      k_BxNxGxE,
      v_BxNxGxE,
      precision=(default, default),
      logits_dtype=jnp.dtype(jnp.float32),
      logits_scale=1.0,
      bias=None,
      logits_soft_cap=None,
      mask=self._mask(key_start_BxN),
      dropout_mask=None,
      dropout_rate=0.0,
      paging_info=None,
      q_indices=None,
      k_indices=None,
      normalize_output=True,
      return_residuals=False,
    )
    dq, dk, dv = grads["q"], grads["k"], grads["v"]
    return dq.astype(q_BxNxHxE.dtype), dk.astype(k_BxNxGxE.dtype), dv.astype(v_BxNxGxE.dtype)


@dataclasses.dataclass(frozen=True)
class PlatformFlash:
  """`gpu` in programs lowered for cuda, `default` elsewhere (each half switches on its own)."""

  gpu: FlashKernel
  default: FlashKernel

  def forward(self, *args):
    return jax.lax.platform_dependent(*args, cuda=self.gpu.forward, default=self.default.forward)

  def backward(self, *args):
    return jax.lax.platform_dependent(*args, cuda=self.gpu.backward, default=self.default.backward)


REFERENCE = ReferenceFlash()
