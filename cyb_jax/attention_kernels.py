"""Fused attention kernels behind `ModelConfig.attention_impl` (shape letters: `cyb_jax.layers`).

`fused_attend` computes what `cyb_jax.attention.attend` computes (without soft cap) through
`jax.nn.dot_product_attention`: its cuDNN flash kernel on GPU for 16-bit inputs, its XLA
implementation elsewhere (float32 on GPU included: cuDNN flash has no float32 kernel).

Shared keys only (the real-token prefill, a decoding cache): one kernel call with the shared
mask `[B, 1, S, M]`.

Shared plus private keys (the private pause step). The softmax over the union of both blocks is
  out = (Z_M out_M + Z_J out_J) / (Z_M + Z_J),   Z = sum_c exp(score_c) of each block,
and needs each block's log-normaliser. The kernel's own residual (`return_residual=True`) is
no use for the shared block: both implementations return it under `stop_gradient` (XLA) or drop
its cotangent (cuDNN), so a merge through it would be exact in value but not in gradient.
Instead the merge is folded into the kernel by ONE extra "sentinel" key, seen by every query:
  * the private block (J <= K keys per query) is attended densely: out_J `[B, S, H, E]` and
    lse_J = log Z_J `[B, S, H]` (float32);
  * queries gain coordinates (hi, lo) = lse_J split into the query dtype and its rounding
    remainder, so that their float32-accumulated dot product with the sentinel key
    (0, .., 0, 1, 1) is lse_J to ~16 bits even in bfloat16; real keys get zeros there, so their
    scores are unchanged, and the sentinel's weight in the kernel's softmax is
    exp(lse_J) / (Z_M + exp(lse_J)) = Z_J / (Z_M + Z_J);
  * values gain a coordinate that is 1 for the sentinel and 0 for real keys; the kernel then
    returns o = [Z_M out_M / (Z_M + Z_J), Z_J / (Z_M + Z_J)] (head width padded to a multiple
    of 8 for cuDNN), and out = o[:E] + o[E] out_J.
Both are computed stably (the kernel's softmax subtracts its running maximum, the sentinel's
score included) and the result depends on the kernel's output only, so values AND gradients
are those of the joint softmax, through any backend's differentiable kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cyb_jax.attention_blocks import MASKED as _MASKED
from cyb_jax.attention_blocks import KeyValues
from cyb_jax.attention_blocks import softmax_block as _softmax_block

_EXTRA = 2  # the (hi, lo) coordinates; the value's sentinel flag reuses the hi one


def kernel_implementation(dtype) -> str:
  """`implementation` for `jax.nn.dot_product_attention`: "cudnn" on GPU for 16-bit inputs,
  else "xla"."""
  sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if jax.default_backend() == "gpu" and sixteen_bit else "xla"


def _kernel(q_BxSxHxE, k_BxMxGxE, v_BxMxGxE, mask_BxSxM) -> jax.Array:
  """softmax(q . k with `mask` `[B or 1, S or 1, M]`) v by the fused kernel; q pre-scaled."""
  b, s, _, _ = q_BxSxHxE.shape
  mask_Bx1xSxM = jnp.broadcast_to(mask_BxSxM, (b, s, k_BxMxGxE.shape[1]))[:, None]
  return jax.nn.dot_product_attention(
    q_BxSxHxE,
    k_BxMxGxE,
    v_BxMxGxE,
    mask=mask_Bx1xSxM,
    scale=1.0,
    implementation=kernel_implementation(q_BxSxHxE.dtype),
  )


def _private_block(q_BxSxHxE, private: KeyValues, private_mask_BxSxJ):
  """Dense attention over each query's private keys `[B, S, J, G, E]` (q pre-scaled).

  Returns `(out_J [B, S, H, E] float32, lse_J [B, S, H] float32)`.
  """
  b, s, h, e = q_BxSxHxE.shape
  g = private.k.shape[-2]
  q_BxSxGxRxE = q_BxSxHxE.reshape(b, s, g, h // g, e)
  scores_BxSxGxRxJ = jnp.where(
    private_mask_BxSxJ[:, :, None, None],
    jnp.einsum("bsgre,bsjge->bsgrj", q_BxSxGxRxE, private.k, preferred_element_type=jnp.float32),
    _MASKED,
  )
  out_BxSxGxRxE, lse_BxSxGxR = _softmax_block(
    scores_BxSxGxRxJ,
    lambda w: jnp.einsum(
      "bsgrj,bsjge->bsgre", w.astype(private.v.dtype), private.v, preferred_element_type=jnp.float32
    ),
  )
  return out_BxSxGxRxE.reshape(b, s, h, e), lse_BxSxGxR.reshape(b, s, h)


def fused_attend(
  q_BxSxHxE: jax.Array,
  shared: KeyValues,
  shared_mask: jax.Array,
  private: KeyValues | None = None,
  private_mask: jax.Array | None = None,
  *,
  scale: float | None = None,
) -> jax.Array:
  """`attention.attend` (no soft cap) through the fused kernel; see the module docstring.

  q `[B, S, H, E]`; shared keys/values `[B, M, G, E]` with `shared_mask` `[B or 1, S or 1, M]`;
  optional private keys/values `[B, S, J, G, E]` with `private_mask` `[B or 1, S or 1, J]`.
  Returns `[B, S, H, E]` in q's dtype.
  """
  b, s, h, e = q_BxSxHxE.shape
  scale = e**-0.5 if scale is None else scale
  q_BxSxHxE = q_BxSxHxE * jnp.asarray(scale, q_BxSxHxE.dtype)
  dtype = q_BxSxHxE.dtype
  k_BxMxGxE, v_BxMxGxE = shared.k.astype(dtype), shared.v.astype(dtype)
  if private is None:
    return _kernel(q_BxSxHxE, k_BxMxGxE, v_BxMxGxE, shared_mask).astype(dtype)

  private_out_BxSxHxE, lse_private_BxSxH = _private_block(q_BxSxHxE, private, private_mask)
  width = -(-(e + _EXTRA) // 8) * 8  # E + 2 rounded up to a multiple of 8 (cuDNN head widths)
  hi_BxSxH = lse_private_BxSxH.astype(dtype)
  lo_BxSxH = (lse_private_BxSxH - hi_BxSxH.astype(jnp.float32)).astype(dtype)
  pad = lambda x, n: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n)])  # noqa: E731
  q_BxSxHxW = pad(jnp.concatenate([q_BxSxHxE, hi_BxSxH[..., None], lo_BxSxH[..., None]], -1), width - e - _EXTRA)
  g = k_BxMxGxE.shape[2]
  sentinel_k_W = jnp.zeros((width,), dtype).at[e : e + _EXTRA].set(1)
  sentinel_v_W = jnp.zeros((width,), dtype).at[e].set(1)
  sentinel = lambda row_W: jnp.broadcast_to(row_W, (b, 1, g, width))  # noqa: E731
  k_BxMxGxW = jnp.concatenate([sentinel(sentinel_k_W), pad(k_BxMxGxE, width - e)], axis=1)
  v_BxMxGxW = jnp.concatenate([sentinel(sentinel_v_W), pad(v_BxMxGxE, width - e)], axis=1)
  mask_BxSxM = jnp.broadcast_to(shared_mask, (b, s, shared_mask.shape[-1]))
  mask_BxSxM = jnp.concatenate([jnp.ones((b, s, 1), bool), mask_BxSxM], axis=-1)
  o_BxSxHxW = _kernel(q_BxSxHxW, k_BxMxGxW, v_BxMxGxW, mask_BxSxM).astype(jnp.float32)
  private_share_BxSxHx1 = o_BxSxHxW[..., e : e + 1]  # Z_J / (Z_M + Z_J)
  out_BxSxHxE = o_BxSxHxW[..., :e] + private_share_BxSxHx1 * private_out_BxSxHxE
  return out_BxSxHxE.astype(dtype)
