"""Multi-head attention over a shared key set plus an optional per-query (private) key set.

One primitive covers every way the CYB model attends (shape letters: see `cyb_jax.layers`):

  * shared keys `[B, M, G, E]`, seen by all queries through a mask `[B, S, M]` (real tokens,
    a decoding cache, or the flattened slot grid of the `visible` layout);
  * private keys `[B, S, J, G, E]`, one small set per query (the pauses of the query's own
    position in the `private` layout), seen through a mask `[B, S, J]`.

Each query's softmax runs jointly over its M + J candidate keys, so the result equals ordinary
attention over the union of both sets with the union of both masks. The attention module first
computes its own keys/values and places them according to the cache it is given:

  * no cache: the own keys are the shared set (self-attention over the S slots);
  * a cache with shared keys only: the own keys are written into it at `write_index` (axis M);
  * a cache with private keys: the own keys are written into them at `write_index` (axis J),
    and the shared keys are read only.

It returns the key/value buffer it wrote (own keys, updated shared keys or updated private keys).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from cyb_jax.layers import Dtype, apply_rotary, fan_in_init

_MASKED = -1e30  # finite "minus infinity": masked scores never produce inf - inf.


@struct.dataclass
class KeyValues:
  """Keys and values with the same shape: `[B, M, G, E]` (shared) or `[B, S, J, G, E]` (private).

  Caches of the whole stack carry a leading layer axis L.
  """

  k: jax.Array
  v: jax.Array


@struct.dataclass
class LayerCache:
  """Externally held keys/values a layer attends to besides its own (see module docstring)."""

  shared: KeyValues
  private: KeyValues | None = None


@struct.dataclass
class Visibility:
  """Which keys each query sees and where the queries' own keys go; identical for every layer.

  shared_mask: bool, broadcastable to `[B, S, M]` (M = S when there is no cache).
  private_mask: bool, broadcastable to `[B, S, J]`; required with private keys.
  write_index: int scalar; where own keys are written when a cache is given.
  """

  shared_mask: jax.Array
  private_mask: jax.Array | None = None
  write_index: jax.Array | None = None


def causal_segment_mask(segment_ids_BxN: jax.Array) -> jax.Array:
  """`[B, N, N]` bool: query n sees key m iff m <= n and both lie in the same segment."""
  n = segment_ids_BxN.shape[1]
  causal_NxN = jnp.arange(n)[None, :] <= jnp.arange(n)[:, None]
  same_BxNxN = segment_ids_BxN[:, :, None] == segment_ids_BxN[:, None, :]
  return causal_NxN[None] & same_BxNxN


def slot_mask(
    segment_ids_BxN: jax.Array, num_steps: int, layout: str, taken_pauses_BxN: jax.Array | None = None
) -> jax.Array:
  """Visibility on the flattened slot grid, slot (n, k) at index n * num_steps + k.

  Returns `[B, N*(K+1), N*(K+1)]` bool (K + 1 = num_steps); slots never see other segments.
    private: (n, k) sees (m, 0) for m <= n and (n, k') for 1 <= k' <= k.
    visible: (n, k) sees (m, k') for m < n and any k', and (n, k') for k' <= k; in the
             interleaved order this is exactly causal attention over the flat sequence.
  With `taken_pauses_BxN` (int, pauses taken at each position), pause slots (m, k') with
  k' > taken_pauses[m] are hidden from every other position, as in adaptive decoding.
  """
  if layout not in ("private", "visible"):
    raise ValueError(f"layout must be 'private' or 'visible', got {layout!r}")
  n = segment_ids_BxN.shape[1]
  pos_S = jnp.repeat(jnp.arange(n), num_steps)
  step_S = jnp.tile(jnp.arange(num_steps), n)
  q_pos, k_pos = pos_S[:, None], pos_S[None, :]
  if layout == "visible":
    flat_S = jnp.arange(n * num_steps)
    sees_SxS = flat_S[None, :] <= flat_S[:, None]
  else:
    q_step, k_step = step_S[:, None], step_S[None, :]
    sees_real = (k_step == 0) & (k_pos <= q_pos)
    sees_own_pause = (k_pos == q_pos) & (k_step >= 1) & (k_step <= q_step)
    sees_SxS = sees_real | sees_own_pause
  seg_BxS = jnp.repeat(segment_ids_BxN, num_steps, axis=1)
  mask_BxSxS = sees_SxS[None] & (seg_BxS[:, :, None] == seg_BxS[:, None, :])
  if taken_pauses_BxN is not None:
    taken_BxS = step_S[None] <= jnp.repeat(taken_pauses_BxN, num_steps, axis=1)
    mask_BxSxS &= taken_BxS[:, None, :] | (q_pos == k_pos)[None]
  return mask_BxSxS


def attend(
    q_BxSxHxE: jax.Array,
    shared: KeyValues,
    shared_mask: jax.Array,
    private: KeyValues | None = None,
    private_mask: jax.Array | None = None,
) -> jax.Array:
  """Softmax attention of each query over its shared and private keys jointly.

  out[b, s, h] = sum_c softmax_c(q . k_c / sqrt(E)) v_c over the visible candidates c of query
  (b, s): shared keys m with shared_mask[b, s, m], private keys (s, j) with private_mask[b, s, j].
  Query head h reads key/value head h // R (grouped-query attention). The two score blocks
  share one running maximum and one normaliser, applied after the value products, so the
  `[.., M]` scores are never concatenated or rescaled. Scores are float32; the result
  `[B, S, H, E]` is in q's dtype.
  """
  b, s, h, e = q_BxSxHxE.shape
  g = shared.k.shape[-2]
  q_BxSxGxRxE = (q_BxSxHxE * jnp.asarray(e**-0.5, q_BxSxHxE.dtype)).reshape(b, s, g, h // g, e)
  blocks = [(
      jnp.einsum("bsgre,bmge->bsgrm", q_BxSxGxRxE, shared.k, preferred_element_type=jnp.float32),
      shared_mask,
      lambda p: jnp.einsum("bsgrm,bmge->bsgre", p, shared.v, preferred_element_type=jnp.float32),
  )]
  if private is not None:
    blocks.append((
        jnp.einsum("bsgre,bsjge->bsgrj", q_BxSxGxRxE, private.k, preferred_element_type=jnp.float32),
        private_mask,
        lambda p: jnp.einsum("bsgrj,bsjge->bsgre", p, private.v, preferred_element_type=jnp.float32),
    ))
  scores = [jnp.where(mask[:, :, None, None, :], sc, _MASKED) for sc, mask, _ in blocks]
  max_BxSxGxR = jax.lax.stop_gradient(jnp.max(jnp.stack([sc.max(-1) for sc in scores]), axis=0))
  numerator_BxSxGxRxE, denominator_BxSxGxR = 0.0, 0.0
  for sc, (_, _, weighted_values) in zip(scores, blocks):
    p = jnp.exp(sc - max_BxSxGxR[..., None])
    denominator_BxSxGxR += p.sum(-1)
    numerator_BxSxGxRxE += weighted_values(p.astype(shared.v.dtype))
  out_BxSxGxRxE = numerator_BxSxGxRxE / denominator_BxSxGxR[..., None]
  return out_BxSxGxRxE.reshape(b, s, h, e).astype(q_BxSxHxE.dtype)


class Attention(nn.Module):
  """Rotary multi-head attention with grouped key/value heads (see module docstring).

  Maps `x [B, S, D]` at rotary `positions [B, S]` to `(out [B, S, D], written KeyValues)`.
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      x_BxSxD: jax.Array,
      positions_BxS: jax.Array,
      cache: LayerCache | None,
      visibility: Visibility,
  ) -> tuple[jax.Array, KeyValues]:
    d = x_BxSxD.shape[-1]
    h, g, e = self.num_heads, self.num_kv_heads, self.head_dim

    def kernel(name, shape, in_axis, out_axis, names):
      init = nn.with_logical_partitioning(fan_in_init(in_axis, out_axis), names)
      return self.param(name, init, shape, self.param_dtype).astype(self.dtype)

    wq_DxHxE = kernel("q_kernel", (d, h, e), 0, (1, 2), ("embed", "heads", "head_dim"))
    wk_DxGxE = kernel("k_kernel", (d, g, e), 0, (1, 2), ("embed", "kv_heads", "head_dim"))
    wv_DxGxE = kernel("v_kernel", (d, g, e), 0, (1, 2), ("embed", "kv_heads", "head_dim"))
    wo_HxExD = kernel("out_kernel", (h, e, d), (0, 1), 2, ("heads", "head_dim", "embed"))

    x = x_BxSxD.astype(self.dtype)
    q_BxSxHxE = apply_rotary(jnp.einsum("bsd,dhe->bshe", x, wq_DxHxE), positions_BxS, self.rope_base)
    k_BxSxGxE = apply_rotary(jnp.einsum("bsd,dge->bsge", x, wk_DxGxE), positions_BxS, self.rope_base)
    v_BxSxGxE = jnp.einsum("bsd,dge->bsge", x, wv_DxGxE)
    q_BxSxHxE = nn.with_logical_constraint(q_BxSxHxE, ("act_batch", "act_length", "act_heads", None))
    k_BxSxGxE = nn.with_logical_constraint(k_BxSxGxE, ("act_batch", "act_length", "act_kv_heads", None))
    v_BxSxGxE = nn.with_logical_constraint(v_BxSxGxE, ("act_batch", "act_length", "act_kv_heads", None))

    private = None
    if cache is None:
      shared = written = KeyValues(k_BxSxGxE, v_BxSxGxE)
    elif cache.private is None:
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
          buf, new.astype(buf.dtype), visibility.write_index, axis=1
      )
      shared = written = KeyValues(write(cache.shared.k, k_BxSxGxE), write(cache.shared.v, v_BxSxGxE))
    else:
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
          buf, new[:, :, None].astype(buf.dtype), visibility.write_index, axis=2
      )
      shared = cache.shared
      private = written = KeyValues(write(cache.private.k, k_BxSxGxE), write(cache.private.v, v_BxSxGxE))

    out_BxSxHxE = attend(q_BxSxHxE, shared, visibility.shared_mask, private, visibility.private_mask)
    out_BxSxD = jnp.einsum("bshe,hed->bsd", out_BxSxHxE, wo_HxExD)
    return out_BxSxD, written
