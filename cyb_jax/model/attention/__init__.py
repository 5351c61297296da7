"""Multi-head attention over a shared key set plus an optional per-query (private) key set.

One primitive covers every way the CYB model attends (shape letters: see `cyb_jax.model.layers`):

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

Sliding-window layers further hide shared key m from a query at rotary position n unless
n - position(m) < W (`Visibility.shared_positions`); private keys share their query's
position. A pause slot of position n therefore sees exactly the real tokens a real slot at n
sees, in the training forward, the flattened reference and the decoder alike.

`attend` is the dense reference (`ModelConfig.attention_impl="xla"`); `attention_impl=
"dot_product"` computes the same attention through a fused GPU kernel in programs lowered for
cuda (`cyb_jax.model.attention.kernels`), and "splash" through Pallas splash attention (TPU), both
where the visibility carries segment ids (`cyb_jax.model.attention.splash`).

The package `cyb_jax.model.attention`: this module (the visibility contract, the dense
reference `attend`, the `Attention` module), `blocks` (what every path shares), `kernels`
(the fused GPU kernel) and `splash` (the TPU kernel). It imports only `cyb_jax.model.layers`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from cyb_jax.model.attention.blocks import MASKED as _MASKED
from cyb_jax.model.attention.blocks import KeyValues
from cyb_jax.model.attention.blocks import merge_blocks
from cyb_jax.model.attention.blocks import softmax_block as _softmax_block
from cyb_jax.model.attention.kernels import document_attend
from cyb_jax.model.attention.kernels import warn_once as _warn_once
from cyb_jax.model.attention.splash import splash_attend
from cyb_jax.model.layers import Dtype
from cyb_jax.model.layers import RMSNorm
from cyb_jax.model.layers import apply_rotary
from cyb_jax.model.layers import fan_in_init
from cyb_jax.model.layers import rope_inv_freq


@struct.dataclass
class LayerCache:
  """Externally held keys/values a layer attends to besides its own (see module docstring)."""

  shared: KeyValues
  private: KeyValues | None = None


@struct.dataclass
class Visibility:
  """Which keys each query sees and where the queries' own keys go; identical for every layer.

  shared_mask: bool `[B or 1, S or 1, M]` (M = S when there is no cache); None where
    `segment_ids` define it (`shared_mask_BxSxM`), so that a fused kernel's program never holds it.
  private_mask: bool `[B or 1, S or 1, J]`; required with private keys.
  write_index: int scalar; where own keys are written when a cache is given.
  shared_positions: int `[B or 1, M]`, the rotary positions of the shared keys; sliding-window
    layers hide shared key m from a query at position n unless n - positions[m] < W. Without a
    cache the shared keys are the queries themselves and their positions are used. Private keys
    (a query's own pauses) are at the query's position, inside every window.
  segment_ids: int `[B, M]`, given where `shared_mask` is `causal_segment_mask(segment_ids)` of
    queries at the shared keys' positions (the real-token prefill, the private pause step and
    the visible layout's flat grid); the fused kernels read these instead of the mask, and
    calls without them use `attend`.
  slots_per_position: static int, the slots of one rotary position along M: 1, except K + 1 on
    the visible layout's flat grid, where a window (in positions) is not one in indices, so
    sliding-window layers there use `attend`.
  """

  shared_mask: jax.Array | None
  private_mask: jax.Array | None = None
  write_index: jax.Array | None = None
  shared_positions: jax.Array | None = None
  segment_ids: jax.Array | None = None
  slots_per_position: int = struct.field(pytree_node=False, default=1)

  def shared_mask_BxSxM(self) -> jax.Array:
    """The shared mask: `shared_mask`, else `causal_segment_mask(segment_ids)`."""
    if self.shared_mask is not None:
      return self.shared_mask
    if self.segment_ids is None:
      raise ValueError("a Visibility needs shared_mask or segment_ids")
    return causal_segment_mask(self.segment_ids)


def causal_segment_mask(segment_ids_BxN: jax.Array) -> jax.Array:
  """`[B, N, N]` bool: query n sees key m iff m <= n and both lie in the same segment."""
  n = segment_ids_BxN.shape[1]
  causal_NxN = jnp.arange(n)[None, :] <= jnp.arange(n)[:, None]
  same_BxNxN = segment_ids_BxN[:, :, None] == segment_ids_BxN[:, None, :]
  return causal_NxN[None] & same_BxNxN


def slot_mask(
  segment_ids_BxN: jax.Array,
  num_steps: int,
  layout: str,
  taken_pauses_BxN: jax.Array | None = None,
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
  *,
  scale: float | None = None,
  softcap: float | None = None,
) -> jax.Array:
  """Softmax attention of each query over its shared and private keys jointly.

  out[b, s, h] = sum_c softmax_c(score_c) v_c over the visible candidates c of query (b, s):
  shared keys m with shared_mask[b, s, m], private keys (s, j) with private_mask[b, s, j];
  score_c = q . k_c * scale (default E^-1/2), then c tanh(score_c / c) with `softcap` c.
  Query head h reads key/value head h // R (grouped-query attention).

  Each block is attended on its own and the two results are merged with their log-normalisers,
  out = sigmoid(lse_M - lse_J) out_M + sigmoid(lse_J - lse_M) out_J, which is exactly the
  softmax over the union; the large shared block thus costs what it costs without pauses.
  Scores are head-major `[B, G, R, S, M]`, the natural output of the batched products, so
  they are never transposed. Scores are float32; the result `[B, S, H, E]` is in q's dtype.
  """
  b, s, h, e = q_BxSxHxE.shape
  g = shared.k.shape[-2]
  f32 = jnp.float32
  scale = e**-0.5 if scale is None else scale
  q_BxSxGxRxE = (q_BxSxHxE * jnp.asarray(scale, q_BxSxHxE.dtype)).reshape(b, s, g, h // g, e)
  cap = (lambda x: x) if softcap is None else (lambda x: softcap * jnp.tanh(x / softcap))
  q_BxGxRxSxE = jnp.transpose(q_BxSxGxRxE, (0, 2, 3, 1, 4))
  k_BxGxMxE, v_BxGxMxE = jnp.swapaxes(shared.k, 1, 2), jnp.swapaxes(shared.v, 1, 2)
  scores_BxGxRxSxM = jnp.where(
    shared_mask[:, None, None],
    cap(jnp.einsum("bgrse,bgme->bgrsm", q_BxGxRxSxE, k_BxGxMxE, preferred_element_type=f32)),
    _MASKED,
  )
  out_BxGxRxSxE, lse_shared_BxGxRxS = _softmax_block(
    scores_BxGxRxSxM,
    lambda w: jnp.einsum("bgrsm,bgme->bgrse", w.astype(v_BxGxMxE.dtype), v_BxGxMxE, preferred_element_type=f32),
  )
  if private is not None:
    scores_BxGxRxSxJ = jnp.where(
      private_mask[:, None, None],
      cap(jnp.einsum("bgrse,bsjge->bgrsj", q_BxGxRxSxE, private.k, preferred_element_type=f32)),
      _MASKED,
    )
    private_out_BxGxRxSxE, lse_private_BxGxRxS = _softmax_block(
      scores_BxGxRxSxJ,
      lambda w: jnp.einsum("bgrsj,bsjge->bgrse", w.astype(private.v.dtype), private.v, preferred_element_type=f32),
    )
    out_BxGxRxSxE = merge_blocks(out_BxGxRxSxE, lse_shared_BxGxRxS, private_out_BxGxRxSxE, lse_private_BxGxRxS)
  out_BxSxGxRxE = jnp.transpose(out_BxGxRxSxE, (0, 3, 1, 2, 4))
  return out_BxSxGxRxE.reshape(b, s, h, e).astype(q_BxSxHxE.dtype)


def _dense_document_attend(floats, aux, *, scale: float | None, window: int | None) -> jax.Array:
  """`attend` over the mask of `Visibility.segment_ids`, for `cyb_jax.model.attention.kernels.document_attend`.

  floats = (q, shared keys at the query positions, private keys or None); aux = (segment_ids
  `[B, N]`, private_mask or None, positions `[B, N]`); a key at position m is hidden from a query
  at n unless n - m < `window` (None: no window).
  """
  (q_BxNxHxE, shared, private), (segment_ids_BxN, private_mask, positions_BxN) = floats, aux
  mask_BxNxN = causal_segment_mask(segment_ids_BxN)
  if window is not None:
    mask_BxNxN &= window_mask(positions_BxN, positions_BxN, window)
  return attend(q_BxNxHxE, shared, mask_BxNxN, private, private_mask, scale=scale)


def _write(buffer: KeyValues, new: KeyValues, index: jax.Array, axis: int) -> KeyValues:
  """`buffer` with `new` written at `index` along `axis`."""
  return jax.tree.map(
    lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), index, axis),
    buffer,
    new,
  )


def window_mask(query_positions_BxS: jax.Array, key_positions_BxM: jax.Array, window: int) -> jax.Array:
  """`[B, S, M]` bool: a query at position n may see a key at position m iff n - m < window."""
  return (query_positions_BxS[:, :, None] - key_positions_BxM[:, None, :]) < window


class Attention(nn.Module):
  """Rotary multi-head attention with grouped key/value heads (see module docstring).

  Maps `x [B, S, D]` at rotary `positions [B, S]` to `(out [B, S, D], written KeyValues)`.
  Options (defaults: the plain form): biases on q/k/v (`qkv_bias`) and on the output
  (`out_bias`); RMSNorms over E of queries and keys before the rotation (`qk_norm`); the score
  scale and soft cap (see `attend`); rotary frequencies `rope_inv_freq(E, rope_base,
  rope_scaling)`. A call with `sliding` true (a Python bool, or a traced bool scalar when layers
  are scanned) applies the window `window` (see `Visibility.shared_positions`) and rotates with
  base `local_rope_base` (unscaled) when it is set. `impl` "dot_product" computes the same
  attention through a fused kernel (`cyb_jax.model.attention.kernels`; no soft cap), and "splash"
  through `cyb_jax.model.attention.splash` where `visibility.segment_ids` is given (else `attend`).
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  norm_eps: float = 1e-6
  norm_plus_one: bool = False
  scale: float | None = None
  softcap: float | None = None
  rope_scaling: tuple | None = None
  window: int | None = None
  local_rope_base: float | None = None
  impl: str = "xla"  # "xla": `attend`; "dot_product": `document_attend`; "splash": `splash_attend`

  @nn.compact
  def __call__(
    self,
    x_BxSxD: jax.Array,
    positions_BxS: jax.Array,
    cache: LayerCache | None,
    visibility: Visibility,
    sliding: bool | jax.Array = False,
  ) -> tuple[jax.Array, KeyValues]:
    d = x_BxSxD.shape[-1]
    h, g, e = self.num_heads, self.num_kv_heads, self.head_dim

    def kernel(name, shape, in_axis, out_axis, names):
      init = nn.with_logical_partitioning(fan_in_init(in_axis, out_axis), names)
      return self.param(name, init, shape, self.param_dtype).astype(self.dtype)

    def bias(name, shape, names):
      init = nn.with_logical_partitioning(nn.initializers.zeros, names)
      return self.param(name, init, shape, self.param_dtype).astype(self.dtype)

    wq_DxHxE = kernel("q_kernel", (d, h, e), 0, (1, 2), ("embed", "heads", "head_dim"))
    wk_DxGxE = kernel("k_kernel", (d, g, e), 0, (1, 2), ("embed", "kv_heads", "head_dim"))
    wv_DxGxE = kernel("v_kernel", (d, g, e), 0, (1, 2), ("embed", "kv_heads", "head_dim"))
    wo_HxExD = kernel("out_kernel", (h, e, d), (0, 1), 2, ("heads", "head_dim", "embed"))

    x = x_BxSxD.astype(self.dtype)
    q_BxSxHxE = jnp.einsum("bsd,dhe->bshe", x, wq_DxHxE)
    k_BxSxGxE = jnp.einsum("bsd,dge->bsge", x, wk_DxGxE)
    v_BxSxGxE = jnp.einsum("bsd,dge->bsge", x, wv_DxGxE)
    if self.qkv_bias:
      q_BxSxHxE = q_BxSxHxE + bias("q_bias", (h, e), ("heads", "head_dim"))
      k_BxSxGxE = k_BxSxGxE + bias("k_bias", (g, e), ("kv_heads", "head_dim"))
      v_BxSxGxE = v_BxSxGxE + bias("v_bias", (g, e), ("kv_heads", "head_dim"))
    if self.qk_norm:
      norm = functools.partial(
        RMSNorm, dtype=self.dtype, param_dtype=self.param_dtype, eps=self.norm_eps, plus_one=self.norm_plus_one
      )
      q_BxSxHxE = norm(name="q_norm")(q_BxSxHxE)
      k_BxSxGxE = norm(name="k_norm")(k_BxSxGxE)
    inv_freq_P = self._inv_freq(sliding)
    q_BxSxHxE = apply_rotary(q_BxSxHxE, positions_BxS, inv_freq_P=inv_freq_P)
    k_BxSxGxE = apply_rotary(k_BxSxGxE, positions_BxS, inv_freq_P=inv_freq_P)
    q_names = ("act_batch", "act_length", "act_heads", None)
    kv_names = ("act_batch", "act_length", "act_kv_heads", None)
    q_BxSxHxE = nn.with_logical_constraint(q_BxSxHxE, q_names)
    k_BxSxGxE = nn.with_logical_constraint(k_BxSxGxE, kv_names)
    v_BxSxGxE = nn.with_logical_constraint(v_BxSxGxE, kv_names)

    own = KeyValues(k_BxSxGxE, v_BxSxGxE)
    private = None
    if cache is None:  # self-attention: the own keys are the shared set
      shared = written = own
    elif cache.private is None:  # own keys [B, S, ..] go to shared slots write_index.. (axis M)
      shared = written = _write(cache.shared, own, visibility.write_index, axis=1)
    else:  # own keys go to private slot write_index (axis J) of each query
      own_BxSx1xGxE = jax.tree.map(lambda a: a[:, :, None], own)
      shared = cache.shared
      private = written = _write(cache.private, own_BxSx1xGxE, visibility.write_index, axis=2)

    has_cache = cache is not None
    dense = functools.partial(self._dense, q_BxSxHxE, shared, private, visibility, positions_BxS, has_cache=has_cache)
    index_windows = visibility.segment_ids is not None and (
      visibility.slots_per_position == 1 or self.window is None or sliding is False
    )
    if self.impl == "dot_product" and self.softcap is not None:
      raise ValueError(
        f"attention impl {self.impl!r} with softcap {self.softcap!r} is not "
        "supported: use impl 'xla' or 'splash', or 'dot_product' without a soft cap"
      )
    if self.impl == "splash" and visibility.segment_ids is not None and visibility.slots_per_position == 1:
      run = functools.partial(
        splash_attend,
        q_BxSxHxE,
        shared,
        visibility.segment_ids,
        private,
        visibility.private_mask,
        scale=self.scale,
        softcap=self.softcap,
      )
    elif self.impl == "dot_product" and index_windows:
      aux = (visibility.segment_ids, visibility.private_mask, positions_BxS)
      run = lambda window: document_attend(  # noqa: E731
        q_BxSxHxE,
        shared,
        private,
        aux,
        scale=self.scale,
        window=window,
        dense=functools.partial(_dense_document_attend, scale=self.scale, window=window),
      )
    else:
      if self.impl == "dot_product" and visibility.segment_ids is not None:
        _warn_once("a sliding window on the visible layout's flat grid (K > 0) is not one in indices")
      run = None
    if run is None:
      out_BxSxHxE = dense(sliding)
    elif self.window is None or sliding is False:  # the window is the kernel's block mask
      out_BxSxHxE = run(window=None)
    elif sliding is True:
      out_BxSxHxE = run(window=self.window)
    else:  # scanned layers: a traced bool picks the kernel
      out_BxSxHxE = jax.lax.cond(sliding, lambda: run(window=self.window), lambda: run(window=None))
    out_BxSxD = jnp.einsum("bshe,hed->bsd", out_BxSxHxE, wo_HxExD)
    if self.out_bias:
      out_BxSxD = out_BxSxD + bias("out_bias", (d,), ("embed",))
    return out_BxSxD, written

  def _dense(self, q_BxSxHxE, shared, private, visibility, positions_BxS, sliding, *, has_cache: bool):
    """`attend` over `visibility` (and this layer's window where `sliding`): the dense reference."""
    shared_mask = self._dense_shared_mask(visibility, positions_BxS, sliding, has_cache=has_cache)
    return attend(
      q_BxSxHxE, shared, shared_mask, private, visibility.private_mask, scale=self.scale, softcap=self.softcap
    )

  def _dense_shared_mask(
    self, visibility: Visibility, positions_BxS: jax.Array, sliding: bool | jax.Array, *, has_cache: bool
  ) -> jax.Array:
    """Bool, broadcastable to `[B, S, M]`: `visibility.shared_mask`, and in a sliding-window layer its window.

    For a traced ``sliding`` (scanned layers) the window applies where it is True.
    """
    if self.window is None or sliding is False:
      return visibility.shared_mask_BxSxM()
    key_positions = visibility.shared_positions if has_cache else positions_BxS
    if key_positions is None:
      raise ValueError("a sliding-window layer with a cache needs Visibility.shared_positions")
    inside_BxSxM = window_mask(positions_BxS, key_positions, self.window)
    return visibility.shared_mask_BxSxM() & (inside_BxSxM if sliding is True else inside_BxSxM | ~sliding)

  def _inv_freq(self, sliding: bool | jax.Array) -> jax.Array:
    """Rotary frequencies `[E / 2]` of this call: the local ones on sliding layers if set."""
    full_P = rope_inv_freq(self.head_dim, self.rope_base, self.rope_scaling)
    if self.local_rope_base is None or sliding is False:
      return full_P
    local_P = rope_inv_freq(self.head_dim, self.local_rope_base)
    return local_P if sliding is True else jnp.where(sliding, local_P, full_P)
