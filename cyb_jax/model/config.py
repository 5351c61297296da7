"""`ModelConfig`: the hyperparameters of the pause-aware transformer and their validation.

The defaults are the project's own model (pre-norm blocks, SwiGLU, plain RMSNorm, one rotary
base, full causal attention). The architecture fields express the Llama family (Llama 2/3.x
with `llama3` rotary scaling, Mistral, Qwen2 biases, SmolLM2's tied embeddings) and Gemma 3
text models ((1 + w) norms, GeGLU, sqrt(D) embedding scale, q/k norms, post-sublayer norms,
interleaved sliding-window and global layers with their own rotary bases, soft caps);
`cyb_jax.pretrained.hf_config` maps Hugging Face configs onto them.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

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
MLP_ACTIVATIONS = ("silu", "gelu_tanh")  # SwiGLU (Llama), GeGLU with tanh GELU (Gemma)
ROPE_SCALINGS = (None, "linear", "llama3")
LAYER_TYPES = ("full", "sliding")
# How attention is computed (the same function): "xla" the dense einsum path (the reference),
# "dot_product" a fused flash kernel on GPU for 16-bit dtypes (Pallas, documents as segment ids).
ATTENTION_IMPLS = ("xla", "dot_product", "splash")

# ModelConfig fields that say how the model is computed or initialised, not which function
# its parameters define: a checkpoint may be resumed with other values of these.
# attention_impl: which kernel computes the (same) attention function.
RUNTIME_FIELDS = ("dtype", "remat_policy", "unroll_pause_scan", "dk_bias_init", "attention_impl")

_LLAMA3_FIELDS = ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of the pause-aware transformer (hashable: usable as a static jit argument).

  Attributes:
    vocab_size: V, real tokens; the model emits V+1 logits (DK last).
    num_layers: transformer blocks.
    d_model: D, residual width.
    num_heads: H, query heads.
    mlp_dim: F, gated MLP hidden width.
    max_pauses: K >= 0; K = 0 is an ordinary language model.
    pause_layout: "private" (pauses visible only to their own position) or "visible".
    num_kv_heads: G key/value heads (grouped-query attention); None means H.
    head_dim: E; None means D // H.
    tie_embeddings: use the token embedding (transposed) as the vocabulary head.
    shared_pause_embed: one pause embedding `[1, D]` for every pause index instead of `[K, D]`.
    dtype: compute dtype, "float32" or "bfloat16" (logits are always float32).
    param_dtype: parameter dtype.
    remat_policy: rematerialisation of each block: one of REMAT_POLICIES.
    scan_layers: stack block parameters on a leading "layers" axis and `nn.scan` over them
      (`decoder/layers/...` instead of `decoder/layer_i/...`): a 12-layer train step compiled
      1.5-2.6x faster and ran 15-35% slower on CPU (`benchmarks/compile_time.py`).
    unroll_pause_scan: fully unroll the `lax.scan` over pause steps of the `private` training
      forward: no stacked per-step residuals (less memory, ~5-10% faster steps measured on
      CPU), at K times the compile time of one step.
    dk_bias_init: initial bias of the DK logit (the DK kernel starts at zero).
    attention_impl: one of ATTENTION_IMPLS: "xla" (dense scores, the reference),
      "dot_product" (`cyb_jax.model.attention.kernels`: tokamax's Pallas Mosaic GPU flash
      attention, documents and windows as key ranges, in programs lowered for cuda, in 16 bits;
      a dense kernel of the same contract elsewhere; no `attn_logit_softcap`) or "splash" (Pallas splash attention,
      `cyb_jax.model.attention.splash`: the Mosaic kernel on TPU, interpret mode elsewhere; the
      real-token prefill and the private pause step, with sequence lengths a multiple of 128;
      the flattened slot grid and decoding caches use "xla"). The same function every way.
    rope_base: rotary frequency base (HF `rope_theta`) of full-attention layers, and of
      sliding layers when `rope_local_base` is None.
    rms_norm_eps: epsilon of every RMSNorm: x / sqrt(mean(x^2) + eps).
    norm_plus_one: RMSNorms multiply by (1 + scale) with scale initialised at 0 (Gemma),
      instead of by scale initialised at 1.
    mlp_activation: gate activation of the gated MLP, one of MLP_ACTIVATIONS.
    scale_embeddings: multiply token (and pause) embeddings by sqrt(D), the factor rounded to
      the compute dtype (Gemma).
    qkv_bias: biases on the query, key and value projections (Qwen2).
    out_bias: a bias on the attention output projection.
    qk_norm: RMSNorm over the head dimension of queries and keys before the rotation (Gemma 3).
    post_norms: RMSNorm on the attention and MLP outputs before each residual add (Gemma 2/3:
      4 norms per block).
    query_pre_attn_scalar: attention scores are q.k / sqrt(query_pre_attn_scalar); None means
      q.k / sqrt(E).
    attn_logit_softcap: attention scores become c tanh(s / c) before masking; None: no cap.
    final_logit_softcap: vocabulary logits become c tanh(z / c) (the DK logit is not capped);
      None: no cap.
    rope_scaling: None, "linear" (frequencies / factor) or "llama3" (Llama 3.1 wavelength
      dependent scaling); applies to layers using `rope_base`.
    rope_scaling_factor: the factor of "linear" and "llama3".
    rope_low_freq_factor, rope_high_freq_factor, rope_original_max_positions: the other
      parameters of "llama3" (HF `low_freq_factor`, `high_freq_factor`,
      `original_max_position_embeddings`).
    layer_types: None (every layer "full") or one of LAYER_TYPES per layer: "sliding" layers
      let a query at position n see keys at positions m with n - m < sliding_window.
    sliding_window: W >= 1, required exactly when some layer is "sliding".
    rope_local_base: rotary base of "sliding" layers (unscaled, Gemma's
      `rope_local_base_freq`); None: sliding layers rotate as full layers do.
    vocab_pad_multiple: m >= 1: the token embedding and vocabulary head have
      `padded_vocab_size` = V rounded up to a multiple of m rows/columns (so the vocabulary
      axis splits over a mesh); the padded entries start at zero and are never read (the
      logits are those of the first V entries), so the padded model computes exactly the
      unpadded one (docs/design.md section 10). 1: no padding.
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
  attention_impl: str = "xla"
  rope_base: float = 10000.0
  rms_norm_eps: float = 1e-6
  norm_plus_one: bool = False
  mlp_activation: str = "silu"
  scale_embeddings: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  post_norms: bool = False
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  rope_scaling: str | None = None
  rope_scaling_factor: float | None = None
  rope_low_freq_factor: float | None = None
  rope_high_freq_factor: float | None = None
  rope_original_max_positions: int | None = None
  layer_types: tuple[str, ...] | None = None
  sliding_window: int | None = None
  rope_local_base: float | None = None
  vocab_pad_multiple: int = 1

  def __post_init__(self):
    if self.layer_types is not None and not isinstance(self.layer_types, tuple):
      if isinstance(self.layer_types, str):
        raise ValueError(f"layer_types must be a sequence of {LAYER_TYPES}, got {self.layer_types!r}")
      object.__setattr__(self, "layer_types", tuple(self.layer_types))  # lists from JSON/configs
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim"):
      _check_int(name, getattr(self, name), minimum=1)
    _check_int("max_pauses", self.max_pauses, minimum=0)
    _check_int("vocab_pad_multiple", self.vocab_pad_multiple, minimum=1)
    for name in (
      "tie_embeddings",
      "shared_pause_embed",
      "scan_layers",
      "unroll_pause_scan",
      "norm_plus_one",
      "scale_embeddings",
      "qkv_bias",
      "out_bias",
      "qk_norm",
      "post_norms",
    ):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
    if self.num_kv_heads is not None:
      _check_int("num_kv_heads", self.num_kv_heads, minimum=1)
    if self.head_dim is not None:
      _check_int("head_dim", self.head_dim, minimum=2)
    _check_choice("pause_layout", self.pause_layout, PAUSE_LAYOUTS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
    _check_choice("mlp_activation", self.mlp_activation, MLP_ACTIVATIONS)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    if self.attention_impl == "dot_product" and self.attn_logit_softcap is not None:
      raise ValueError(
        f"attention_impl={self.attention_impl!r} does not support attn_logit_softcap="
        f"{self.attn_logit_softcap!r} (jax.nn.dot_product_attention has no soft cap): use "
        "attention_impl 'xla' or 'splash'"
      )
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
        f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
        "change one of them or set head_dim explicitly"
      )
    if self.num_heads % self.resolved_num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
    if self.resolved_head_dim % 2:
      raise ValueError(
        "head dimension (head_dim or d_model // num_heads) must be even for rotary positions, "
        f"got {self.resolved_head_dim}"
      )
    if not math.isfinite(self.dk_bias_init):
      raise ValueError(f"dk_bias_init must be finite, got {self.dk_bias_init}")
    _check_positive("rope_base", self.rope_base)
    _check_positive("rms_norm_eps", self.rms_norm_eps)
    for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap", "rope_local_base"):
      if getattr(self, name) is not None:
        _check_positive(name, getattr(self, name))
    self._check_rope_scaling()
    self._check_layer_types()

  def _check_rope_scaling(self):
    _check_choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
    needed = {None: (), "linear": ("rope_scaling_factor",), "llama3": ("rope_scaling_factor",) + _LLAMA3_FIELDS}[
      self.rope_scaling
    ]
    for name in ("rope_scaling_factor",) + _LLAMA3_FIELDS:
      value = getattr(self, name)
      if name in needed and value is None:
        raise ValueError(f"rope_scaling={self.rope_scaling!r} needs {name}, got None")
      if name not in needed and value is not None:
        raise ValueError(
          f"{name}={value!r} must be None with rope_scaling={self.rope_scaling!r}, which does not use it"
        )
    if self.rope_scaling_factor is not None:
      _check_positive("rope_scaling_factor", self.rope_scaling_factor)
    if self.rope_scaling == "llama3":
      _check_positive("rope_low_freq_factor", self.rope_low_freq_factor)
      _check_positive("rope_high_freq_factor", self.rope_high_freq_factor)
      _check_int("rope_original_max_positions", self.rope_original_max_positions, minimum=1)
      if not self.rope_high_freq_factor > self.rope_low_freq_factor:
        raise ValueError(
          f"rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
          f"rope_low_freq_factor={self.rope_low_freq_factor}"
        )

  def _check_layer_types(self):
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(f"layer_types has {len(self.layer_types)} entries, num_layers={self.num_layers}")
      for kind in self.layer_types:
        _check_choice("layer_types entry", kind, LAYER_TYPES)
    has_sliding = "sliding" in self.resolved_layer_types
    if has_sliding:
      _check_int("sliding_window", self.sliding_window, minimum=1)
    elif self.sliding_window is not None:
      raise ValueError(
        f"sliding_window={self.sliding_window!r} needs some layer_types entry 'sliding'; "
        "set layer_types or leave sliding_window None"
      )
    if self.rope_local_base is not None and not has_sliding:
      raise ValueError(f"rope_local_base={self.rope_local_base!r} needs some 'sliding' layer")

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the token embedding (columns of the vocabulary head): V rounded up to a
    multiple of `vocab_pad_multiple`."""
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m

  @property
  def resolved_num_kv_heads(self) -> int:
    """G: num_kv_heads, or num_heads when unset."""
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def resolved_head_dim(self) -> int:
    """E: head_dim, or d_model // num_heads when unset."""
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def resolved_layer_types(self) -> tuple[str, ...]:
    """One of LAYER_TYPES per layer ("full" everywhere when layer_types is None)."""
    return ("full",) * self.num_layers if self.layer_types is None else self.layer_types

  @property
  def num_steps(self) -> int:
    """K + 1 slots per position."""
    return self.max_pauses + 1

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def attention_scale(self) -> float:
    """Multiplier of q.k: query_pre_attn_scalar^-1/2, or E^-1/2."""
    scalar = self.query_pre_attn_scalar
    if scalar is None:
      scalar = self.resolved_head_dim
    return float(scalar) ** -0.5

  @property
  def rope_scaling_params(self) -> tuple | None:
    """Hashable rotary scaling of full layers: None, ("linear", factor) or
    ("llama3", factor, low_freq_factor, high_freq_factor, original_max_positions)."""
    if self.rope_scaling is None:
      return None
    if self.rope_scaling == "linear":
      return ("linear", float(self.rope_scaling_factor))
    return (
      "llama3",
      float(self.rope_scaling_factor),
      float(self.rope_low_freq_factor),
      float(self.rope_high_freq_factor),
      int(self.rope_original_max_positions),
    )


def _check_int(name: str, value, *, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_choice(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
