"""The pause-aware decoder-only transformer ("Catch Your Breath", DESIGN sections 1-2).

For tokens `[B, N]` and at most K pauses, every position n has K+1 slots (n, k): slot (n, 0)
reads token x_n, slot (n, k>0) reads `pause_embed[k-1]`, all at rotary position n, and every
slot predicts x_{n+1} with V+1 logits (the vocabulary, then <don't know> (DK) last).

The architecture (the project's own, the Llama family or Gemma 3, see `ModelConfig`) is in
`cyb_jax.model.transformer`; this module holds the public functions of `(cfg, params, ...)`.

Two attention layouts over the slot grid (`ModelConfig.pause_layout`):
  private: slot (n, k) sees real slots (m, 0), m <= n, and its own pauses (n, 1..k). Computed
    as one causal pass over the real tokens (keeping every layer's keys/values) and a
    `lax.scan` over k = 1..K; each step runs the N pause slots of index k in parallel against
    the real keys/values plus a per-position buffer of pause keys/values `[B, N, K, G, E]`.
    Attention work is (K+1) N^2.
  visible: slot (n, k) sees every slot of earlier positions and (n, k') for k' <= k; computed
    on the flattened grid of N (K+1) slots, which is causal in interleaved order.
`step_hidden_flat` computes either layout on the flattened grid (the reference for `private`).

Sliding-window layers apply their window by rotary position in both layouts: a pause slot of
position n sees exactly the real tokens a real slot at n sees, plus its own pauses (private).
The model is a Flax linen module applied as a pure function of a params pytree; shape letters:
see `cyb_jax.model.layers`.

The package `cyb_jax.model` holds the model and everything that computes it: `config`
(`ModelConfig`), `layers`, `attention` (the dense reference, the fused GPU kernel, the splash
TPU kernel), `transformer` (the Flax modules), this module (the public functions), `flops`
(its FLOPs), `decode` (adaptive decoding) and `samples`. It imports nothing of the project
but `losses` (never `training`, `analysis` or `experiment`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

import cyb_jax
from cyb_jax.model.attention import KeyValues
from cyb_jax.model.attention import LayerCache
from cyb_jax.model.attention import Visibility
from cyb_jax.model.attention import slot_mask
from cyb_jax.model.config import DTYPES
from cyb_jax.model.config import LAYER_TYPES
from cyb_jax.model.config import MLP_ACTIVATIONS
from cyb_jax.model.config import PAUSE_LAYOUTS
from cyb_jax.model.config import REMAT_POLICIES
from cyb_jax.model.config import ROPE_SCALINGS
from cyb_jax.model.config import RUNTIME_FIELDS
from cyb_jax.model.config import ModelConfig
from cyb_jax.model.transformer import Block
from cyb_jax.model.transformer import Decoder
from cyb_jax.model.transformer import Transformer
from cyb_jax.model.transformer import _project
from cyb_jax.model.transformer import _project_parts
from cyb_jax.model.transformer import cap_vocab_logits

__all__ = [  # ModelConfig (cyb_jax.model.config) and the modules (cyb_jax.model.transformer) re-exported.
  "DTYPES",
  "LAYER_TYPES",
  "MLP_ACTIVATIONS",
  "PAUSE_LAYOUTS",
  "REMAT_POLICIES",
  "ROPE_SCALINGS",
  "RUNTIME_FIELDS",
  "ModelConfig",
  "Block",
  "Decoder",
  "Transformer",
  "cap_vocab_logits",
  "embed_pause",
  "embed_tokens",
  "hidden_states",
  "init_params",
  "logits_from_hidden",
  "output_projection",
  "param_logical_axes",
  "split_logits_from_hidden",
  "step_hidden",
  "step_hidden_flat",
  "step_logits",
]


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

  Vocabulary logits are cap_vocab_logits(hidden @ output_kernel) (the token embedding transposed
  when tied; the cap only with `final_logit_softcap`); the DK logit is hidden @ dk_kernel + dk_bias.
  Only the first V of `padded_vocab_size` entries are returned: padding never becomes a logit.
  """
  if cfg.tie_embeddings:
    output_kernel_DxV = params["token_embed"][: cfg.vocab_size].T
  else:
    output_kernel_DxV = params["vocab_head"]["kernel"][:, : cfg.vocab_size]
  return output_kernel_DxV, params["dk_head"]["kernel"], params["dk_head"]["bias"]


def logits_from_hidden(cfg: ModelConfig, params, hidden_xD: jax.Array) -> jax.Array:
  """float32 logits `[..., V+1]` = concat(hidden @ output_kernel, hidden @ dk_kernel + dk_bias).

  Products run in the compute dtype with float32 accumulation.
  """
  return _project(cfg, *output_projection(cfg, params), hidden_xD)


def split_logits_from_hidden(cfg: ModelConfig, params, hidden_xD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`logits_from_hidden` as its two parts: vocabulary logits `[..., V]` and the DK logit `[...]`.

  For `losses.step_log_probs_from_parts`: joining the parts only to slice them apart again
  costs two extra `[..., V+1]` buffers in the backward pass.
  """
  return _project_parts(cfg, *output_projection(cfg, params), hidden_xD)


# ----------------------------------------------------------------------------------------------
# Pieces used by the training forward and by the decoder (`cyb_jax.model.decode`).


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
  attention wrote (see `cyb_jax.model.attention`): own keys `[L, B, S, G, E]` without a cache, the
  updated shared cache, or the updated private buffer.
  """
  return _apply(cfg, params, Transformer.hidden, x_BxSxD, positions_BxS, cache, visibility)


# ----------------------------------------------------------------------------------------------
# Training forward.


def _default_ids(tokens_BxN, segment_ids, positions):
  if tokens_BxN.ndim != 2 or not jnp.issubdtype(tokens_BxN.dtype, jnp.integer):
    raise ValueError(f"tokens must be an integer array [B, N], got {tokens_BxN.dtype} {tokens_BxN.shape}")
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
  x_BxNxD = embed_tokens(cfg, params, tokens_BxN)
  # The real tokens' mask is causal_segment_mask(segment_ids): a dense kernel builds it, a fused one
  # reads the segment ids.
  hidden0_BxNxD, real = hidden_states(
    cfg, params, x_BxNxD, positions_BxN, None, Visibility(None, segment_ids=segment_ids_BxN)
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
      shared_mask=None,
      private_mask=(jnp.arange(k_max) < k)[None, None, :],
      write_index=k - 1,
      shared_positions=positions_BxN,
      segment_ids=segment_ids_BxN,
    )
    hidden_BxNxD, pauses = hidden_states(cfg, params, x_BxNxD, positions_BxN, LayerCache(real, pauses), visibility)
    return pauses, hidden_BxNxD

  _, hidden_KxBxNxD = jax.lax.scan(pause_step, pauses_init, jnp.arange(1, k_max + 1), unroll=cfg.unroll_pause_scan or 1)
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
    raise ValueError(f"taken_pauses must have the tokens' shape {tokens_BxN.shape}, got {taken_pauses.shape}")
  if cfg.pause_layout == "visible" and taken_pauses is None:  # causal within documents on the flat grid
    flat_segment_ids_BxS = jnp.repeat(segment_ids, steps, axis=1)
    visibility = Visibility(None, segment_ids=flat_segment_ids_BxS, slots_per_position=steps)
  else:
    visibility = Visibility(slot_mask(segment_ids, steps, cfg.pause_layout, taken_pauses))
  hidden_BxSxD, _ = hidden_states(cfg, params, x_BxSxD, positions_BxS, None, visibility)
  return hidden_BxSxD.reshape(b, n, steps, cfg.d_model)


def step_hidden(cfg: ModelConfig, params, tokens_BxN, *, segment_ids=None, positions=None) -> jax.Array:
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


def step_logits(cfg: ModelConfig, params, tokens_BxN, *, segment_ids=None, positions=None) -> jax.Array:
  """float32 step logits `[B, N, K+1, V+1]`: slot (n, k)'s prediction of x_{n+1}, DK last.

  Equals `logits_from_hidden(cfg, params, step_hidden(...))`; see `step_hidden` for the args.
  """
  hidden_BxNxKxD = step_hidden(cfg, params, tokens_BxN, segment_ids=segment_ids, positions=positions)
  return logits_from_hidden(cfg, params, hidden_BxNxKxD)


# Submodules reached as attributes (``cyb_jax.model.x``) without importing them first (PEP 562).
__getattr__ = cyb_jax.lazy_submodules(
  globals(), ("config", "layers", "transformer", "attention", "flops", "decode", "samples")
)
