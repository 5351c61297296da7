"""Model FLOPs of a train step, counted from the configuration (DESIGN section 12).

Model FLOPs (shape letters: :mod:`cyb_jax.model.layers`; B rows of N tokens, K pauses, L layers)
count 2 FLOPs per multiply-add of every matrix product the model defines: the weight matmuls
of each of the B N (K+1) slots, the vocabulary and DK head of each slot, and the attention
score and value products of each layout as the dense reference computes them; times 3 for
the forward and backward passes. Elementwise work (norms, rotary, softmax, the loss, the
optimiser) is not counted, nor is what an implementation adds: rematerialised forwards,
vocabulary chunks, a fused kernel's padding. Nothing is lowered or compiled, so the count
is the same on every backend.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jax.extend import core as jax_core

from cyb_jax.model.config import ModelConfig


def _check_batch_shape(batch_size: Any, seq_len: Any) -> None:
  for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}={value!r} must be an int >= 1 (the batch is [batch_size, seq_len] tokens).")


def weight_flops_per_slot(cfg: ModelConfig) -> int:
  """Forward FLOPs of one slot through the weight matmuls of all L blocks.

  Per block, the slot's input ``[D]`` is projected to queries ``[H, E]`` and to keys and
  values ``[G, E]`` each (G key/value heads: grouped-query attention), the attention output
  ``[H, E]`` back to ``[D]``, and the gated MLP (SwiGLU or GeGLU: every MLP of the model is
  gated) multiplies by its gate and up kernels ``[D, F]`` and its down kernel ``[F, D]``:

      L * 2 D (2 H E + 2 G E + 3 F)

  FLOPs, 2 per multiply-add. Biases, norms, rotary and the gate's activation are
  elementwise and not counted.
  """
  d, h, g, e = cfg.d_model, cfg.num_heads, cfg.resolved_num_kv_heads, cfg.resolved_head_dim
  return cfg.num_layers * 2 * d * (2 * h * e + 2 * g * e + 3 * cfg.mlp_dim)


def head_flops_per_slot(cfg: ModelConfig) -> int:
  """Forward FLOPs of one slot's V + 1 logits: the vocabulary head ``[D, V]`` and the DK row ``[D]``:

      2 D (V + 1)

  The head reads only the first V of its ``padded_vocab_size`` columns
  (:func:`cyb_jax.model.output_projection`), so vocabulary padding is never computed; a tied
  head (the token embedding transposed) costs what an untied one does. The token and pause
  embeddings are gathers, not products.
  """
  return 2 * cfg.d_model * (cfg.vocab_size + 1)


def attention_pairs(cfg: ModelConfig, seq_len: int) -> int:
  """(query slot, key slot) pairs whose score one query head of one layer computes, per row of N tokens.

  As the dense reference (``attention_impl="xla"``, :func:`cyb_jax.model.attention.attend`)
  computes them, every pair of a block, masked or not: causal masks, document boundaries and
  sliding windows hide pairs but do not remove them from the products.

  ``private`` layout: one causal pass over the N real tokens (N^2 pairs), then K pause steps,
  each attending N pause queries to the N shared real keys plus a private block of J = K
  pause slots per query (all K computed, those not yet written masked):

      (K + 1) N^2 + K^2 N

  ``visible`` layout: one pass over the flat sequence of N (K + 1) slots:

      (N (K + 1))^2

  Both are N^2 for K = 0.
  """
  _check_batch_shape(1, seq_len)
  n, k = seq_len, cfg.max_pauses
  if cfg.pause_layout == "private":
    return (k + 1) * n * n + k * k * n
  if cfg.pause_layout == "visible":
    return (n * (k + 1)) ** 2
  raise ValueError(f"pause_layout={cfg.pause_layout!r} must be 'private' or 'visible'.")


def attention_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> int:
  """Forward FLOPs of the attention score and value products of B rows of N tokens:

      B * L * 4 H E * attention_pairs(cfg, N)

  Each pair costs each query head 2 E FLOPs for its score q.k and 2 E for its share of the
  weighted sum of values; grouped-query attention shares keys and values between heads, not
  this work.
  """
  _check_batch_shape(batch_size, seq_len)
  per_pair = 4 * cfg.num_heads * cfg.resolved_head_dim
  return batch_size * cfg.num_layers * per_pair * attention_pairs(cfg, seq_len)


def forward_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> int:
  """Model FLOPs of the forward pass of B rows of N tokens, each with K + 1 slots per token:

      B N (K + 1) (weight_flops_per_slot + head_flops_per_slot) + attention_flops

  in both layouts: they differ only in their attention pairs.
  """
  _check_batch_shape(batch_size, seq_len)
  slots = batch_size * seq_len * cfg.num_steps
  return slots * (weight_flops_per_slot(cfg) + head_flops_per_slot(cfg)) + attention_flops(cfg, batch_size, seq_len)


def train_step_flops(cfg: ModelConfig, batch_size: int, seq_len: int) -> int:
  """Model FLOPs of one train step (forward and backward) on a global batch ``[B, N]``:

      3 * forward_flops(cfg, B, N)

  The backward pass computes two products per forward product, the gradients of both its
  operands, each with the forward product's FLOPs. This is the count of the ``dot_general``s
  that ``jax.grad`` of the dense model traces (``tests/test_mfu.py`` checks it exactly), with
  one exception: a loss that never reads the DK logit (``ce``, ``pause_ce``) gives it no
  gradient, and autodiff then leaves out the DK row's two backward products, 4 D FLOPs per
  slot fewer than counted here. Micro-batches (gradient accumulation) do not change the
  count; rematerialisation, vocabulary chunks and kernel padding are work of the
  implementation, not of the model, and are not counted.
  """
  return 3 * forward_flops(cfg, batch_size, seq_len)


def traced_matmul_flops(jaxpr) -> int:
  """FLOPs of the ``dot_general``s a jaxpr (or closed jaxpr) executes: 2 * prod(output shape) *
  prod(contracted sizes) each. A count of the traced program, independent of the formulas above
  (``tests/test_mfu.py`` checks them against it); no backend is needed.

  Sub-jaxprs count as they run: a ``scan`` body ``length`` times, a ``cond`` its costliest
  branch, every other (``pjit``, custom_jvp/vjp, remat, scatter combiners) once. A ``while``
  loop with products in it has no static trip count: refused.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's Jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract_lhs, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[i] for i in contract_lhs)
      continue
    subs = [
      x.jaxpr if isinstance(x, jax_core.ClosedJaxpr) else x
      for value in eqn.params.values()
      for x in (value if isinstance(value, (tuple, list)) else (value,))
      if isinstance(x, (jax_core.ClosedJaxpr, jax_core.Jaxpr))
    ]
    counts = [traced_matmul_flops(sub) for sub in subs]
    if eqn.primitive.name == "scan":
      total += eqn.params["length"] * sum(counts)
    elif eqn.primitive.name == "cond":
      total += max(counts)
    elif eqn.primitive.name == "while" and any(counts):
      raise ValueError("a while loop with products has no static trip count")
    else:
      total += sum(counts)
  return total
