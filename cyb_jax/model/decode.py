"""Jitted autoregressive decoding with pauses and adaptive halting (DESIGN section 6).

One compiled program per (config, shapes, max_new_tokens): a prefill of the prompt, then a
`lax.scan` over tokens; each step reads one real token into the KV cache, then runs an inner
`lax.while_loop` over pause steps k = 1..K that ends as soon as every sequence of the batch has
answered (a per-sequence `done` mask; steps run for sequences already done change nothing),
then picks the next token.

Halting at step k with logits z_k (`[V+1]`, DK last) and d_k = softmax(z_k)[V]:
  "threshold": answer at the first k with d_k <= threshold;
  "greedy":    answer at the first k whose argmax over all V+1 logits is not DK;
  "sample":    answer with probability 1 - d_k (DK is just another outcome);
  "max":       always take all K pauses.
Every policy answers at k = K. The answer is argmax of z_k[:V] (temperature 0) or a sample of
softmax(z_k[:V] / temperature). The policy, threshold and temperature are traced values, so
changing them does not recompile.

Caches (shape letters: see `cyb_jax.model.layers`):
  private: the main cache `[L, B, M, G, E]` holds real tokens only (M = P + T - 1); a token's
    pauses use a scratch buffer `[L, B, 1, K, G, E]` that is dropped once the token is answered.
    The prompt is one causal pass. Step logits equal `model.step_logits`' for the same slots.
  visible: a fixed-horizon cache with K+1 slots per position, M = (P + T - 1)(K + 1), slot
    (n, k) at n (K+1) + k, and a validity mask: only pauses actually taken become visible.
    The prompt is read token by token with the same halting policy (teacher forced), so with
    "max" the step logits equal `model.step_logits`' everywhere.
Sliding-window layers mask cache slots by their rotary position (the cache keeps every slot;
it is not a ring buffer), so decoding computes what the training forward computes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from cyb_jax import model as model_lib
from cyb_jax.model import ModelConfig
from cyb_jax.model.attention import KeyValues
from cyb_jax.model.attention import LayerCache
from cyb_jax.model.attention import Visibility
from cyb_jax.model.attention import causal_segment_mask

HALTING_POLICIES = ("threshold", "greedy", "sample", "max")

_CACHE_NAMES = (None, "act_batch", "act_length", "act_kv_heads", None)
_SCRATCH_NAMES = (None, "act_batch", None, None, "act_kv_heads", None)


@struct.dataclass
class _State:
  """Decoder state after reading the real token at `position`."""

  cache: KeyValues  # [L, B, M, G, E]
  valid_BxM: jax.Array  # bool: cache slots visible to later queries
  position: jax.Array  # int32 scalar n, -1 before the first token
  logits0_BxV1: jax.Array  # float32 step-0 logits of position n


@struct.dataclass
class _Policy:
  """Traced decoding controls."""

  index: jax.Array  # int32 index into HALTING_POLICIES
  threshold: jax.Array  # float32
  temperature: jax.Array  # float32


def _constrain_cache(cache: KeyValues) -> KeyValues:
  return nn.with_logical_constraint(cache, KeyValues(_CACHE_NAMES, _CACHE_NAMES))


def _cache_slots(cfg: ModelConfig, positions: int) -> int:
  return positions * (cfg.num_steps if cfg.pause_layout == "visible" else 1)


def _slot_index(cfg: ModelConfig, position: jax.Array, k) -> jax.Array:
  """Cache index of slot (position, k): position (private) or position (K+1) + k (visible)."""
  if cfg.pause_layout == "private":
    return position
  return position * cfg.num_steps + k


def _cache_positions(cfg: ModelConfig, cache_slots: int) -> jax.Array:
  """`[1, M]` rotary positions of the cache slots (for sliding-window layers)."""
  return (jnp.arange(cache_slots, dtype=jnp.int32) // _cache_slots(cfg, 1))[None]


def _empty_state(cfg: ModelConfig, batch: int, cache_slots: int) -> _State:
  shape = (cfg.num_layers, batch, cache_slots, cfg.resolved_num_kv_heads, cfg.resolved_head_dim)
  zeros = jnp.zeros(shape, cfg.compute_dtype)
  return _State(
    cache=_constrain_cache(KeyValues(zeros, zeros)),
    valid_BxM=jnp.zeros((batch, cache_slots), bool),
    position=jnp.asarray(-1, jnp.int32),
    logits0_BxV1=jnp.zeros((batch, cfg.vocab_size + 1), jnp.float32),
  )


def _prefill_private(cfg: ModelConfig, params, tokens_BxP, cache_slots: int) -> _State:
  """`private` state after one causal pass over `tokens` (pauses never affect later positions)."""
  b, p = tokens_BxP.shape
  state = _empty_state(cfg, b, cache_slots)
  if p == 0:
    return state
  positions_BxP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  visibility = Visibility(shared_mask=causal_segment_mask(jnp.ones((1, p), jnp.int32)))
  x_BxPxD = model_lib.embed_tokens(cfg, params, tokens_BxP)
  hidden_BxPxD, kv = model_lib.hidden_states(cfg, params, x_BxPxD, positions_BxP, None, visibility)
  cache = jax.tree.map(lambda buf, new: buf.at[:, :, :p].set(new.astype(buf.dtype)), state.cache, kv)
  return _State(
    cache=_constrain_cache(cache),
    valid_BxM=jnp.broadcast_to(jnp.arange(cache_slots) < p, (b, cache_slots)),
    position=jnp.asarray(p - 1, jnp.int32),
    logits0_BxV1=model_lib.logits_from_hidden(cfg, params, hidden_BxPxD[:, -1]),
  )


def _run_slot(cfg, params, x_BxD, position, cache: LayerCache, visibility: Visibility):
  """Runs one slot per sequence at rotary `position`: `-> (logits [B, V+1], written)`."""
  positions_Bx1 = jnp.full((x_BxD.shape[0], 1), position, jnp.int32)
  hidden_Bx1xD, written = model_lib.hidden_states(cfg, params, x_BxD[:, None], positions_Bx1, cache, visibility)
  return model_lib.logits_from_hidden(cfg, params, hidden_Bx1xD[:, 0]), written


def _feed_token(cfg: ModelConfig, params, state: _State, token_B: jax.Array) -> _State:
  """Reads real token `token_B` at position n + 1 into the cache, with its step-0 logits."""
  position = state.position + 1
  index = _slot_index(cfg, position, 0)
  slots_M = jnp.arange(state.valid_BxM.shape[1])
  if cfg.pause_layout == "private":
    valid_BxM = jnp.broadcast_to(slots_M <= index, state.valid_BxM.shape)
  else:
    valid_BxM = state.valid_BxM | (slots_M == index)[None]
  x_BxD = model_lib.embed_tokens(cfg, params, token_B[:, None])[:, 0]
  visibility = Visibility(
    shared_mask=valid_BxM[:, None], write_index=index, shared_positions=_cache_positions(cfg, valid_BxM.shape[1])
  )
  logits0, cache = _run_slot(cfg, params, x_BxD, position, LayerCache(state.cache), visibility)
  return _State(_constrain_cache(cache), valid_BxM, position, logits0)


def _halts(cfg: ModelConfig, logits_BxV1, k, uniform_B, policy: _Policy) -> jax.Array:
  """Whether each sequence answers at step k (always at k = K): bool `[B]`."""
  log_dk_B = logits_BxV1[:, -1] - jax.nn.logsumexp(logits_BxV1, axis=-1)
  halt_by_policy_PxB = jnp.stack(
    [
      jnp.exp(log_dk_B) <= policy.threshold,  # threshold
      jnp.argmax(logits_BxV1, axis=-1) != cfg.vocab_size,  # greedy
      jnp.log(uniform_B) >= log_dk_B,  # sample: answer with probability 1 - d_k
      jnp.zeros(log_dk_B.shape, bool),  # max
    ]
  )
  return halt_by_policy_PxB[policy.index] | (k >= cfg.max_pauses)


def _choose_token(answer_logits_BxV1, uniform_BxV, temperature) -> jax.Array:
  """argmax of the answer distribution (temperature 0), else a Gumbel-max sample."""
  vocab_BxV = answer_logits_BxV1[:, :-1]
  gumbel_BxV = -jnp.log(-jnp.log(uniform_BxV))
  sampled_B = jnp.argmax(vocab_BxV / jnp.maximum(temperature, 1e-6) + gumbel_BxV, axis=-1)
  return jnp.where(temperature > 0, sampled_B, jnp.argmax(vocab_BxV, axis=-1)).astype(jnp.int32)


def _answer(cfg: ModelConfig, params, state: _State, uniform_BxK1, policy: _Policy, record: bool):
  """Pause steps for position n until every sequence answered.

  Returns `(answer_logits [B, V+1], pauses [B], loop_steps [], state, step_logits)`, step_logits
  `[B, K+1, V+1]` (steps after a sequence's answer are not meaningful) when `record`, else None.
  """
  k_max = cfg.max_pauses
  b = state.logits0_BxV1.shape[0]
  carry = dict(
    k=jnp.asarray(0, jnp.int32),
    done_B=_halts(cfg, state.logits0_BxV1, 0, uniform_BxK1[:, 0], policy),
    answer_BxV1=state.logits0_BxV1,
    pauses_B=jnp.zeros((b,), jnp.int32),
    state=state,
    scratch=None,
    record_BxKxV1=None,
  )
  if record:
    record_BxKxV1 = jnp.zeros((b, cfg.num_steps, cfg.vocab_size + 1), jnp.float32)
    carry["record_BxKxV1"] = record_BxKxV1.at[:, 0].set(state.logits0_BxV1)
  if cfg.pause_layout == "private" and k_max > 0:
    shape = (cfg.num_layers, b, 1, k_max, cfg.resolved_num_kv_heads, cfg.resolved_head_dim)
    zeros = jnp.zeros(shape, cfg.compute_dtype)
    carry["scratch"] = KeyValues(zeros, zeros)

  def cond(c):
    return (c["k"] < k_max) & ~jnp.all(c["done_B"])

  def body(c):
    c = dict(c)
    k = c["k"] + 1
    st: _State = c["state"]
    x_BxD = jnp.broadcast_to(model_lib.embed_pause(cfg, params, k), (b, cfg.d_model))
    if cfg.pause_layout == "private":
      scratch = nn.with_logical_constraint(c["scratch"], KeyValues(_SCRATCH_NAMES, _SCRATCH_NAMES))
      visibility = Visibility(
        shared_mask=st.valid_BxM[:, None],
        private_mask=(jnp.arange(k_max) < k)[None, None],
        write_index=k - 1,
        shared_positions=_cache_positions(cfg, st.valid_BxM.shape[1]),
      )
      cache = LayerCache(st.cache, scratch)
      logits, c["scratch"] = _run_slot(cfg, params, x_BxD, st.position, cache, visibility)
    else:
      index = _slot_index(cfg, st.position, k)
      taken_BxM = (jnp.arange(st.valid_BxM.shape[1]) == index)[None] & ~c["done_B"][:, None]
      valid_BxM = st.valid_BxM | taken_BxM
      visibility = Visibility(
        shared_mask=valid_BxM[:, None], write_index=index, shared_positions=_cache_positions(cfg, valid_BxM.shape[1])
      )
      logits, cache = _run_slot(cfg, params, x_BxD, st.position, LayerCache(st.cache), visibility)
      c["state"] = st.replace(cache=_constrain_cache(cache), valid_BxM=valid_BxM)
    running_B = ~c["done_B"]
    c["answer_BxV1"] = jnp.where(running_B[:, None], logits, c["answer_BxV1"])
    c["pauses_B"] = jnp.where(running_B, k, c["pauses_B"])
    uniform_B = jax.lax.dynamic_index_in_dim(uniform_BxK1, k, axis=1, keepdims=False)
    c["done_B"] = c["done_B"] | _halts(cfg, logits, k, uniform_B, policy)
    if record:
      c["record_BxKxV1"] = c["record_BxKxV1"].at[:, k].set(logits)
    c["k"] = k
    return c

  if k_max > 0:
    carry = jax.lax.while_loop(cond, body, carry)
  return carry["answer_BxV1"], carry["pauses_B"], carry["k"], carry["state"], carry["record_BxKxV1"]


def _step(cfg: ModelConfig, params, policy: _Policy, record: bool, carry, xs):
  """Scan step: read the carried token, answer its position, carry the next token.

  `xs = (rng, forced_next_B, use_forced)`: the next token is `forced_next` where `use_forced`
  (teacher forcing, prompts), else the model's answer. Outputs
  `(next token [B], pauses [B], loop steps [], step logits or None)`.
  """
  state, token_B = carry
  rng, forced_next_B, use_forced = xs
  state = _feed_token(cfg, params, state, token_B)
  b = token_B.shape[0]
  uniform_BxU = jax.random.uniform(
    rng, (b, cfg.num_steps + cfg.vocab_size), minval=jnp.finfo(jnp.float32).tiny, maxval=1.0
  )
  answer_BxV1, pauses_B, loop_steps, state, record_BxKxV1 = _answer(
    cfg, params, state, uniform_BxU[:, : cfg.num_steps], policy, record
  )
  chosen_B = _choose_token(answer_BxV1, uniform_BxU[:, cfg.num_steps :], policy.temperature)
  next_B = jnp.where(use_forced, forced_next_B, chosen_B).astype(jnp.int32)
  return (state, next_B), (next_B, pauses_B, loop_steps, record_BxKxV1)


def _run(
  cfg: ModelConfig, params, state: _State, first_B, forced_SxB, use_forced_S, rng, policy: _Policy, record: bool
):
  """Scans `_step` over S steps starting by reading `first_B`."""
  steps = forced_SxB.shape[0]
  step = functools.partial(_step, cfg, params, policy, record)
  xs = (jax.random.split(rng, steps), forced_SxB.astype(jnp.int32), use_forced_S)
  _, outputs = jax.lax.scan(step, (state, first_B.astype(jnp.int32)), xs)
  return outputs


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def _generate(cfg: ModelConfig, params, prompt_BxP, rng, policy: _Policy, *, max_new_tokens: int):
  """The whole decoding program; everything but cfg and max_new_tokens is traced."""
  b, p = prompt_BxP.shape
  t = max_new_tokens
  cache_slots = _cache_slots(cfg, p + t - 1)
  if cfg.pause_layout == "private":  # the prompt but its last token in one pass, then T steps
    state = _prefill_private(cfg, params, prompt_BxP[:, :-1], cache_slots)
    forced_SxB, use_forced_S = jnp.zeros((t, b), jnp.int32), jnp.zeros((t,), bool)
  else:  # every prompt token read by the decoder, with its pauses, then T steps
    state = _empty_state(cfg, b, cache_slots)
    forced_SxB = jnp.concatenate([prompt_BxP[:, 1:].T, jnp.zeros((t, b), prompt_BxP.dtype)])
    use_forced_S = jnp.arange(p - 1 + t) < p - 1
  first_B = prompt_BxP[:, -1] if cfg.pause_layout == "private" else prompt_BxP[:, 0]
  tokens_SxB, pauses_SxB, loop_steps_S, _ = _run(
    cfg, params, state, first_B, forced_SxB, use_forced_S, rng, policy, False
  )
  return tokens_SxB[-t:].T, pauses_SxB[-t:].T, loop_steps_S[-t:]


def _check_tokens(name: str, tokens) -> None:
  if tokens.ndim != 2 or tokens.shape[1] < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer array [B, N] with N >= 1, got {tokens.dtype} {tokens.shape}")


def _policy(halting: str, threshold, temperature) -> _Policy:
  if halting not in HALTING_POLICIES:
    raise ValueError(f"halting must be one of {HALTING_POLICIES}, got {halting!r}")
  if isinstance(temperature, (int, float)) and temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  return _Policy(
    index=jnp.asarray(HALTING_POLICIES.index(halting), jnp.int32),
    threshold=jnp.asarray(threshold, jnp.float32),
    temperature=jnp.asarray(temperature, jnp.float32),
  )


def generate(
  cfg: ModelConfig,
  params,
  prompt: jax.Array,
  rng: jax.Array,
  *,
  max_new_tokens: int,
  halting: str = "threshold",
  threshold: float | jax.Array = 0.5,
  temperature: float | jax.Array = 0.0,
  return_stats: bool = False,
):
  """Generates `max_new_tokens` tokens after `prompt` with adaptive pauses, as one jitted program.

  Compiled once per (cfg, params/prompt shapes, max_new_tokens); halting, threshold, temperature
  and rng are traced, so changing them does not recompile.

  Args:
    cfg: model config.
    params: model parameters.
    prompt: int `[B, P]`, P >= 1, every row a full prompt (no padding).
    rng: PRNG key for the "sample" policy and temperature > 0.
    max_new_tokens: T >= 1.
    halting: one of HALTING_POLICIES, see the module docstring.
    threshold: DK probability at or below which "threshold" answers.
    temperature: 0 for argmax answers, else the sampling temperature (> 0).
    return_stats: also return `{"pause_steps": [T] int32}`, the pause-loop iterations executed
      per new token (= the largest number of pauses any sequence of the batch took for it).

  Returns:
    `(tokens [B, T] int32, pauses [B, T] int32)`, pauses taken before each token, plus the stats
    dict when `return_stats`.
  """
  _check_tokens("prompt", prompt)
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
  policy = _policy(halting, threshold, temperature)
  tokens, pauses, loop_steps = _generate(cfg, params, prompt, rng, policy, max_new_tokens=max_new_tokens)
  return (tokens, pauses, {"pause_steps": loop_steps}) if return_stats else (tokens, pauses)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _teacher_forced(cfg: ModelConfig, params, tokens_BxN, rng, policy: _Policy):
  b, n = tokens_BxN.shape
  state = _empty_state(cfg, b, _cache_slots(cfg, n))
  forced_NxB = jnp.concatenate([tokens_BxN[:, 1:], tokens_BxN[:, :1]], axis=1).T  # last one unused
  _, pauses_NxB, _, logits_NxBxKxV1 = _run(
    cfg, params, state, tokens_BxN[:, 0], forced_NxB, jnp.ones((n,), bool), rng, policy, True
  )
  return jnp.moveaxis(logits_NxBxKxV1, 0, 1), pauses_NxB.T


def teacher_forced_step_logits(
  cfg: ModelConfig,
  params,
  tokens_BxN: jax.Array,
  *,
  halting: str = "max",
  threshold: float | jax.Array = 0.5,
  rng: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The decoder's step logits on given tokens, read one at a time with a KV cache (forced).

  Returns `(logits [B, N, K+1, V+1], pauses [B, N])`; steps after a position's answer
  (k > pauses[b, n]) are not meaningful. With halting="max" (all K pauses everywhere) the logits
  are the incremental counterpart of `model.step_logits`, equal to it for both layouts.
  """
  _check_tokens("tokens", tokens_BxN)
  rng = jax.random.key(0) if rng is None else rng
  return _teacher_forced(cfg, params, tokens_BxN, rng, _policy(halting, threshold, 0.0))
