"""The jitted decoder (cyb_jax.model.decode) against the training forward (cyb_jax.model)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import model as model_lib
from cyb_jax.model import decode

# The model tests' configs, sizes and jitted forward, so that both files share compilations.
from tests.test_model import CFG
from tests.test_model import GEMMA_LIKE
from tests.test_model import VISIBLE
from tests.test_model import B
from tests.test_model import K
from tests.test_model import N
from tests.test_model import V
from tests.test_model import W
from tests.test_model import _random_params
from tests.test_model import step_logits

P = 4
T = N - P  # prompt + generated tokens have the model tests' length
TOL = dict(rtol=1e-5, atol=2e-5)


def _params(dk_scale=0.5, dk_bias=5.0):
  """Random parameters whose DK probability is near 1/2 and varies across slots."""
  params = model_lib.init_params(CFG, jax.random.key(0))
  params["dk_head"]["kernel"] = dk_scale * jax.random.normal(jax.random.key(1), (CFG.d_model,))
  params["dk_head"]["bias"] = jnp.asarray(dk_bias, jnp.float32)
  return params


def _prompt():
  return jax.random.randint(jax.random.key(2), (B, P), 0, V)


def _generate(cfg, params, halting, **kwargs):
  return decode.generate(
    cfg, params, _prompt(), jax.random.key(3), max_new_tokens=T, halting=halting, return_stats=True, **kwargs
  )


def _step_logits_of_generated(cfg, params, tokens_BxT):
  """step_logits of prompt + generated tokens at the positions that predicted them."""
  sequence = jnp.concatenate([_prompt(), tokens_BxT], axis=1)
  return np.asarray(step_logits(cfg, params, sequence)[:, P - 1 : P - 1 + T])


@pytest.mark.parametrize("cfg", [CFG, VISIBLE], ids=["private", "visible"])
def test_teacher_forced_decoder_logits_equal_step_logits(cfg):
  params, tokens = _params(), jax.random.randint(jax.random.key(4), (B, N), 0, V)
  logits, pauses = decode.teacher_forced_step_logits(cfg, params, tokens)
  np.testing.assert_array_equal(pauses, K)
  np.testing.assert_allclose(logits, step_logits(cfg, params, tokens), **TOL)


def test_private_threshold_decoding_reproduces_step_logits_decisions():
  """Token by token: the halting step is the first k with d_k <= 0.5 (else K) and the token
  is the argmax answer at that step, both read from step_logits of the generated sequence."""
  params = _params()
  tokens, pauses, _ = _generate(CFG, params, "threshold", threshold=0.5)
  assert tokens.shape == pauses.shape == (B, T) and tokens.dtype == pauses.dtype == jnp.int32
  logits_BxTxKxV1 = _step_logits_of_generated(CFG, params, tokens)
  halts_BxTxK = np.asarray(jax.nn.softmax(logits_BxTxKxV1, axis=-1)[..., -1]) <= 0.5
  halts_BxTxK[..., -1] = True
  k_star_BxT = halts_BxTxK.argmax(-1)
  answers_BxTxK = logits_BxTxKxV1[..., :-1].argmax(-1)
  np.testing.assert_array_equal(pauses, k_star_BxT)
  answer_at_k_star_BxT = np.take_along_axis(answers_BxTxK, k_star_BxT[..., None], -1)[..., 0]
  np.testing.assert_array_equal(tokens, answer_at_k_star_BxT)
  assert 0 < pauses.mean() < K  # the check covers early and late answers


def test_greedy_halting_answers_when_dk_is_not_the_argmax():
  params = _params()
  tokens, pauses, _ = _generate(CFG, params, "greedy")
  answers_now_BxTxK = _step_logits_of_generated(CFG, params, tokens).argmax(-1) != V
  answers_now_BxTxK[..., -1] = True
  np.testing.assert_array_equal(pauses, answers_now_BxTxK.argmax(-1))
  assert 0 < pauses.mean() < K


def test_visible_decoding_with_all_pauses_reproduces_step_logits():
  params = _params()
  tokens, pauses, stats = _generate(VISIBLE, params, "max")
  np.testing.assert_array_equal(pauses, K)
  np.testing.assert_array_equal(stats["pause_steps"], K)
  logits_BxTxKxV1 = _step_logits_of_generated(VISIBLE, params, tokens)
  np.testing.assert_array_equal(tokens, logits_BxTxKxV1[:, :, K, :-1].argmax(-1))


def test_visible_adaptive_decoding_keeps_only_taken_pauses_in_context():
  """Teacher-forced visible decoding with early answers equals the flat visible forward in which
  each position's untaken pause slots are hidden from later positions."""
  params, tokens = _params(), jax.random.randint(jax.random.key(4), (B, N), 0, V)
  logits, pauses = decode.teacher_forced_step_logits(VISIBLE, params, tokens, halting="threshold", threshold=0.5)
  assert 0 < pauses.mean() < K
  hidden = jax.jit(model_lib.step_hidden_flat, static_argnums=0)(VISIBLE, params, tokens, taken_pauses=pauses)
  expected = np.asarray(model_lib.logits_from_hidden(VISIBLE, params, hidden))
  taken_BxNxK = np.arange(K + 1) <= np.asarray(pauses)[..., None]
  np.testing.assert_allclose(np.asarray(logits)[taken_BxNxK], expected[taken_BxNxK], **TOL)
  # Hiding untaken pauses matters: the forward with every pause visible differs.
  full = np.asarray(step_logits(VISIBLE, params, tokens))
  assert np.abs(full[taken_BxNxK] - np.asarray(logits)[taken_BxNxK]).max() > 1e-3


@pytest.mark.parametrize("dk_bias, expected_steps", [(-30.0, 0), (30.0, K), (5.0, None)])
def test_pause_loop_stops_when_every_sequence_has_answered(dk_bias, expected_steps):
  params = _params(dk_scale=0.5 if expected_steps is None else 0.0, dk_bias=dk_bias)
  _, pauses, stats = _generate(CFG, params, "threshold")
  loop_steps_T = np.asarray(stats["pause_steps"])
  # Exactly as many loop steps as the slowest sequence of the batch needs.
  np.testing.assert_array_equal(loop_steps_T, pauses.max(axis=0))
  if expected_steps is not None:
    np.testing.assert_array_equal(loop_steps_T, expected_steps)
  else:  # the loop ends early, and some sequences wait for others
    assert loop_steps_T.min() < K and np.any(pauses.min(axis=0) < loop_steps_T)


def test_sampling_is_reproducible_and_pauses_follow_dk_probability():
  params = _params(dk_scale=0.0, dk_bias=0.0)  # d_k = 1 / (1 + sum exp(z)) at every step
  first = _generate(CFG, params, "sample", temperature=1.0)
  again = _generate(CFG, params, "sample", temperature=1.0)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  tokens, pauses, _ = first
  assert np.all((0 <= pauses) & (pauses <= K)) and np.all((0 <= tokens) & (tokens < V))
  params = _params(dk_scale=0.0, dk_bias=30.0)  # DK almost surely: all K pauses every time
  np.testing.assert_array_equal(_generate(CFG, params, "sample", temperature=1.0)[1], K)


def test_zero_pauses_decodes_as_an_ordinary_language_model():
  """K = 0 decodes greedily from the step-0 logits (equal for every K, see test_model)."""
  params = _params()
  no_pause_params = {key: value for key, value in params.items() if key != "pause_embed"}
  zero = dataclasses.replace(CFG, max_pauses=0)
  tokens, pauses, stats = _generate(zero, no_pause_params, "threshold")
  np.testing.assert_array_equal(pauses, 0)
  np.testing.assert_array_equal(stats["pause_steps"], 0)
  step0_BxTxV1 = _step_logits_of_generated(CFG, params, tokens)[:, :, 0]
  np.testing.assert_array_equal(tokens, step0_BxTxV1[..., :-1].argmax(-1))


def test_generate_rejects_bad_arguments():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="halting must be one of"):
    decode.generate(CFG, None, _prompt(), key, max_new_tokens=2, halting="never")
  with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0"):
    decode.generate(CFG, None, _prompt(), key, max_new_tokens=0)
  with pytest.raises(ValueError, match=r"prompt must be an integer array \[B, N\]"):
    decode.generate(CFG, None, jnp.zeros((B,), jnp.int32), key, max_new_tokens=2)
  with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
    decode.generate(CFG, None, _prompt(), key, max_new_tokens=2, temperature=-1.0)


@pytest.mark.parametrize("layout", ["private", "visible"])
def test_decoder_respects_sliding_windows_like_the_training_forward(layout):
  """Gemma-like layers (sliding W = 3 and global, soft caps, q/k norms) over N = 12 > W tokens:
  the decoder's cache masks slots by position as the training forward does."""
  cfg = dataclasses.replace(GEMMA_LIKE, pause_layout=layout)
  params, tokens = _random_params(cfg), jax.random.randint(jax.random.key(4), (B, N), 0, V)
  assert N > W
  logits, pauses = decode.teacher_forced_step_logits(cfg, params, tokens)
  np.testing.assert_array_equal(pauses, K)
  np.testing.assert_allclose(logits, step_logits(cfg, params, tokens), **TOL)
