"""The pause-aware decoder-only transformer ("Catch Your Breath", DESIGN sections 1-2).

For tokens `[B, N]` and at most K pauses, every position n has K+1 slots (n, k): slot (n, 0)
reads token x_n, slot (n, k>0) reads `pause_embed[k-1]`, all at rotary position n, and every
slot predicts x_{n+1} with V+1 logits (the vocabulary, then <don't know> (DK) last).

Architecture: token embedding, pre-norm blocks (RMSNorm -> rotary grouped-query attention,
RMSNorm -> SwiGLU), a final RMSNorm, a vocabulary head (or the tied embedding) and a separate
`dk_head` (kernel `[D]`, bias `[]`), so a model trained without pauses can be extended.

Two attention layouts over the slot grid (`ModelConfig.pause_layout`):
  private: slot (n, k) sees real slots (m, 0), m <= n, and its own pauses (n, 1..k). Computed
    as one causal pass over the real tokens (keeping every layer's keys/values) and a
    `lax.scan` over k = 1..K; each step runs the N pause slots of index k in parallel against
    the real keys/values plus a per-position buffer of pause keys/values `[B, N, K, G, E]`.
    Attention work is (K+1) N^2.
  visible: slot (n, k) sees every slot of earlier positions and (n, k') for k' <= k; computed
    on the flattened grid of N (K+1) slots, which is causal in interleaved order.
`step_hidden_flat` computes either layout on the flattened grid (the reference for `private`).

The model is a Flax linen module applied as a pure function of a params pytree; the public
functions below take `(cfg, params, ...)`. Shape letters: see `cyb_jax.layers`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from cyb_jax.attention import (
    Attention, KeyValues, LayerCache, Visibility, causal_segment_mask, slot_mask)
from cyb_jax.layers import RMSNorm, SwiGLU, fan_in_init

PAUSE_LAYOUTS = ("private", "visible")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = (
    "none",  # no rematerialisation
    "full",  # save nothing, recompute the whole block
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "nothing_saveable",
    "everything_saveable",
)


# ModelConfig fields that say how the model is computed or initialised, not which function
# its parameters define: a checkpoint may be resumed with other values of these.
RUNTIME_FIELDS = ("dtype", "remat_policy", "unroll_pause_scan", "dk_bias_init")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of the pause-aware transformer (hashable: usable as a static jit argument).

  Attributes:
    vocab_size: V, real tokens; the model emits V+1 logits (DK last).
    num_layers: transformer blocks.
    d_model: D, residual width.
    num_heads: H, query heads.
    mlp_dim: F, SwiGLU hidden width.
    max_pauses: K >= 0; K = 0 is an ordinary language model.
    pause_layout: "private" (pauses visible only to their own position) or "visible".
    num_kv_heads: G key/value heads (grouped-query attention); None means H.
    head_dim: E; None means D // H.
    tie_embeddings: use the token embedding (transposed) as the vocabulary head.
    shared_pause_embed: one pause embedding `[1, D]` for every pause index instead of `[K, D]`.
    dtype: compute dtype, "float32" or "bfloat16" (logits are always float32).
    param_dtype: parameter dtype.
    remat_policy: rematerialisation of each block: one of REMAT_POLICIES.
    scan_layers: stack block parameters on a leading "layers" axis and `nn.scan` over them.
    unroll_pause_scan: fully unroll the `lax.scan` over pause steps of the `private` training
      forward: no stacked per-step residuals (less memory, ~5-10% faster steps measured on
      CPU), at K times the compile time of one step.
    dk_bias_init: initial bias of the DK logit (the DK kernel starts at zero).
    rope_base: rotary frequency base.
  """

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  mlp_dim: int
  max_pauses: int
  pause_layout: str = "private"
  num_kv_heads: int | None = None
  head_dim: int | None = None
  tie_embeddings: bool = False
  shared_pause_embed: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  unroll_pause_scan: bool = False
  dk_bias_init: float = 0.0
  rope_base: float = 10000.0

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim"):
      _check_int(name, getattr(self, name), minimum=1)
    _check_int("max_pauses", self.max_pauses, minimum=0)
    for name in ("tie_embeddings", "shared_pause_embed", "scan_layers", "unroll_pause_scan"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
    if self.num_kv_heads is not None:
      _check_int("num_kv_heads", self.num_kv_heads, minimum=1)
    if self.head_dim is not None:
      _check_int("head_dim", self.head_dim, minimum=2)
    if self.pause_layout not in PAUSE_LAYOUTS:
      raise ValueError(f"pause_layout must be one of {PAUSE_LAYOUTS}, got {self.pause_layout!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "change one of them or set head_dim explicitly"
      )
    if self.num_heads % self.resolved_num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}"
      )
    if self.resolved_head_dim % 2:
      raise ValueError(
          "head dimension (head_dim or d_model // num_heads) must be even for rotary positions, "
          f"got {self.resolved_head_dim}"
      )
    if not math.isfinite(self.dk_bias_init):
      raise ValueError(f"dk_bias_init must be finite, got {self.dk_bias_init}")
    if not self.rope_base > 0:
      raise ValueError(f"rope_base must be positive, got {self.rope_base}")

  @property
  def resolved_num_kv_heads(self) -> int:
    """G: num_kv_heads, or num_heads when unset."""
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def resolved_head_dim(self) -> int:
    """E: head_dim, or d_model // num_heads when unset."""
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def num_steps(self) -> int:
    """K + 1 slots per position."""
    return self.max_pauses + 1

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


def _check_int(name: str, value, *, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _remat_policy(name: str):
  if name == "full":
    return None
  return getattr(jax.checkpoint_policies, name)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

  `(x [B, S, D], positions [B, S], cache, visibility) -> (x [B, S, D], written KeyValues)`;
  see `cyb_jax.attention` for the cache/visibility contract.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD, positions_BxS, cache: LayerCache | None, visibility: Visibility):
    cfg = self.cfg
    dtypes = dict(dtype=cfg.compute_dtype, param_dtype=jnp.dtype(cfg.param_dtype))
    h_BxSxD = RMSNorm(name="attention_norm", **dtypes)(x_BxSxD)
    attn_BxSxD, written = Attention(
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.resolved_num_kv_heads,
        head_dim=cfg.resolved_head_dim,
        rope_base=cfg.rope_base,
        name="attention",
        **dtypes,
    )(h_BxSxD, positions_BxS, cache, visibility)
    x_BxSxD = x_BxSxD + attn_BxSxD
    h_BxSxD = RMSNorm(name="mlp_norm", **dtypes)(x_BxSxD)
    x_BxSxD = x_BxSxD + SwiGLU(cfg.mlp_dim, name="mlp", **dtypes)(h_BxSxD)
    x_BxSxD = nn.with_logical_constraint(x_BxSxD, ("act_batch", "act_length", "act_embed"))
    return x_BxSxD, written


class Decoder(nn.Module):
  """The stack of L blocks, unrolled or `nn.scan`-ned over a "layers" parameter axis.

  Caches and written key/value buffers carry a leading layer axis L.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD, positions_BxS, cache: LayerCache | None, visibility: Visibility):
    cfg = self.cfg
    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(
          block, policy=_remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers
      )
    if cfg.scan_layers:
      stack = nn.scan(
          block,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(nn.broadcast, 0, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      return stack(cfg, name="layers")(x_BxSxD, positions_BxS, cache, visibility)
    written = []
    for i in range(cfg.num_layers):
      cache_i = None if cache is None else jax.tree.map(lambda a, i=i: a[i], cache)
      layer = block(cfg, name=f"layer_{i}")
      x_BxSxD, written_i = layer(x_BxSxD, positions_BxS, cache_i, visibility)
      written.append(written_i)
    return x_BxSxD, jax.tree.map(lambda *a: jnp.stack(a), *written)


class Transformer(nn.Module):
  """Parameters and per-piece computations of the model; orchestrated by the functions below.

  Parameters (logical axes): token_embed [V, D] (vocab, embed); pause_embed [K or 1, D]
  (pauses, embed), absent when K = 0; decoder/...; final_norm/scale [D] (norm);
  vocab_head/kernel [D, V] (embed, vocab), absent when tied; dk_head/kernel [D] (embed),
  dk_head/bias [] ().
  """

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    pdt = jnp.dtype(cfg.param_dtype)
    embed_init = nn.initializers.normal(stddev=cfg.d_model**-0.5)
    self.token_embed = self.param(
        "token_embed", nn.with_logical_partitioning(embed_init, ("vocab", "embed")),
        (cfg.vocab_size, cfg.d_model), pdt,
    )
    if cfg.max_pauses > 0:
      num_pause_embeddings = 1 if cfg.shared_pause_embed else cfg.max_pauses
      self.pause_embed = self.param(
          "pause_embed", nn.with_logical_partitioning(embed_init, ("pauses", "embed")),
          (num_pause_embeddings, cfg.d_model), pdt,
      )
    self.decoder = Decoder(cfg)
    self.final_norm = RMSNorm(dtype=cfg.compute_dtype, param_dtype=pdt)
    self.vocab_head = None if cfg.tie_embeddings else _VocabHead(cfg)
    self.dk_head = _DKHead(cfg)

  def embed_tokens(self, tokens_BxS: jax.Array) -> jax.Array:
    """Token embeddings `[B, S, D]` in the compute dtype."""
    x = jnp.take(self.token_embed, tokens_BxS, axis=0).astype(self.cfg.compute_dtype)
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

  def embed_pause(self, k: jax.Array) -> jax.Array:
    """Input `[D]` of pause slot k in 1..K (may be traced): pause_embed[k - 1], or [0] if shared."""
    index = 0 if self.cfg.shared_pause_embed else k - 1
    x_D = jax.lax.dynamic_index_in_dim(self.pause_embed, index, keepdims=False)
    return x_D.astype(self.cfg.compute_dtype)

  def hidden(self, x_BxSxD, positions_BxS, cache, visibility):
    """Blocks then final norm: `-> (hidden [B, S, D], written KeyValues with leading L)`."""
    x_BxSxD, written = self.decoder(x_BxSxD, positions_BxS, cache, visibility)
    return self.final_norm(x_BxSxD), written

  def output_projection(self):
    """`(output_kernel [D, V], dk_kernel [D], dk_bias [])`, see the function `output_projection`."""
    output_kernel_DxV = self.token_embed.T if self.vocab_head is None else self.vocab_head()
    return (output_kernel_DxV, *self.dk_head())

  def __call__(self, tokens_BxN: jax.Array) -> jax.Array:
    """Step-0 logits `[B, N, V+1]` (an ordinary causal LM pass); used to create the parameters."""
    b, n = tokens_BxN.shape
    positions_BxN = jnp.broadcast_to(jnp.arange(n), (b, n))
    mask = causal_segment_mask(jnp.ones((b, n), jnp.int32))
    x_BxNxD = self.embed_tokens(tokens_BxN)
    hidden_BxNxD, _ = self.hidden(x_BxNxD, positions_BxN, None, Visibility(shared_mask=mask))
    return _project(self.cfg, *self.output_projection(), hidden_BxNxD)


class _VocabHead(nn.Module):
  """Holds the vocabulary head kernel `[D, V]`."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self):
    cfg = self.cfg
    return self.param(
        "kernel", nn.with_logical_partitioning(fan_in_init(0, 1), ("embed", "vocab")),
        (cfg.d_model, cfg.vocab_size), jnp.dtype(cfg.param_dtype),
    )


class _DKHead(nn.Module):
  """Holds the <don't know> head: kernel `[D]` (zero at init) and bias `[]` (`dk_bias_init`)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self):
    cfg = self.cfg
    pdt = jnp.dtype(cfg.param_dtype)
    kernel_init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
    bias_init = nn.with_logical_partitioning(nn.initializers.constant(cfg.dk_bias_init), ())
    kernel_D = self.param("kernel", kernel_init, (cfg.d_model,), pdt)
    return kernel_D, self.param("bias", bias_init, (), pdt)


def _project_parts(cfg: ModelConfig, output_kernel_DxV, dk_kernel_D, dk_bias, hidden_xD):
  """float32 `(vocab logits [..., V], DK logit [...])`, compute dtype, float32 accumulation."""
  h = hidden_xD.astype(cfg.compute_dtype)
  f32 = jnp.float32
  kernel_DxV = output_kernel_DxV.astype(h.dtype)
  vocab_xV = jnp.einsum("...d,dv->...v", h, kernel_DxV, preferred_element_type=f32)
  dk_x = jnp.einsum("...d,d->...", h, dk_kernel_D.astype(h.dtype), preferred_element_type=f32)
  if vocab_xV.ndim >= 3:
    names = ("act_batch", "act_length") + (None,) * (vocab_xV.ndim - 3) + ("act_vocab",)
    vocab_xV = nn.with_logical_constraint(vocab_xV, names)
  return vocab_xV, dk_x + dk_bias.astype(f32)


def _project(cfg: ModelConfig, output_kernel_DxV, dk_kernel_D, dk_bias, hidden_xD):
  vocab_xV, dk_x = _project_parts(cfg, output_kernel_DxV, dk_kernel_D, dk_bias, hidden_xD)
  logits = jnp.concatenate([vocab_xV, dk_x[..., None]], axis=-1)
  if logits.ndim < 3:
    return logits
  names = ("act_batch", "act_length") + (None,) * (logits.ndim - 3) + ("act_vocab",)
  return nn.with_logical_constraint(logits, names)


# ----------------------------------------------------------------------------------------------
# Parameters.


def _init_variables(cfg: ModelConfig, rng: jax.Array):
  return Transformer(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: jax.Array):
  """A fresh parameter pytree of plain arrays (logical-axis boxes removed).

  Jitted; under an outer `jax.jit(..., out_shardings=...)` the parameters are created sharded.
  """
  return nn.unbox(_init_variables(cfg, rng)["params"])


def param_logical_axes(cfg: ModelConfig):
  """Pytree like `init_params(cfg, ...)` of `PartitionSpec`s of logical axis names."""
  abstract = jax.eval_shape(lambda rng: _init_variables(cfg, rng), jax.random.key(0))
  return nn.get_partition_spec(abstract)["params"]


def output_projection(cfg: ModelConfig, params) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(output_kernel [D, V], dk_kernel [D], dk_bias [])` in the parameter dtype.

  Vocabulary logits are hidden @ output_kernel (the token embedding transposed when tied);
  the DK logit is hidden @ dk_kernel + dk_bias.
  """
  if cfg.tie_embeddings:
    output_kernel_DxV = params["token_embed"].T
  else:
    output_kernel_DxV = params["vocab_head"]["kernel"]
  return output_kernel_DxV, params["dk_head"]["kernel"], params["dk_head"]["bias"]


def logits_from_hidden(cfg: ModelConfig, params, hidden_xD: jax.Array) -> jax.Array:
  """float32 logits `[..., V+1]` = concat(hidden @ output_kernel, hidden @ dk_kernel + dk_bias).

  Products run in the compute dtype with float32 accumulation.
  """
  return _project(cfg, *output_projection(cfg, params), hidden_xD)


def split_logits_from_hidden(cfg: ModelConfig, params, hidden_xD: jax.Array
                             ) -> tuple[jax.Array, jax.Array]:
  """`logits_from_hidden` as its two parts: vocabulary logits `[..., V]` and the DK logit `[...]`.

  For `losses.step_log_probs_from_parts`: joining the parts only to slice them apart again
  costs two extra `[..., V+1]` buffers in the backward pass.
  """
  return _project_parts(cfg, *output_projection(cfg, params), hidden_xD)


# ----------------------------------------------------------------------------------------------
# Pieces used by the training forward and by the decoder (`cyb_jax.decode`).


def _apply(cfg: ModelConfig, params, method, *args):
  return Transformer(cfg).apply({"params": params}, *args, method=method)


def embed_tokens(cfg: ModelConfig, params, tokens_BxS: jax.Array) -> jax.Array:
  """Token embeddings `[B, S, D]` in the compute dtype."""
  return _apply(cfg, params, Transformer.embed_tokens, tokens_BxS)


def embed_pause(cfg: ModelConfig, params, k: jax.Array) -> jax.Array:
  """Input `[D]` of the k-th pause, k in 1..K (may be traced)."""
  if cfg.max_pauses == 0:
    raise ValueError("embed_pause needs max_pauses >= 1, the config has max_pauses=0")
  return _apply(cfg, params, Transformer.embed_pause, k)


def hidden_states(
    cfg: ModelConfig,
    params,
    x_BxSxD: jax.Array,
    positions_BxS: jax.Array,
    cache: LayerCache | None,
    visibility: Visibility,
) -> tuple[jax.Array, KeyValues]:
  """All blocks and the final norm on input slots `x [B, S, D]`.

  Returns `(hidden [B, S, D], written)`, `written` the per-layer key/values `[L, ...]` the
  attention wrote (see `cyb_jax.attention`): own keys `[L, B, S, G, E]` without a cache, the
  updated shared cache, or the updated private buffer.
  """
  return _apply(cfg, params, Transformer.hidden, x_BxSxD, positions_BxS, cache, visibility)


# ----------------------------------------------------------------------------------------------
# Training forward.


def _default_ids(tokens_BxN, segment_ids, positions):
  if tokens_BxN.ndim != 2 or not jnp.issubdtype(tokens_BxN.dtype, jnp.integer):
    raise ValueError(
        f"tokens must be an integer array [B, N], got {tokens_BxN.dtype} {tokens_BxN.shape}"
    )
  b, n = tokens_BxN.shape
  if segment_ids is None:
    segment_ids = jnp.ones((b, n), jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  for name, value in (("segment_ids", segment_ids), ("positions", positions)):
    if value.shape != (b, n):
      raise ValueError(f"{name} must have the tokens' shape {(b, n)}, got {value.shape}")
  return segment_ids, positions


def _private_step_hidden(cfg: ModelConfig, params, tokens_BxN, segment_ids_BxN, positions_BxN):
  """`private` layout: a causal pass over real tokens, then `lax.scan` over pause steps."""
  b, n = tokens_BxN.shape
  k_max = cfg.max_pauses
  real_mask_BxNxN = causal_segment_mask(segment_ids_BxN)
  x_BxNxD = embed_tokens(cfg, params, tokens_BxN)
  hidden0_BxNxD, real = hidden_states(
      cfg, params, x_BxNxD, positions_BxN, None, Visibility(real_mask_BxNxN)
  )
  if k_max == 0:
    return hidden0_BxNxD[:, :, None]
  real_names = (None, "act_batch", "act_length", "act_kv_heads", None)
  real = nn.with_logical_constraint(real, KeyValues(real_names, real_names))
  buffer_names = (None, "act_batch", "act_length", None, "act_kv_heads", None)
  buffer_shape = (cfg.num_layers, b, n, k_max, cfg.resolved_num_kv_heads, cfg.resolved_head_dim)
  zeros = jnp.zeros(buffer_shape, cfg.compute_dtype)
  pauses_init = KeyValues(zeros, zeros)

  def pause_step(pauses: KeyValues, k: jax.Array):
    """Pause slots (n, k) for all n: real keys (m, 0), m <= n, plus own pauses (n, 1..k)."""
    pauses = nn.with_logical_constraint(pauses, KeyValues(buffer_names, buffer_names))
    x_BxNxD = jnp.broadcast_to(embed_pause(cfg, params, k), (b, n, cfg.d_model))
    visibility = Visibility(
        shared_mask=real_mask_BxNxN,
        private_mask=(jnp.arange(k_max) < k)[None, None, :],
        write_index=k - 1,
    )
    hidden_BxNxD, pauses = hidden_states(
        cfg, params, x_BxNxD, positions_BxN, LayerCache(real, pauses), visibility
    )
    return pauses, hidden_BxNxD

  _, hidden_KxBxNxD = jax.lax.scan(
      pause_step, pauses_init, jnp.arange(1, k_max + 1), unroll=cfg.unroll_pause_scan or 1
  )
  return jnp.concatenate([hidden0_BxNxD[:, :, None], jnp.moveaxis(hidden_KxBxNxD, 0, 2)], axis=2)


def step_hidden_flat(
    cfg: ModelConfig, params, tokens_BxN, *, segment_ids=None, positions=None, taken_pauses=None
) -> jax.Array:
  """Final hidden states `[B, N, K+1, D]` of either layout, computed on the flattened grid.

  The N (K+1) slots are laid out as (n, k) -> n (K+1) + k with inputs embed(x_n) for k = 0 and
  pause_embed[k-1] for k > 0, rotary position positions[n] for every slot of n, and the
  `slot_mask` of `cfg.pause_layout`. Attention work is (K+1)^2 N^2; this is the implementation
  of `visible` and the reference for `private`.

  `taken_pauses` (`[B, N]` int, optional) hides pause slots k > taken_pauses[m] from every other
  position: the `visible` layout as an adaptive decoder that took those pauses computes it.
  Other arguments as in `step_hidden`.
  """
  segment_ids, positions = _default_ids(tokens_BxN, segment_ids, positions)
  b, n = tokens_BxN.shape
  steps = cfg.num_steps
  x_BxNxD = embed_tokens(cfg, params, tokens_BxN)
  x_BxNxKxD = x_BxNxD[:, :, None]
  if cfg.max_pauses > 0:
    pauses_KxD = jnp.stack([embed_pause(cfg, params, k) for k in range(1, steps)])
    pauses_BxNxKxD = jnp.broadcast_to(pauses_KxD, (b, n, steps - 1, cfg.d_model))
    x_BxNxKxD = jnp.concatenate([x_BxNxKxD, pauses_BxNxKxD], axis=2)
  x_BxSxD = x_BxNxKxD.reshape(b, n * steps, cfg.d_model)
  positions_BxS = jnp.repeat(positions, steps, axis=1)
  if taken_pauses is not None and taken_pauses.shape != tokens_BxN.shape:
    raise ValueError(
        f"taken_pauses must have the tokens' shape {tokens_BxN.shape}, got {taken_pauses.shape}"
    )
  mask_BxSxS = slot_mask(segment_ids, steps, cfg.pause_layout, taken_pauses)
  hidden_BxSxD, _ = hidden_states(cfg, params, x_BxSxD, positions_BxS, None, Visibility(mask_BxSxS))
  return hidden_BxSxD.reshape(b, n, steps, cfg.d_model)


def step_hidden(
    cfg: ModelConfig, params, tokens_BxN, *, segment_ids=None, positions=None
) -> jax.Array:
  """Final hidden states (after the last RMSNorm, compute dtype) `[B, N, K+1, D]` of every slot.

  Args:
    tokens_BxN: int tokens.
    segment_ids: `[B, N]` int, 0 for padding, 1, 2, ... for packed documents; attention never
      crosses segments. Default: one segment.
    positions: `[B, N]` int rotary positions (restarting at 0 in each segment). Default arange(N).
  """
  segment_ids, positions = _default_ids(tokens_BxN, segment_ids, positions)
  if cfg.pause_layout == "private":
    return _private_step_hidden(cfg, params, tokens_BxN, segment_ids, positions)
  return step_hidden_flat(cfg, params, tokens_BxN, segment_ids=segment_ids, positions=positions)


def step_logits(
    cfg: ModelConfig, params, tokens_BxN, *, segment_ids=None, positions=None
) -> jax.Array:
  """float32 step logits `[B, N, K+1, V+1]`: slot (n, k)'s prediction of x_{n+1}, DK last.

  Equals `logits_from_hidden(cfg, params, step_hidden(...))`; see `step_hidden` for the args.
  """
  hidden_BxNxKxD = step_hidden(
      cfg, params, tokens_BxN, segment_ids=segment_ids, positions=positions
  )
  return logits_from_hidden(cfg, params, hidden_BxNxKxD)
