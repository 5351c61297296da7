"""Flax modules of the pause-aware transformer: blocks, the layer stack, embeddings and heads.

Architecture (`cyb_jax.model.config.ModelConfig` selects the variants): token embedding
(times sqrt(D) if `scale_embeddings`), pre-norm blocks (RMSNorm -> rotary grouped-query
attention -> optional post-norm, RMSNorm -> gated MLP -> optional post-norm), a final RMSNorm,
a vocabulary head (or the tied embedding, optionally soft-capped) and a separate `dk_head`
(kernel `[D]`, bias `[]`), so a model trained without pauses can be extended. The functions of
`cyb_jax.model` orchestrate these pieces; shape letters: see `cyb_jax.model.layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from cyb_jax.model.attention import Attention
from cyb_jax.model.attention import LayerCache
from cyb_jax.model.attention import Visibility
from cyb_jax.model.attention import causal_segment_mask
from cyb_jax.model.config import ModelConfig
from cyb_jax.model.layers import GatedMLP
from cyb_jax.model.layers import RMSNorm
from cyb_jax.model.layers import fan_in_init


def _remat_policy(name: str):
  if name == "full":
    return None
  return getattr(jax.checkpoint_policies, name)


def _norm(cfg: ModelConfig, name: str | None = None) -> RMSNorm:
  return RMSNorm(
    dtype=cfg.compute_dtype,
    param_dtype=jnp.dtype(cfg.param_dtype),
    eps=cfg.rms_norm_eps,
    plus_one=cfg.norm_plus_one,
    name=name,
  )


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); with `post_norms`
  x + post_norm(attn(norm(x))), then x + post_norm(mlp(norm(x))) (Gemma 2/3).

  `(x [B, S, D], positions [B, S], cache, visibility, sliding) -> (x [B, S, D], written
  KeyValues)`; see `cyb_jax.model.attention` for the cache/visibility contract. `sliding` says
  whether this layer is a sliding-window layer (a Python bool, or a traced bool when scanned).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD, positions_BxS, cache: LayerCache | None, visibility: Visibility, sliding=False):
    cfg = self.cfg
    types = set(cfg.resolved_layer_types)
    if len(types) == 1:  # the same for every layer: a constant
      sliding = types == {"sliding"}
    dtypes = dict(dtype=cfg.compute_dtype, param_dtype=jnp.dtype(cfg.param_dtype))
    h_BxSxD = _norm(cfg, "attention_norm")(x_BxSxD)
    attn_BxSxD, written = Attention(
      num_heads=cfg.num_heads,
      num_kv_heads=cfg.resolved_num_kv_heads,
      head_dim=cfg.resolved_head_dim,
      rope_base=cfg.rope_base,
      qkv_bias=cfg.qkv_bias,
      out_bias=cfg.out_bias,
      qk_norm=cfg.qk_norm,
      norm_eps=cfg.rms_norm_eps,
      norm_plus_one=cfg.norm_plus_one,
      scale=cfg.attention_scale,
      softcap=cfg.attn_logit_softcap,
      rope_scaling=cfg.rope_scaling_params,
      window=cfg.sliding_window,
      local_rope_base=cfg.rope_local_base,
      impl=cfg.attention_impl,
      name="attention",
      **dtypes,
    )(h_BxSxD, positions_BxS, cache, visibility, sliding)
    if cfg.post_norms:
      attn_BxSxD = _norm(cfg, "post_attention_norm")(attn_BxSxD)
    x_BxSxD = x_BxSxD + attn_BxSxD
    h_BxSxD = _norm(cfg, "mlp_norm")(x_BxSxD)
    mlp_BxSxD = GatedMLP(cfg.mlp_dim, activation=cfg.mlp_activation, name="mlp", **dtypes)(h_BxSxD)
    if cfg.post_norms:
      mlp_BxSxD = _norm(cfg, "post_mlp_norm")(mlp_BxSxD)
    x_BxSxD = x_BxSxD + mlp_BxSxD
    x_BxSxD = nn.with_logical_constraint(x_BxSxD, ("act_batch", "act_length", "act_embed"))
    return x_BxSxD, written


class Decoder(nn.Module):
  """The stack of L blocks, unrolled or `nn.scan`-ned over a "layers" parameter axis.

  Caches and written key/value buffers carry a leading layer axis L. Scanned layers receive
  their layer type as a traced flag.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxSxD, positions_BxS, cache: LayerCache | None, visibility: Visibility):
    cfg = self.cfg
    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(block, policy=_remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast, 0, nn.broadcast, 0),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      sliding_L = jnp.asarray([kind == "sliding" for kind in cfg.resolved_layer_types])
      return stack(cfg, name="layers")(x_BxSxD, positions_BxS, cache, visibility, sliding_L)
    written = []
    for i, kind in enumerate(cfg.resolved_layer_types):
      cache_i = None if cache is None else jax.tree.map(lambda a, i=i: a[i], cache)
      layer = block(cfg, name=f"layer_{i}")
      x_BxSxD, written_i = layer(x_BxSxD, positions_BxS, cache_i, visibility, kind == "sliding")
      written.append(written_i)
    return x_BxSxD, jax.tree.map(lambda *a: jnp.stack(a), *written)


class Transformer(nn.Module):
  """Parameters and per-piece computations of the model; orchestrated by the functions below.

  Parameters (logical axes): token_embed [V', D] (vocab, embed), V' = padded_vocab_size; pause_embed [K or 1, D]
  (pauses, embed), absent when K = 0; decoder/...; final_norm/scale [D] (norm);
  vocab_head/kernel [D, V'] (embed, vocab), absent when tied; dk_head/kernel [D] (embed),
  dk_head/bias [] ().
  """

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    pdt = jnp.dtype(cfg.param_dtype)
    embed_init = nn.initializers.normal(stddev=cfg.d_model**-0.5)
    self.token_embed = self.param(
      "token_embed",
      nn.with_logical_partitioning(padded_init(embed_init, cfg.vocab_size, axis=0), ("vocab", "embed")),
      (cfg.padded_vocab_size, cfg.d_model),
      pdt,
    )
    if cfg.max_pauses > 0:
      num_pause_embeddings = 1 if cfg.shared_pause_embed else cfg.max_pauses
      self.pause_embed = self.param(
        "pause_embed",
        nn.with_logical_partitioning(embed_init, ("pauses", "embed")),
        (num_pause_embeddings, cfg.d_model),
        pdt,
      )
    self.decoder = Decoder(cfg)
    self.final_norm = _norm(cfg)
    self.vocab_head = None if cfg.tie_embeddings else _VocabHead(cfg)
    self.dk_head = _DKHead(cfg)

  def _scale_input(self, x_xD: jax.Array) -> jax.Array:
    """x * sqrt(D) in the compute dtype (the factor rounded to it) if `scale_embeddings`."""
    x_xD = x_xD.astype(self.cfg.compute_dtype)
    if not self.cfg.scale_embeddings:
      return x_xD
    return x_xD * jnp.asarray(self.cfg.d_model**0.5, self.cfg.compute_dtype)

  def embed_tokens(self, tokens_BxS: jax.Array) -> jax.Array:
    """Token embeddings `[B, S, D]` in the compute dtype (times sqrt(D) if `scale_embeddings`)."""
    x = self._scale_input(jnp.take(self.token_embed, tokens_BxS, axis=0))
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

  def embed_pause(self, k: jax.Array) -> jax.Array:
    """Input `[D]` of pause slot k in 1..K (may be traced): pause_embed[k - 1], or [0] if shared;
    scaled like token embeddings."""
    index = 0 if self.cfg.shared_pause_embed else k - 1
    x_D = jax.lax.dynamic_index_in_dim(self.pause_embed, index, keepdims=False)
    return self._scale_input(x_D)

  def hidden(self, x_BxSxD, positions_BxS, cache, visibility):
    """Blocks then final norm: `-> (hidden [B, S, D], written KeyValues with leading L)`."""
    x_BxSxD, written = self.decoder(x_BxSxD, positions_BxS, cache, visibility)
    return self.final_norm(x_BxSxD), written

  def output_projection(self):
    """`(output_kernel [D, V], dk_kernel [D], dk_bias [])`, see the function `output_projection`."""
    v = self.cfg.vocab_size  # the padded entries never become logits
    output_kernel_DxV = self.token_embed[:v].T if self.vocab_head is None else self.vocab_head()[:, :v]
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
      "kernel",
      nn.with_logical_partitioning(padded_init(fan_in_init(0, 1), cfg.vocab_size, axis=1), ("embed", "vocab")),
      (cfg.d_model, cfg.padded_vocab_size),
      jnp.dtype(cfg.param_dtype),
    )


def padded_init(init, size: int, *, axis: int):
  """``init`` of the unpadded shape (``size`` along ``axis``), then zeros up to the padded
  shape: a padded table starts with exactly the values of the unpadded one."""

  def padded(key, shape, dtype=jnp.float32):
    real = list(shape)
    real[axis] = size
    widths = [(0, 0)] * len(shape)
    widths[axis] = (0, shape[axis] - size)
    return jnp.pad(init(key, tuple(real), dtype), widths)

  return padded


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


def cap_vocab_logits(cfg: ModelConfig, vocab_xV: jax.Array) -> jax.Array:
  """c tanh(z / c) with c = `final_logit_softcap` (identity when None), for vocabulary logits
  computed outside `logits_from_hidden` (e.g. in vocabulary chunks)."""
  if cfg.final_logit_softcap is None:
    return vocab_xV
  return cfg.final_logit_softcap * jnp.tanh(vocab_xV / cfg.final_logit_softcap)


def _project_parts(cfg: ModelConfig, output_kernel_DxV, dk_kernel_D, dk_bias, hidden_xD):
  """float32 `(vocab logits [..., V], DK logit [...])`, compute dtype, float32 accumulation.

  With `final_logit_softcap` c the vocabulary logits are c tanh(z / c); the DK logit is not capped.
  """
  h = hidden_xD.astype(cfg.compute_dtype)
  f32 = jnp.float32
  kernel_DxV = output_kernel_DxV.astype(h.dtype)
  vocab_xV = jnp.einsum("...d,dv->...v", h, kernel_DxV, preferred_element_type=f32)
  vocab_xV = cap_vocab_logits(cfg, vocab_xV)
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
