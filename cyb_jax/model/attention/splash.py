"""Pallas splash attention behind `ModelConfig.attention_impl="splash"` (shape letters: `cyb_jax.model.layers`).

`splash_attend` computes what `cyb_jax.model.attention.attend` computes for the two training-time
calls of the private layout, through the block-sparse flash kernel of
`jax.experimental.pallas.ops.tpu.splash_attention` (the Mosaic kernel when compiling for TPU,
ahead of time from a CPU host included; Pallas interpret mode elsewhere, which is exact but
slow: for tests).

Both calls have queries at the N real positions, shared keys at the same positions, and a
shared mask that is causal within packed documents, `causal_segment_mask(segment_ids)`, and
for sliding-window layers also n - m < W (index distances; positions rise by one within a
document, so they equal rotary distances). Splash takes that mask as a static causal (or
local) block mask and-ed with the runtime segment ids, so no `[B, N, N]` mask is ever built.

  * Real-token prefill: keys `[B, N, G, E]`, mask causal (and local).
  * Private pause step k: the shared real keys plus each position's private pause keys
    `[B, N, J, G, E]`. The private keys join the kernel's key axis, laid out j-major after the
    real ones: key N + j N + n is pause j of position n. Query n sees key N + j N + n' iff
    n' = n (a block-diagonal static mask: `PauseStepMask`), and pause j only where
    `private_mask[.., n, j]`, through its segment id: seg[n] where visible, -1 (no query's id)
    where not. One softmax then runs over each query's real and private keys jointly, so values
    and gradients are those of the reference through splash's own backward kernels; the
    block-sparse grid skips the all-hidden blocks of the private part (each query block meets J
    key blocks of it).

The kernel needs N and the key count to be multiples of 128 (its lane width). Queries are
grouped by key/value head (grouped-query attention as G multi-query kernels), and the batch is
mapped over. Under a mesh (`jax.set_mesh`), the call is a `shard_map` over the batch and
key/value-head axes that the active logical axis rules give `act_batch` and `act_kv_heads`
(each only where its devices divide B, resp. G; else that dimension is replicated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from cyb_jax.model.attention.blocks import KeyValues
from cyb_jax.model.attention.blocks import dividing_axes

LANES = 128  # splash's key block width: N and the key count must be multiples of it
_HIDDEN_SEGMENT = -1  # segment id of a private key no query may see (real ids are >= 0)


class PauseStepMask(splash_mask._ComputableMask):  # pylint: disable=protected-access
  """Static mask `[N, N (1 + J)]` of `splash_attend`: causal (and local) real keys, then J
  block-diagonal private blocks.

  Query n sees real key m iff m <= n (and n - m < window), and key N + j N + n' iff n' = n.
  The mask function is also evaluated inside the kernel, so it uses comparisons only.
  """

  def __init__(self, length: int, private_per_query: int, window: int | None):
    self.length, self.private_per_query, self.window = length, private_per_query, window

    def mask_function(q_ids, kv_ids):
      real = (kv_ids < length) & (q_ids >= kv_ids)
      if window is not None:
        real = real & (q_ids - kv_ids < window)
      for j in range(private_per_query):
        real = real | (kv_ids - q_ids == (j + 1) * length)
      return real

    super().__init__(shape=(length, length * (1 + private_per_query)), mask_function=mask_function)

  def _key(self):
    return (self.length, self.private_per_query, self.window)

  def __eq__(self, other: object):
    return isinstance(other, PauseStepMask) and self._key() == other._key()

  def __hash__(self):
    return hash((PauseStepMask, *self._key()))


def _block(length: int) -> int:
  """The largest of 512, 256, 128 that divides `length`."""
  return next(b for b in (512, 256, LANES) if length % b == 0)


def _kernel(length: int, private_per_query: int, window: int | None, heads_per_group: int, softcap, interpret: bool):
  """The multi-query splash kernel: q `[R, N, E]`, k/v `[N (1 + J), E]` -> `[R, N, E]`.

  Built in each trace (its block-sparsity tables become the program's constants); splash
  caches the numpy mask processing, so a rebuild is cheap.
  """
  mask = PauseStepMask(length, private_per_query, window)
  bq, bkv = _block(length), _block(length * (1 + private_per_query))
  blocks = splash.BlockSizes(
    block_q=bq,
    block_kv=bkv,
    block_kv_compute=bkv,
    block_q_dkv=bq,
    block_kv_dkv=bkv,
    block_kv_dkv_compute=bkv,
    block_q_dq=bq,
    block_kv_dq=bkv,
  )
  return splash.make_splash_mqa(
    splash_mask.MultiHeadMask([mask] * heads_per_group),
    block_sizes=blocks,
    head_shards=1,
    q_seq_shards=1,
    attn_logits_soft_cap=softcap,
    interpret=interpret,
  )


def _platform(mesh) -> str:
  """The platform the program is compiled for: the mesh's devices' (a TPU topology compiled
  ahead of time from a CPU host included), else the default backend's."""
  device = None if mesh.empty else mesh.abstract_device
  return getattr(device, "platform", None) or jax.default_backend()


def _check_lengths(n: int, m: int) -> None:
  if m != n:
    raise ValueError(f"splash attention needs shared keys at the query positions (M = N), got M={m}, N={n}")
  if n % LANES:
    raise ValueError(
      f"attention_impl='splash' needs the sequence length to be a multiple of {LANES}, got {n}: "
      "change data.seq_len, or use attention_impl 'xla' or 'dot_product'"
    )


def splash_attend(
  q_BxNxHxE: jax.Array,
  shared: KeyValues,
  segment_ids_BxN: jax.Array,
  private: KeyValues | None = None,
  private_mask: jax.Array | None = None,
  *,
  scale: float | None = None,
  softcap: float | None = None,
  window: int | None = None,
) -> jax.Array:
  """`attention.attend` for the causal-within-documents mask of `segment_ids`, by splash.

  q `[B, N, H, E]`; shared keys/values `[B, N, G, E]` at the query positions; `segment_ids`
  `[B, N]` int (the shared mask is `causal_segment_mask(segment_ids)`, and n - m < `window`
  when given); optional private keys/values `[B, N, J, G, E]` with `private_mask`
  `[B or 1, N or 1, J]`. Returns `[B, N, H, E]` in q's dtype. See the module docstring.
  """
  b, n, h, e = q_BxNxHxE.shape
  _check_lengths(n, shared.k.shape[1])
  g = shared.k.shape[2]
  dtype = q_BxNxHxE.dtype
  scale = e**-0.5 if scale is None else scale
  q_BxGxRxNxE = jnp.transpose((q_BxNxHxE * jnp.asarray(scale, dtype)).reshape(b, n, g, h // g, e), (0, 2, 3, 1, 4))
  keys_BxCxGxE, values_BxCxGxE = shared.k.astype(dtype), shared.v.astype(dtype)
  kv_segments_BxC = segment_ids_BxN.astype(jnp.int32)
  j = 0
  if private is not None:
    j = private.k.shape[2]
    flat = lambda x: jnp.swapaxes(x, 1, 2).reshape(b, j * n, g, e).astype(dtype)  # noqa: E731  [B, J N, G, E]
    keys_BxCxGxE = jnp.concatenate([keys_BxCxGxE, flat(private.k)], axis=1)
    values_BxCxGxE = jnp.concatenate([values_BxCxGxE, flat(private.v)], axis=1)
    visible_BxNxJ = jnp.broadcast_to(private_mask, (b, n, j))
    private_segments_BxJxN = jnp.where(
      jnp.swapaxes(visible_BxNxJ, 1, 2), kv_segments_BxC[:, None, :], _HIDDEN_SEGMENT
    ).astype(jnp.int32)
    kv_segments_BxC = jnp.concatenate([kv_segments_BxC, private_segments_BxJxN.reshape(b, j * n)], axis=1)
  mesh = jax.sharding.get_abstract_mesh()
  kernel = _kernel(n, j, window, h // g, softcap, _platform(mesh) != "tpu")

  def per_example(q_GxRxNxE, k_GxCxE, v_GxCxE, q_segments_N, kv_segments_C):
    ids = splash.SegmentIds(q=q_segments_N, kv=kv_segments_C)
    return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q_GxRxNxE, k_GxCxE, v_GxCxE)

  def call(q, k, v, q_segments, kv_segments):
    return jax.vmap(per_example)(q, k, v, q_segments, kv_segments)

  # Mapped axes lead, so each kernel call sees [C, E] blocks of its (key, head-dim) minor axes.
  keys_BxGxCxE, values_BxGxCxE = jnp.swapaxes(keys_BxCxGxE, 1, 2), jnp.swapaxes(values_BxCxGxE, 1, 2)
  args = (q_BxGxRxNxE, keys_BxGxCxE, values_BxGxCxE, segment_ids_BxN.astype(jnp.int32), kv_segments_BxC)
  if not mesh.empty:
    axes = nn.logical_to_mesh_axes(("act_batch", "act_kv_heads"))
    batch, heads = (dividing_axes(a, size, mesh) for a, size in zip(axes, (b, g)))
    P = jax.sharding.PartitionSpec  # noqa: N806
    specs = (P(batch, heads), P(batch, heads), P(batch, heads), P(batch), P(batch))
    call = jax.shard_map(call, mesh=mesh, in_specs=specs, out_specs=P(batch, heads), check_vma=False)
  out_BxGxRxNxE = call(*args)
  return jnp.transpose(out_BxGxRxNxE, (0, 3, 1, 2, 4)).reshape(b, n, h, e).astype(dtype)
