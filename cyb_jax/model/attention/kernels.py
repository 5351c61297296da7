"""The fused attention behind `ModelConfig.attention_impl="dot_product"` (shape letters:
`cyb_jax.model.layers`).

`document_attend` computes what `cyb_jax.model.attention.attend` computes (no soft cap) for the mask
that every training call of the model uses: shared keys at the query positions (M = N), causal
within packed documents, `causal_segment_mask(segment_ids)`, optionally with a window
n - m < W (by index: positions restart with each document), plus an optional private block.

16-bit calls run `flash_attention` (`cyb_jax.model.attention.flash`) with the platform's kernel:
in a program lowered for cuda, tokamax's Pallas Mosaic GPU flash attention, which takes each
query's document (and window) as a key range, so no `[S, M]` mask or bias exists anywhere, forward
or backward, and grouped key/value heads are read as they are; on every other platform the same
computation by a dense reference kernel. The kernel is chosen by the platform the program is
LOWERED for, never by the process's default backend. float32 calls (flash kernels have no exact
float32 path) run the dense reference `attend`.

Why tokamax (issue 29). JAX's Pallas Triton flash attention, which this path used before, is gone
from jax 0.12. cuDNN (`jax.nn.dot_product_attention`) takes no segment ids: packed documents reach
it only as a dense `[B, 1, S, M]` bias, or through its ragged layout, whose softmax statistics JAX
sizes `[B * documents, H, N]` (quadratic when a row holds many short documents) and whose
lowering asks the process's default backend for a Hopper GPU. tokamax's Mosaic kernel takes
documents as key ranges, sliding windows too, every head width (it pads), returns its softmax
statistics for the exact pause merge, and compiles for an H100 from a host without a GPU
(`benchmarks/gpu_compile.py`).

The private pause step (shared plus private keys). The softmax over the union of both blocks is

    out = sigmoid(lse_M - lse_J) out_M + sigmoid(lse_J - lse_M) out_J,   lse = log sum_c exp(score_c),

as in `attend`; `flash_attention` returns lse_M differentiably without an extra kernel pass.

Without tokamax, or where JAX's default device is not a GPU that the kernel supports (a CPU or TPU
host: tokamax tunes the kernel for the default device's GPU generation), a program lowered for
cuda holds the dense reference kernel, and the reason is logged once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from absl import logging
from flax import linen as nn

from cyb_jax.model.attention.blocks import MASKED as _MASKED
from cyb_jax.model.attention.blocks import KeyValues
from cyb_jax.model.attention.blocks import dividing_axes
from cyb_jax.model.attention.blocks import merge_blocks
from cyb_jax.model.attention.blocks import softmax_block as _softmax_block
from cyb_jax.model.attention.flash import REFERENCE
from cyb_jax.model.attention.flash import FlashKernel
from cyb_jax.model.attention.flash import MosaicGpuFlash
from cyb_jax.model.attention.flash import PlatformFlash
from cyb_jax.model.attention.flash import flash_attention
from cyb_jax.model.attention.flash import key_starts

_SIXTEEN_BIT = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_warned: set[str] = set()


def uses_flash_kernel(dtype) -> bool:
  """Whether a call in ``dtype`` runs `flash_attention` (16-bit) rather than the dense `attend`."""
  return jnp.dtype(dtype) in _SIXTEEN_BIT


def platform_kernel() -> FlashKernel:
  """The `FlashKernel` of this process: tokamax's GPU kernel under cuda where it can be traced
  (module docstring), the dense reference elsewhere."""
  reason = MosaicGpuFlash.unavailable_reason()
  if reason is not None:
    _log_once(logging.INFO, reason, "a program lowered for cuda here uses the dense kernel")
    return REFERENCE
  return PlatformFlash(gpu=MosaicGpuFlash(), default=REFERENCE)


def warn_once(reason: str) -> None:
  """Logs ``reason`` for a call the fused kernel does not compute, once per process."""
  _log_once(logging.WARNING, reason, "the dense kernel computes these calls")


def _log_once(level: int, reason: str, consequence: str) -> None:
  if reason not in _warned:
    _warned.add(reason)
    logging.log(level, "attention_impl='dot_product': %s; %s.", reason, consequence)


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


def _flash_document_attend_local(
  q_BxNxHxE: jax.Array,
  shared: KeyValues,
  key_start_BxN: jax.Array,
  private: KeyValues | None,
  private_mask: jax.Array | None,
  *,
  scale: float | None,
  kernel: FlashKernel,
) -> jax.Array:
  """`flash_document_attend` on one device's rows and heads."""
  e = q_BxNxHxE.shape[-1]
  scale = e**-0.5 if scale is None else scale
  dtype = q_BxNxHxE.dtype
  q_BxNxHxE = q_BxNxHxE * jnp.asarray(scale, dtype)
  k_BxNxGxE, v_BxNxGxE = shared.k.astype(dtype), shared.v.astype(dtype)
  out_BxNxHxE, lse_shared_BxNxH = flash_attention(q_BxNxHxE, k_BxNxGxE, v_BxNxGxE, key_start_BxN, kernel)
  if private is None:
    return out_BxNxHxE.astype(dtype)
  private_out_BxNxHxE, lse_private_BxNxH = _private_block(q_BxNxHxE, private, private_mask)
  merged = merge_blocks(out_BxNxHxE.astype(jnp.float32), lse_shared_BxNxH, private_out_BxNxHxE, lse_private_BxNxH)
  return merged.astype(dtype)


def flash_document_attend(
  q_BxNxHxE: jax.Array,
  shared: KeyValues,
  segment_ids_BxN: jax.Array,
  private: KeyValues | None = None,
  private_mask: jax.Array | None = None,
  *,
  scale: float | None = None,
  window: int | None = None,
  kernel: FlashKernel | None = None,
) -> jax.Array:
  """`document_attend` by `flash_attention` with ``kernel`` (default: `platform_kernel()`).

  q `[B, N, H, E]`; shared keys/values `[B, N, G, E]` at the query positions; `segment_ids`
  `[B, N]` (documents are contiguous runs); optional private keys/values `[B, N, J, G, E]` with
  `private_mask` `[B or 1, N or 1, J]`; a window n - m < ``window`` within each document. Returns
  `[B, N, H, E]` in q's dtype.

  Under a mesh the kernel runs in a `shard_map` over the rows (`act_batch`) and, where both
  divide, the query and key/value heads (`act_heads`, `act_kv_heads`): XLA cannot split an
  opaque kernel call and would otherwise gather every operand onto every device.
  """
  kernel = platform_kernel() if kernel is None else kernel
  local = functools.partial(_flash_document_attend_local, scale=scale, kernel=kernel)
  args = (q_BxNxHxE, shared, key_starts(segment_ids_BxN, window), private, private_mask)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(*args)
  b, _, h, _ = q_BxNxHxE.shape
  g = shared.k.shape[2]
  batch_axes, head_axes, kv_head_axes = nn.logical_to_mesh_axes(("act_batch", "act_heads", "act_kv_heads"))
  batch = dividing_axes(batch_axes, b, mesh)
  heads, kv_heads = dividing_axes(head_axes, h, mesh), dividing_axes(kv_head_axes, g, mesh)
  if heads is None or kv_heads is None:  # query head h reads kv head h // R: split both or neither
    heads = kv_heads = None
  P = jax.sharding.PartitionSpec  # noqa: N806
  specs = (  # an absent private block (None) has the spec None
    P(batch, None, heads, None),
    KeyValues(P(batch, None, kv_heads, None), P(batch, None, kv_heads, None)),
    P(batch),
    None if private is None else KeyValues(*[P(batch, None, None, kv_heads, None)] * 2),
    None if private_mask is None else P(batch if private_mask.shape[0] == b else None),
  )
  call = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(batch, None, heads, None), check_vma=False)
  return call(*args)


def document_attend(
  q_BxNxHxE: jax.Array,
  shared: KeyValues,
  private: KeyValues | None,
  aux: tuple,
  *,
  scale: float | None,
  window: int | None,
  dense,
) -> jax.Array:
  """Attention of queries causal within their documents, by the fused kernel for 16-bit inputs.

  Computes `dense((q, shared, private), aux)` (the dense reference over the document mask, with
  the window n - m < `window` and the private block) for float32 inputs, and the same function
  by `flash_document_attend` for 16-bit ones (see the module docstring). `aux` = `(segment_ids
  [B, N], private_mask or None, positions [B, N])`; `window` a Python int or None. Other
  arguments as in `flash_document_attend`.
  """
  if not uses_flash_kernel(q_BxNxHxE.dtype):
    return dense((q_BxNxHxE, shared, private), aux)
  segment_ids, private_mask, _ = aux
  return flash_document_attend(q_BxNxHxE, shared, segment_ids, private, private_mask, scale=scale, window=window)
