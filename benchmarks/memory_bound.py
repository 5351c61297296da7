r"""An analytic estimate of the train step's memory per device, one function per term.

It is an estimate, not a prediction of XLA's buffer assignment: it adds up the tensors the
step cannot do without, each once, as if all were live together, and none of the copies,
float32 intermediates, fusion temporaries or padding a compiler adds. So it is usually below
the compiled peak (1.5-1.9x below for the acceptance check's 135M model without remat, whose
loss holds three float32 copies of the logits and whose pause scan saves float32 values); it
can be slightly above where the activations are small, since the gradients build up while the
activations are freed (0.94 for the 1B model with remat ``full`` at K = 0).
``benchmarks/gpu_compile.py`` sets it beside the compiled program's memory
(``peak / estimate``); ``benchmarks/tpu_compile.py`` can do the same.

Notation (shape letters of ``cyb_jax.model.layers``): B rows and N tokens per row on this
device, K pauses, T = N (K + 1) slots per row, L layers, D = d_model, H query heads, G
key/value heads, E head width, F MLP width, V' the padded vocabulary (V' + 1 logits with
DK), P the parameters' bytes (from their real dtypes), a the bytes of one element of the
compute dtype (``model.dtype``). S is the length one attention call attends over: N on the
``private`` layout (the real pass, then each pause step against the N real keys), T on the
``visible`` layout (the flattened slot grid). Every term is in bytes:

  total = state + gradients + saved activations + pause keys/values + one layer's working set
          + one loss chunk + attention scores.
"""

from __future__ import annotations

from cyb_jax.model.config import ModelConfig

F32 = 4  # bytes of a float32 element
# Remat policies that save no activation inside a block: only each block's input is kept.
SAVE_INPUTS_ONLY = ("full", "nothing_saveable")


def optimizer_state_bytes(param_bytes: int) -> int:
  """3 P: the parameters and AdamW's two moments, each in the parameters' dtype
  (``optax.adamw`` keeps ``mu`` and ``nu`` like the parameters; the step counter is negligible)."""
  return 3 * param_bytes


def gradient_bytes(param_bytes: int) -> int:
  """P: one gradient per parameter, in the parameters' dtype, held from the backward pass to
  the update."""
  return param_bytes


def slots(cfg: ModelConfig, n: int) -> int:
  """T = N (K + 1): the slots of one row."""
  return n * cfg.num_steps


def attended_length(cfg: ModelConfig, n: int) -> int:
  """S: N on the ``private`` layout, T = N (K + 1) on the ``visible`` layout."""
  return n if cfg.pause_layout == "private" else slots(cfg, n)


def block_activation_width(cfg: ModelConfig) -> int:
  """W = 4 D + 2 H E + 2 G E + 3 F: the values one block computes per slot that its backward
  pass reads: its input, the attention norm's output, q, k and v, the attention output, the
  residual after attention, the MLP norm's output, gate and up, and their gated product."""
  h, g, e = cfg.num_heads, cfg.resolved_num_kv_heads, cfg.resolved_head_dim
  return 4 * cfg.d_model + 2 * h * e + 2 * g * e + 3 * cfg.mlp_dim


def saved_activation_bytes(cfg: ModelConfig, b: int, n: int) -> int:
  """What the forward pass keeps for the backward pass, every layer and slot:
  L B T D a with remat ``full`` (each block's input; the block is recomputed), else
  L B T W a (``block_activation_width``: without remat, or a policy that saves dots)."""
  width = cfg.d_model if cfg.remat_policy in SAVE_INPUTS_ONLY else block_activation_width(cfg)
  return cfg.num_layers * b * slots(cfg, n) * width * cfg.compute_dtype.itemsize


def pause_kv_bytes(cfg: ModelConfig, b: int, n: int) -> int:
  """2 L B N G E a (1 + K^2) on the ``private`` layout with K > 0, else 0: the real tokens'
  keys and values, which every pause step reads, and the pause scan's key/value buffer
  ``[L, B, N, K, G, E]`` (keys and values), which the scan keeps as the input of each of its
  K steps for the backward pass."""
  k = cfg.max_pauses
  if cfg.pause_layout != "private" or k == 0:
    return 0
  per_token = 2 * cfg.num_layers * cfg.resolved_num_kv_heads * cfg.resolved_head_dim * cfg.compute_dtype.itemsize
  return b * n * per_token * (1 + k * k)


def layer_working_set_bytes(cfg: ModelConfig, b: int, n: int) -> int:
  """B S W a: the activations of one block over one attention pass (the N slots of the real
  pass or of one pause step on ``private``, the T slots on ``visible``), as the backward pass
  recomputes them under remat, or as their cotangents without it."""
  return b * attended_length(cfg, n) * block_activation_width(cfg) * cfg.compute_dtype.itemsize


def loss_chunk_bytes(cfg: ModelConfig, b: int, n: int, vocab_chunk: int | None) -> int:
  """2 x 4 B T C: one chunk of float32 logits over every slot and its gradient, C = min(
  ``vocab_chunk``, V' + 1), or C = V' + 1 (the whole logits) when ``vocab_chunk`` is None."""
  logits = cfg.padded_vocab_size + 1
  width = logits if vocab_chunk is None else min(vocab_chunk, logits)
  return 2 * F32 * b * slots(cfg, n) * width


def score_bytes(cfg: ModelConfig, b: int, n: int) -> int:
  """4 B H S S c on the ``xla`` path: float32 scores ``[B, H, S, S]`` (the softmax's
  probabilities, which its backward pass reads) of c attention calls: c = 1 with remat
  ``full`` (the block being recomputed), c = L (K + 1) on ``private`` and c = L on ``visible``
  without (every call's, kept for the backward pass). 0 for a fused kernel (``dot_product``,
  ``splash``), which keeps only the log-normaliser ``[B, S, H]``."""
  if cfg.attention_impl != "xla":
    return 0
  s = attended_length(cfg, n)
  calls = 1
  if cfg.remat_policy not in SAVE_INPUTS_ONLY:
    calls = cfg.num_layers * (cfg.num_steps if cfg.pause_layout == "private" else 1)
  return F32 * b * cfg.num_heads * s * s * calls


def train_step_estimate(
  cfg: ModelConfig,
  rows: int,
  seq_len: int,
  vocab_chunk: int | None,
  param_bytes: int,
  *,
  param_shards: int = 1,
  row_shards: int = 1,
) -> dict[str, int]:
  """Every term of the module docstring's estimate, and their ``total``, for one device.

  Args:
    cfg: the model.
    rows: the global batch B (rows of one step; one micro-batch's under gradient accumulation).
    seq_len: N.
    vocab_chunk: ``loss.vocab_chunk`` (None: the whole logits).
    param_bytes: P, the parameters' bytes in their dtypes, unsharded.
    param_shards: devices the parameters, moments and gradients are split over (the mesh's
      fsdp x tensor).
    row_shards: devices the rows are split over (the mesh's data x fsdp); activations are
      per row, so each device holds ``rows / row_shards`` rows of them.

  Returns:
    ``{"state", "gradients", "activations", "pause_kv", "layer", "loss_chunk", "scores",
    "total"}`` in bytes.
  """
  b = max(rows // row_shards, 1)
  terms = dict(
    state=optimizer_state_bytes(param_bytes) // param_shards,
    gradients=gradient_bytes(param_bytes) // param_shards,
    activations=saved_activation_bytes(cfg, b, seq_len),
    pause_kv=pause_kv_bytes(cfg, b, seq_len),
    layer=layer_working_set_bytes(cfg, b, seq_len),
    loss_chunk=loss_chunk_bytes(cfg, b, seq_len, vocab_chunk),
    scores=score_bytes(cfg, b, seq_len),
  )
  terms["total"] = sum(terms.values())
  return terms
