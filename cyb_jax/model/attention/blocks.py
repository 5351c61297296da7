"""The pieces both attention paths share: key/value blocks and the exact softmax of one block.

A block's softmax returns its output and its log-normaliser, so blocks over disjoint keys
(the shared real-token keys and a position's private pause keys) merge exactly:
``out = sum_b e^{lse_b} out_b / sum_b e^{lse_b}`` (:mod:`cyb_jax.model.attention`,
:mod:`cyb_jax.model.attention.kernels`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

MASKED = -1e30  # finite "minus infinity": masked scores never produce inf - inf.


@struct.dataclass
class KeyValues:
  """Keys and values with the same shape: `[B, M, G, E]` (shared) or `[B, S, J, G, E]` (private).

  Caches of the whole stack carry a leading layer axis L.
  """

  k: jax.Array
  v: jax.Array


def softmax_block(scores_BxGxRxSxC: jax.Array, weighted_sum) -> tuple[jax.Array, jax.Array]:
  """Softmax attention over one block of C candidate keys (masked scores set to MASKED).

  Returns `(out [B, G, R, S, E], log_normaliser [B, G, R, S])`: out = sum_c p_c v_c with
  p = softmax(scores), and log_normaliser = logsumexp(scores), which merges blocks exactly.
  """
  # Softmax is shift-invariant, so the shift needs no gradient.
  row_max_BxGxRxSx1 = jax.lax.stop_gradient(scores_BxGxRxSxC.max(-1, keepdims=True))
  weights_BxGxRxSxC = jnp.exp(scores_BxGxRxSxC - row_max_BxGxRxSx1)
  normaliser_BxGxRxS = weights_BxGxRxSxC.sum(-1)
  out_BxGxRxSxE = weighted_sum(weights_BxGxRxSxC) / normaliser_BxGxRxS[..., None]
  return out_BxGxRxSxE, jnp.log(normaliser_BxGxRxS) + row_max_BxGxRxSx1[..., 0]


def merge_blocks(out_a, lse_a, out_b, lse_b) -> jax.Array:
  """The softmax over the union of two blocks of disjoint keys, from each block's softmax:

      out = sigmoid(lse_a - lse_b) out_a + sigmoid(lse_b - lse_a) out_b

  (`out_* [..., E]`, `lse_* [...]`), which is `sum_b e^{lse_b} out_b / sum_b e^{lse_b}`
  computed without overflow. In float32 when either output is.
  """
  share_a = jax.nn.sigmoid(lse_a - lse_b)[..., None]
  return share_a * out_a + (1.0 - share_a) * out_b


def dividing_axes(axes, size: int, mesh):
  """`axes` (mesh axis names, one or a tuple, or None) if their devices divide `size`, else None
  (that dimension is then replicated inside a kernel's shard_map)."""
  names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  devices = 1
  for name in names:
    devices *= mesh.shape[name]
  return axes if size % devices == 0 else None
