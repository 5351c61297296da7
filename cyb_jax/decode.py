"""Jitted autoregressive decoding with pauses and adaptive halting (DESIGN section 6).

One compiled program per (config, shapes, policy): a prefill of the prompt, then a `lax.scan`
over new tokens; for each token an inner `lax.while_loop` over pause steps k = 1..K that ends as
soon as every sequence of the batch has answered (a per-sequence `done` mask; steps taken for
sequences already done change nothing).

Halting at step k with logits z_k (`[V+1]`, DK last) and d_k = softmax(z_k)[V]:
  "threshold": answer at the first k with d_k <= threshold;
  "greedy":    answer at the first k whose argmax over all V+1 logits is not DK;
  "sample":    answer with probability 1 - d_k (DK is just another outcome);
  "max":       always take all K pauses.
Every policy answers at k = K. The answer is argmax of z_k[:V] (temperature 0) or a sample of
softmax(z_k[:V] / temperature).

Caches (shape letters: see `cyb_jax.layers`):
  private: the main cache `[L, B, P+T, G, E]` holds real tokens only; a token's pauses use a
    scratch buffer `[L, B, 1, K, G, E]` that is discarded when the token is answered. The step
    logits equal `model.step_logits`' for the same slots.
  visible: a fixed-horizon cache with K+1 slots per position, `[L, B, (P+T)(K+1), G, E]`,
    slot (n, k) at n (K+1) + k, and a validity mask: only pauses actually taken become
    visible. The prompt is read token by token with the same halting policy (teacher
    forced), so with "max" the step logits equal `model.step_logits`' everywhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from cyb_jax import model as model_lib
from cyb_jax.attention import KeyValues, LayerCache, Visibility, causal_segment_mask
from cyb_jax.model import ModelConfig

HALTING_POLICIES = ("threshold", "greedy", "sample", "max")

_CACHE_NAMES = (None, "act_batch", "act_length", "act_kv_heads", None)
_SCRATCH_NAMES = (None, "act_batch", None, None, "act_kv_heads", None)


@struct.dataclass
class _State:
  """Decoder state after reading the real token at `position`."""

  cache: KeyValues  # [L, B, M, G, E]
  valid_BxM: jax.Array  # bool: cache slots visible to later queries
  position: jax.Array  # int32 scalar n
  logits0_BxV1: jax.Array  # float32 step-0 logits of position n


def _constrain_cache(cache: KeyValues) -> KeyValues:
  return nn.with_logical_constraint(cache, KeyValues(_CACHE_NAMES, _CACHE_NAMES))


def _slot_index(cfg: ModelConfig, position: jax.Array, k) -> jax.Array:
  """Cache index of slot (position, k): position (private) or position (K+1) + k (visible)."""
  if cfg.pause_layout == "private":
    return position
  return position * cfg.num_steps + k


def _empty_state(cfg: ModelConfig, batch: int, cache_slots: int) -> _State:
  shape = (cfg.num_layers, batch, cache_slots, cfg.resolved_num_kv_heads, cfg.resolved_head_dim)
  zeros = jnp.zeros(shape, cfg.compute_dtype)
  return _State(
      cache=_constrain_cache(KeyValues(zeros, zeros)),
      valid_BxM=jnp.zeros((batch, cache_slots), bool),
      position=jnp.asarray(-1, jnp.int32),
      logits0_BxV1=jnp.zeros((batch, cfg.vocab_size + 1), jnp.float32),
  )


def _run_slot(cfg, params, x_BxD, position, cache: LayerCache, visibility: Visibility):
  """Runs one slot per sequence at rotary `position`: `-> (logits [B, V+1], written)`."""
  positions_Bx1 = jnp.full((x_BxD.shape[0], 1), position, jnp.int32)
  hidden_Bx1xD, written = model_lib.hidden_states(cfg, params, x_BxD[:, None], positions_Bx1, cache, visibility)
  return model_lib.logits_from_hidden(cfg, params, hidden_Bx1xD[:, 0]), written


def _feed_token(cfg: ModelConfig, params, state: _State, token_B: jax.Array) -> _State:
  """Reads real token `token_B` at position n + 1 into the cache; returns its step-0 logits."""
  position = state.position + 1
  index = _slot_index(cfg, position, 0)
  slots_M = jnp.arange(state.valid_BxM.shape[1])
  if cfg.pause_layout == "private":
    valid_BxM = jnp.broadcast_to(slots_M <= index, state.valid_BxM.shape)
  else:
    valid_BxM = state.valid_BxM | (slots_M == index)[None]
  x_BxD = model_lib.embed_tokens(cfg, params, token_B[:, None])[:, 0]
  visibility = Visibility(shared_mask=valid_BxM[:, None], write_index=index)
  logits0, cache = _run_slot(cfg, params, x_BxD, position, LayerCache(state.cache), visibility)
  return _State(_constrain_cache(cache), valid_BxM, position, logits0)


def _halts(cfg: ModelConfig, logits_BxV1, k, *, policy, threshold, rng) -> jax.Array:
  """Whether each sequence answers at step k (always at k = K): bool `[B]`.

  `policy` is the (traced) index of the halting policy in HALTING_POLICIES, so that switching
  policies does not recompile.
  """
  log_dk_B = logits_BxV1[:, -1] - jax.nn.logsumexp(logits_BxV1, axis=-1)
  uniform_B = jax.random.uniform(jax.random.fold_in(rng, k), log_dk_B.shape)
  halt_by_policy_PxB = jnp.stack([
      jnp.exp(log_dk_B) <= threshold,  # threshold
      jnp.argmax(logits_BxV1, axis=-1) != cfg.vocab_size,  # greedy
      jnp.log(uniform_B) >= log_dk_B,  # sample: answer with probability 1 - d_k
      jnp.zeros(log_dk_B.shape, bool),  # max
  ])
  return halt_by_policy_PxB[policy] | (k >= cfg.max_pauses)


def _choose_token(answer_logits_BxV1, temperature, rng) -> jax.Array:
  """argmax of the answer distribution (temperature 0) or a sample at `temperature`."""
  vocab_BxV = answer_logits_BxV1[:, :-1]
  greedy_B = jnp.argmax(vocab_BxV, axis=-1)
  sampled_B = jax.random.categorical(rng, vocab_BxV / jnp.maximum(temperature, 1e-6), axis=-1)
  return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


def _answer(cfg: ModelConfig, params, state: _State, rng, *, policy, threshold, record: bool):
  """Pause steps for position n until every sequence answered.

  Returns `(answer_logits [B, V+1], pauses [B], loop_steps [], state, step_logits)`, step_logits
  `[B, K+1, V+1]` (all steps; meaningful for "max") when `record`, else None.
  """
  k_max = cfg.max_pauses
  b = state.logits0_BxV1.shape[0]
  done_B = _halts(cfg, state.logits0_BxV1, 0, policy=policy, threshold=threshold, rng=rng)
  carry = dict(
      k=jnp.asarray(0, jnp.int32),
      done_B=done_B,
      answer_BxV1=state.logits0_BxV1,
      pauses_B=jnp.zeros((b,), jnp.int32),
      state=state,
      scratch=None,
      record_BxKxV1=None,
  )
  if record:
    carry["record_BxKxV1"] = jnp.zeros((b, cfg.num_steps, cfg.vocab_size + 1), jnp.float32)
    carry["record_BxKxV1"] = carry["record_BxKxV1"].at[:, 0].set(state.logits0_BxV1)
  if k_max == 0:
    return carry["answer_BxV1"], carry["pauses_B"], carry["k"], state, carry["record_BxKxV1"]
  if cfg.pause_layout == "private":
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
      )
      logits, c["scratch"] = _run_slot(cfg, params, x_BxD, st.position, LayerCache(st.cache, scratch), visibility)
    else:
      index = _slot_index(cfg, st.position, k)
      taken_BxM = (jnp.arange(st.valid_BxM.shape[1]) == index)[None] & ~c["done_B"][:, None]
      valid_BxM = st.valid_BxM | taken_BxM
      visibility = Visibility(shared_mask=valid_BxM[:, None], write_index=index)
      logits, cache = _run_slot(cfg, params, x_BxD, st.position, LayerCache(st.cache), visibility)
      c["state"] = st.replace(cache=_constrain_cache(cache), valid_BxM=valid_BxM)
    running_B = ~c["done_B"]
    c["answer_BxV1"] = jnp.where(running_B[:, None], logits, c["answer_BxV1"])
    c["pauses_B"] = jnp.where(running_B, k, c["pauses_B"])
    c["done_B"] = c["done_B"] | _halts(cfg, logits, k, policy=policy, threshold=threshold, rng=rng)
    if record:
      c["record_BxKxV1"] = c["record_BxKxV1"].at[:, k].set(logits)
    c["k"] = k
    return c

  carry = jax.lax.while_loop(cond, body, carry)
  return carry["answer_BxV1"], carry["pauses_B"], carry["k"], carry["state"], carry["record_BxKxV1"]


def _step(cfg, params, state, rng, forced_token_B, *, policy, threshold, temperature, record):
  """Answers position n (pausing as the policy says), then reads the chosen/forced token."""
  rng_halt, rng_token = jax.random.split(rng)
  answer_BxV1, pauses_B, loop_steps, state, record_BxKxV1 = _answer(
      cfg, params, state, rng_halt, policy=policy, threshold=threshold, record=record
  )
  token_B = _choose_token(answer_BxV1, temperature, rng_token) if forced_token_B is None else forced_token_B
  return _feed_token(cfg, params, state, token_B), (token_B, pauses_B, loop_steps, record_BxKxV1)


def _prefill(cfg: ModelConfig, params, prompt_BxP, cache_slots: int, rng, *, policy, threshold) -> _State:
  """State after reading the prompt (its last position not yet answered)."""
  b, p = prompt_BxP.shape
  state = _empty_state(cfg, b, cache_slots)
  if cfg.pause_layout == "visible":  # pauses are context: read the prompt token by token
    state = _feed_token(cfg, params, state, prompt_BxP[:, 0])
    step = functools.partial(
        _step, cfg, params, policy=policy, threshold=threshold, temperature=0.0, record=False
    )
    rngs = jax.random.split(rng, p - 1)
    state, _ = jax.lax.scan(lambda s, xs: step(s, xs[0], xs[1]), state, (rngs, prompt_BxP[:, 1:].T))
    return state
  # private: pauses are invisible to later positions, so the prompt is one causal pass.
  positions_BxP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  visibility = Visibility(shared_mask=causal_segment_mask(jnp.ones((1, p), jnp.int32)))
  x_BxPxD = model_lib.embed_tokens(cfg, params, prompt_BxP)
  hidden_BxPxD, kv = model_lib.hidden_states(cfg, params, x_BxPxD, positions_BxP, None, visibility)
  cache = jax.tree.map(lambda buf, new: buf.at[:, :, :p].set(new.astype(buf.dtype)), state.cache, kv)
  return _State(
      cache=_constrain_cache(cache),
      valid_BxM=jnp.broadcast_to(jnp.arange(cache_slots) < p, (b, cache_slots)),
      position=jnp.asarray(p - 1, jnp.int32),
      logits0_BxV1=model_lib.logits_from_hidden(cfg, params, hidden_BxPxD[:, -1]),
  )


def _check_tokens(name: str, tokens) -> None:
  if tokens.ndim != 2 or tokens.shape[1] < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer array [B, N] with N >= 1, got {tokens.dtype} {tokens.shape}")


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def _generate(cfg: ModelConfig, params, prompt_BxP, rng, policy, threshold, temperature, *, max_new_tokens: int):
  """The whole decoding program; every argument but cfg and max_new_tokens is traced."""
  p = prompt_BxP.shape[1]
  cache_slots = (p + max_new_tokens) * (cfg.num_steps if cfg.pause_layout == "visible" else 1)
  rng_prompt, rng_new = jax.random.split(rng)
  state = _prefill(cfg, params, prompt_BxP, cache_slots, rng_prompt, policy=policy, threshold=threshold)
  step = functools.partial(
      _step, cfg, params, policy=policy, threshold=threshold, temperature=temperature, record=False
  )
  _, (tokens_TxB, pauses_TxB, loop_steps_T, _) = jax.lax.scan(
      lambda s, r: step(s, r, None), state, jax.random.split(rng_new, max_new_tokens)
  )
  return tokens_TxB.T, pauses_TxB.T, loop_steps_T


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

  The program is compiled once per (cfg, params/prompt shapes, max_new_tokens); the halting
  policy, threshold, temperature and rng are traced, so changing them does not recompile.

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
  if halting not in HALTING_POLICIES:
    raise ValueError(f"halting must be one of {HALTING_POLICIES}, got {halting!r}")
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
  if isinstance(temperature, (int, float)) and temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  tokens, pauses, loop_steps = _generate(
      cfg, params, prompt, rng,
      jnp.asarray(HALTING_POLICIES.index(halting), jnp.int32),
      jnp.asarray(threshold, jnp.float32),
      jnp.asarray(temperature, jnp.float32),
      max_new_tokens=max_new_tokens,
  )
  return (tokens, pauses, {"pause_steps": loop_steps}) if return_stats else (tokens, pauses)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _teacher_forced_step_logits(cfg: ModelConfig, params, tokens_BxN: jax.Array) -> jax.Array:
  b, n = tokens_BxN.shape
  cache_slots = (n + 1) * (cfg.num_steps if cfg.pause_layout == "visible" else 1)
  always_pause = jnp.asarray(HALTING_POLICIES.index("max"), jnp.int32)
  rng = jax.random.key(0)  # unused by the "max" policy
  state = _prefill(cfg, params, tokens_BxN[:, :1], cache_slots, rng, policy=always_pause, threshold=0.0)
  step = functools.partial(_step, cfg, params, policy=always_pause, threshold=0.0, temperature=0.0, record=True)
  forced_NxB = jnp.concatenate([tokens_BxN[:, 1:], jnp.zeros((b, 1), tokens_BxN.dtype)], axis=1).T
  _, (_, _, _, logits_NxBxKxV1) = jax.lax.scan(
      lambda s, xs: step(s, xs[0], xs[1]), state, (jax.random.split(rng, n), forced_NxB)
  )
  return jnp.moveaxis(logits_NxBxKxV1, 0, 1)


def teacher_forced_step_logits(cfg: ModelConfig, params, tokens_BxN: jax.Array) -> jax.Array:
  """Step logits `[B, N, K+1, V+1]` computed by the decoder, token by token with a KV cache.

  Reads `tokens` one at a time (forced) and takes all K pauses at every position: the
  incremental counterpart of `model.step_logits` (equal to it for both layouts).
  """
  _check_tokens("tokens", tokens_BxN)
  return _teacher_forced_step_logits(cfg, params, tokens_BxN)
