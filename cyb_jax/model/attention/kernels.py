"""The fused GPU attention kernel behind `ModelConfig.attention_impl="dot_product"` (shape letters:
`cyb_jax.model.layers`).

`document_attend` computes what `cyb_jax.model.attention.attend` computes (no soft cap) for the mask
that every training call of the model uses: shared keys at the query positions (M = N), causal
within packed documents, `causal_segment_mask(segment_ids)`, optionally with a window
n - m < W (by index: positions restart with each document), plus an optional private block.

The kernel is chosen by the platform the program is LOWERED for (`jax.lax.platform_dependent`),
never by the process's default backend, so a program lowered on a CPU host for CUDA carries the
GPU kernel:

  * cuda, 16-bit inputs: JAX's Pallas GPU flash attention (`jax.experimental.pallas.ops.gpu.
    attention.mha`), which takes the documents as segment ids and causality as a flag: no
    `[S, M]` mask or bias exists anywhere, forward or backward. Key/value heads are repeated to
    the query heads (GQA). cuDNN is not used: it takes packed documents only as a dense bias,
    or through its ragged layout, whose softmax statistics JAX sizes `[B * documents, H, N]`,
    quadratic when a row holds many short documents.
  * every other platform, and float32 on GPU (flash kernels have no exact float32 path): the
    dense reference `attend`.

Where the GPU kernel cannot serve a call (a sliding window, which it does not take; a sequence
length that is not a multiple of 16; a head width under 16), the call is computed by the dense
reference on every platform and the reason is logged once.

The private pause step (shared plus private keys). The softmax over the union of both blocks is

    out = sigmoid(lse_M - lse_J) out_M + sigmoid(lse_J - lse_M) out_J,   lse = log sum_c exp(score_c),

as in `attend`. The kernel returns lse_M (float32), but not differentiably, so
`_attention_with_lse` gives it the exact vector-Jacobian product: with P the kernel's softmax,
g the cotangent of lse_M `[B, S, H]` and q pre-scaled,

    d lse_M[s] / d q[s] = sum_m P[s, m] k[m]      ->  dq += g[s] * attention(q, k, values=k)[s]
    d lse_M[s] / d k[m] = P[s, m] q[s]            ->  dk += P^T (g q),

the latter being the kernel's own value-gradient with cotangent g q. Values and gradients are
therefore those of the joint softmax; the extra cost is one kernel forward and backward per
pause step's backward pass.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from absl import logging
from flax import linen as nn

from cyb_jax.model.attention.blocks import MASKED as _MASKED
from cyb_jax.model.attention.blocks import KeyValues
from cyb_jax.model.attention.blocks import dividing_axes
from cyb_jax.model.attention.blocks import merge_blocks
from cyb_jax.model.attention.blocks import softmax_block as _softmax_block

# Sequence lengths the GPU kernel's tiles divide: a multiple of MIN_BLOCK.
MIN_BLOCK = 16
_BLOCKS = (128, 64, 32, MIN_BLOCK)
_SIXTEEN_BIT = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_warned: set[str] = set()


def gpu_kernel_refusal(n: int, dtype, window: int | None, head_dim: int = MIN_BLOCK) -> str | None:
  """Why the GPU kernel cannot compute a call of N queries of width E in ``dtype``; None if it can.

  float32 is not a refusal worth a warning: the dense reference is the float32 kernel.
  """
  if jnp.dtype(dtype) not in _SIXTEEN_BIT:
    return None
  if window is not None:
    return f"a sliding window ({window}) with packed documents, which the Pallas GPU kernel does not take"
  if n % MIN_BLOCK:
    return f"sequence length {n} is not a multiple of {MIN_BLOCK}"
  if head_dim < MIN_BLOCK:  # its tiles multiply [.., E] blocks: Triton's dot needs E >= 16
    return f"head width {head_dim} is under {MIN_BLOCK}"
  return None


def uses_gpu_kernel(n: int, dtype, window: int | None, head_dim: int = MIN_BLOCK) -> bool:
  """Whether a call of N queries in ``dtype`` with ``window`` lowers to the GPU kernel on cuda."""
  return jnp.dtype(dtype) in _SIXTEEN_BIT and gpu_kernel_refusal(n, dtype, window, head_dim) is None


def warn_once(reason: str) -> None:
  """Logs ``reason`` for a call the GPU kernel does not compute, once per process."""
  if reason not in _warned:
    _warned.add(reason)
    logging.warning("attention_impl='dot_product': %s; the dense kernel computes these calls.", reason)


def _block_sizes(n: int, e: int):
  """Tiles of the Pallas GPU kernel for N (a multiple of MIN_BLOCK) and head width E: the
  largest of 128, 64, 32, 16 dividing N, at most 64 for E > 128 (on-chip memory)."""
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention  # noqa: PLC0415

  cap = 64 if e > 128 else 128
  block = next(b for b in _BLOCKS if b <= cap and n % b == 0)
  backward = min(block, 32)
  return pallas_attention.BlockSizes(
    block_q=block,
    block_k=block,
    block_q_dkv=backward,
    block_kv_dkv=backward,
    block_q_dq=backward,
    block_kv_dq=backward,
  )


def _mha(q_BxNxHxE, k_BxNxHxE, v_BxNxHxE, segment_ids_BxN, *, interpret: bool = False, return_residuals: bool = False):
  """Causal-within-documents flash attention by Pallas on GPU (q pre-scaled, heads equal).

  Returns `out [B, N, H, E]` in q's dtype, differentiable (the kernel's own backward pass), and
  with `return_residuals` also the kernel's log-normaliser `[B, H, N]` (float32, base 2, not
  differentiable). `interpret` runs the kernel on any platform (tests).
  """
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention  # noqa: PLC0415

  n, e = q_BxNxHxE.shape[1], q_BxNxHxE.shape[-1]
  return pallas_attention.mha(
    q_BxNxHxE,
    k_BxNxHxE,
    v_BxNxHxE,
    segment_ids_BxN.astype(jnp.int32),
    sm_scale=1.0,
    causal=True,
    block_sizes=_block_sizes(n, e),
    interpret=interpret,
    return_residuals=return_residuals,
  )


def _gpu_kernel(q_BxNxHxE, k_BxNxHxE, v_BxNxHxE, segment_ids_BxN, *, interpret: bool = False):
  """`(out [B, N, H, E], lse [B, N, H] float32, natural log)` of `_mha`; `lse` is not
  differentiable (see `_attention_with_lse`)."""
  out_BxNxHxE, lse_BxHxN = _mha(
    q_BxNxHxE, k_BxNxHxE, v_BxNxHxE, segment_ids_BxN, interpret=interpret, return_residuals=True
  )
  # The kernel keeps its log-normaliser in base 2 (its exponentials are exp2): convert to base e.
  return out_BxNxHxE, jnp.swapaxes(lse_BxHxN, 1, 2) * math.log(2.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention_with_lse(q_BxNxHxE, k_BxNxHxE, v_BxNxHxE, segment_ids_BxN, interpret):
  """`(out, lse)` of the GPU kernel, both differentiable (see the module docstring)."""
  return _gpu_kernel(q_BxNxHxE, k_BxNxHxE, v_BxNxHxE, segment_ids_BxN, interpret=interpret)


def _attention_with_lse_fwd(q, k, v, segment_ids, interpret):
  return _gpu_kernel(q, k, v, segment_ids, interpret=interpret), (q, k, v, segment_ids)


def _attention_with_lse_bwd(interpret, residuals, cotangents):
  q, k, v, segment_ids = residuals
  d_out_BxNxHxE, d_lse_BxNxH = cotangents
  kernel = functools.partial(_mha, segment_ids_BxN=segment_ids, interpret=interpret)
  _, vjp_qkv = jax.vjp(kernel, q, k, v)
  dq, dk, dv = vjp_qkv(d_out_BxNxHxE.astype(q.dtype))
  # lse's share: attention with the keys as values gives sum_m P[s, m] k[m]; the kernel's value
  # gradient at cotangent g q gives P^T (g q).
  keys_as_values_BxNxHxE, vjp_values = jax.vjp(lambda values: kernel(q, k, values), k)
  g_BxNxHx1 = d_lse_BxNxH[..., None]
  dq = dq + (g_BxNxHx1 * keys_as_values_BxNxHxE.astype(jnp.float32)).astype(dq.dtype)
  (dk_lse,) = vjp_values((g_BxNxHx1 * q.astype(jnp.float32)).astype(q.dtype))
  return dq, dk + dk_lse, dv, None


_attention_with_lse.defvjp(_attention_with_lse_fwd, _attention_with_lse_bwd)


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


def _gpu_document_attend_local(
  q_BxNxHxE: jax.Array,
  shared: KeyValues,
  segment_ids_BxN: jax.Array,
  private: KeyValues | None = None,
  private_mask: jax.Array | None = None,
  *,
  scale: float | None = None,
  interpret: bool = False,
) -> jax.Array:
  """`gpu_document_attend` on one device's rows and heads."""
  b, n, h, e = q_BxNxHxE.shape
  g = shared.k.shape[2]
  scale = e**-0.5 if scale is None else scale
  dtype = q_BxNxHxE.dtype
  q_BxNxHxE = q_BxNxHxE * jnp.asarray(scale, dtype)
  k_BxNxHxE, v_BxNxHxE = (jnp.repeat(x.astype(dtype), h // g, axis=2) for x in (shared.k, shared.v))
  if private is None:
    return _mha(q_BxNxHxE, k_BxNxHxE, v_BxNxHxE, segment_ids_BxN, interpret=interpret).astype(dtype)
  out_BxNxHxE, lse_shared_BxNxH = _attention_with_lse(q_BxNxHxE, k_BxNxHxE, v_BxNxHxE, segment_ids_BxN, interpret)
  private_out_BxNxHxE, lse_private_BxNxH = _private_block(q_BxNxHxE, private, private_mask)
  merged = merge_blocks(out_BxNxHxE.astype(jnp.float32), lse_shared_BxNxH, private_out_BxNxHxE, lse_private_BxNxH)
  return merged.astype(dtype)


def gpu_document_attend(
  q_BxNxHxE: jax.Array,
  shared: KeyValues,
  segment_ids_BxN: jax.Array,
  private: KeyValues | None = None,
  private_mask: jax.Array | None = None,
  *,
  scale: float | None = None,
  interpret: bool = False,
) -> jax.Array:
  """`document_attend` (no window) by the GPU kernel; `interpret` runs it on any platform.

  q `[B, N, H, E]`; shared keys/values `[B, N, G, E]` at the query positions; `segment_ids`
  `[B, N]`; optional private keys/values `[B, N, J, G, E]` with `private_mask` `[B or 1, N or 1,
  J]`. Returns `[B, N, H, E]` in q's dtype.

  Under a mesh the kernel runs in a `shard_map` over the rows (`act_batch`) and, where both
  divide, the query and key/value heads (`act_heads`, `act_kv_heads`): XLA cannot split an
  opaque kernel call and would otherwise gather every operand onto every device.
  """
  local = functools.partial(_gpu_document_attend_local, scale=scale, interpret=interpret)
  args = (q_BxNxHxE, shared, segment_ids_BxN, private, private_mask)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(*args)
  b, _, h, _ = q_BxNxHxE.shape
  g = shared.k.shape[2]
  batch_axes, head_axes, kv_head_axes = nn.logical_to_mesh_axes(("act_batch", "act_heads", "act_kv_heads"))
  batch = dividing_axes(batch_axes, b, mesh)
  heads, kv_heads = dividing_axes(head_axes, h, mesh), dividing_axes(kv_head_axes, g, mesh)
  if heads is None or kv_heads is None:  # the local kernel repeats kv heads: split both or neither
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


def _by_platform(gpu, dense, floats, aux):
  """`gpu(floats, aux)` in a program lowered for cuda, `dense(floats, aux)` elsewhere.

  Differentiable w.r.t. the float arrays `floats` by each branch's own derivative, with the
  inputs as the only residuals: differentiating `lax.platform_dependent` directly would return
  every branch's residuals from the taken one (the dense branch's `[S, M]` scores as zero
  placeholders, stacked over the pause scan). The backward pass recomputes its branch's
  forward. `aux` (ints and bools) is not differentiated.
  """

  @jax.custom_vjp
  def run(floats, aux):
    return jax.lax.platform_dependent(floats, aux, cuda=gpu, default=dense)

  def run_fwd(floats, aux):
    return run(floats, aux), (floats, aux)

  def run_bwd(residuals, d_out):
    floats, aux = residuals

    def cotangents(branch):
      return lambda floats, aux: jax.vjp(lambda f: branch(f, aux), floats)[1](d_out)[0]

    return jax.lax.platform_dependent(floats, aux, cuda=cotangents(gpu), default=cotangents(dense)), None

  run.defvjp(run_fwd, run_bwd)
  return run(floats, aux)


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
  """Attention of queries causal within their documents, through the GPU kernel on cuda.

  Computes `dense((q, shared, private), aux)` (the dense reference over the document mask,
  with the window n - m < `window` and the private block) on every platform but cuda, and on
  cuda the same function by `gpu_document_attend` where `uses_gpu_kernel` (see the module
  docstring). `aux` = `(segment_ids [B, N], private_mask or None, positions [B, N])`; `window`
  a Python int or None. Other arguments as in `gpu_document_attend`.
  """
  n = q_BxNxHxE.shape[1]
  floats = (q_BxNxHxE, shared, private)
  e = q_BxNxHxE.shape[-1]
  refusal = gpu_kernel_refusal(n, q_BxNxHxE.dtype, window, e)
  if refusal is not None:
    warn_once(refusal)
  if not uses_gpu_kernel(n, q_BxNxHxE.dtype, window, e):
    return dense(floats, aux)

  def gpu(floats, aux):
    (q, shared, private), (segment_ids, private_mask, _) = floats, aux
    return gpu_document_attend(q, shared, segment_ids, private, private_mask, scale=scale)

  return _by_platform(gpu, dense, floats, aux)
