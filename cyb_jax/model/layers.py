"""Position-wise building blocks of the transformer: RMSNorm, gated MLP, rotary positions.

Shape letters used in tensor names throughout the model code:
  B batch, S query slots, M shared key slots, J private (per-query) key slots, N positions,
  K steps (the K+1 slots of one position), D model width, F MLP width, H query heads,
  G key/value heads, R = H / G query heads per key/value head, E head dimension,
  V vocabulary (V+1 with the <don't know> logit), L layers, T generated tokens.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and the main
activations carry logical constraints (`nn.with_logical_constraint`), which are no-ops unless
axis rules are in scope.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = jnp.dtype


def fan_in_init(in_axis: int | Sequence[int], out_axis: int | Sequence[int]) -> nn.initializers.Initializer:
  """LeCun truncated normal (variance 1 / fan_in) for kernels with several in or out axes."""
  return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


class RMSNorm(nn.Module):
  """Root-mean-square normalisation, computed in float32, returned in `dtype`:

    y = x / sqrt(mean(x^2) + eps) * scale          (scale initialised at 1), or
    y = x / sqrt(mean(x^2) + eps) * (1 + scale)    (`plus_one`, scale initialised at 0: Gemma).

  Input `x_...xD`, output the same shape. The scale `[D]` has logical axis "norm".
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  eps: float = 1e-6
  plus_one: bool = False

  @nn.compact
  def __call__(self, x_xD: jax.Array) -> jax.Array:
    d = x_xD.shape[-1]
    base_init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    init = nn.with_logical_partitioning(base_init, ("norm",))
    scale_D = self.param("scale", init, (d,), self.param_dtype).astype(jnp.float32)
    x32 = x_xD.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale_D if self.plus_one else scale_D)).astype(self.dtype)


_GATE_ACTIVATIONS = {
  "silu": jax.nn.silu,  # SwiGLU
  "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # GeGLU, tanh GELU
}


class GatedMLP(nn.Module):
  """Gated MLP: y = (act(x W_gate) * (x W_up)) W_down, for x `[B, S, D]` -> y `[B, S, D]`.

  `activation` "silu" is SwiGLU (Llama), "gelu_tanh" GeGLU with the tanh GELU (Gemma).
  """

  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  activation: str = "silu"

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
    d = x_BxSxD.shape[-1]
    in_init = nn.with_logical_partitioning(fan_in_init(0, 1), ("embed", "mlp"))
    gate_DxF = self.param("gate_kernel", in_init, (d, self.mlp_dim), self.param_dtype)
    up_DxF = self.param("up_kernel", in_init, (d, self.mlp_dim), self.param_dtype)
    out_init = nn.with_logical_partitioning(fan_in_init(0, 1), ("mlp", "embed"))
    down_FxD = self.param("down_kernel", out_init, (self.mlp_dim, d), self.param_dtype)
    x = x_BxSxD.astype(self.dtype)
    gate_BxSxF = jnp.einsum("bsd,df->bsf", x, gate_DxF.astype(self.dtype))
    up_BxSxF = jnp.einsum("bsd,df->bsf", x, up_DxF.astype(self.dtype))
    h_BxSxF = nn.with_logical_constraint(
      _GATE_ACTIVATIONS[self.activation](gate_BxSxF) * up_BxSxF,
      ("act_batch", "act_length", "act_mlp"),
    )
    return jnp.einsum("bsf,fd->bsd", h_BxSxF, down_FxD.astype(self.dtype))


SwiGLU = GatedMLP  # the name of the default activation


def rope_inv_freq(head_dim: int, base: float, scaling: tuple | None = None) -> jax.Array:
  """Rotary frequencies `[E / 2]` float32: w_p = base^(-p / P), P = E / 2, then scaled.

  `scaling` (`ModelConfig.rope_scaling_params`): None; ("linear", f): w / f; or
  ("llama3", f, low, high, L): with wavelengths l = 2 pi / w, w / f where l > L / low, w where
  l < L / high, and in between (1 - s) w / f + s w with s = (L / l - low) / (high - low).
  """
  half = head_dim // 2
  inv_freq_P = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if scaling is None:
    return inv_freq_P
  if scaling[0] == "linear":
    return inv_freq_P / scaling[1]
  if scaling[0] != "llama3":
    raise ValueError(f"rotary scaling must be None, 'linear' or 'llama3', got {scaling[0]!r}")
  _, factor, low, high, original = scaling
  wavelen_P = 2 * math.pi / inv_freq_P
  scaled_P = jnp.where(wavelen_P > original / low, inv_freq_P / factor, inv_freq_P)
  smooth_P = (original / wavelen_P - low) / (high - low)
  smoothed_P = (1 - smooth_P) * scaled_P / factor + smooth_P * scaled_P
  medium_P = (wavelen_P >= original / high) & (wavelen_P <= original / low)
  return jnp.where(medium_P, smoothed_P, scaled_P)


def apply_rotary(
  x_BxSxHxE: jax.Array, positions_BxS: jax.Array, base: float | None = None, *, inv_freq_P: jax.Array | None = None
) -> jax.Array:
  """Rotary position embedding (rotate-half form) at integer positions.

  With E = 2P, frequencies w_p (`inv_freq_P`, default base^(-p / P)), angles a = position * w_p,
  the two halves (x1, x2) of the head dimension become (x1 cos a - x2 sin a, x2 cos a + x1 sin a).
  Dot products of rotated queries and keys then depend only on the difference of their
  positions. Computed in float32, returned in x's dtype.
  """
  half = x_BxSxHxE.shape[-1] // 2
  if inv_freq_P is None:
    inv_freq_P = rope_inv_freq(2 * half, base)
  angle_BxSx1xP = (positions_BxS.astype(jnp.float32)[..., None] * inv_freq_P)[:, :, None, :]
  sin, cos = jnp.sin(angle_BxSx1xP), jnp.cos(angle_BxSx1xP)
  x = x_BxSxHxE.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxSxHxE.dtype)
