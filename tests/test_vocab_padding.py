"""A padded vocabulary (ModelConfig.vocab_pad_multiple) computes exactly the unpadded model."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax import pretrained
from cyb_jax.analysis import evaluation
from cyb_jax.model import ModelConfig
from cyb_jax.model import decode

BASE = ModelConfig(vocab_size=13, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_pauses=2, dk_bias_init=1.0)
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hf"


def _pair(**fields):
  plain = dataclasses.replace(BASE, **fields)
  padded = dataclasses.replace(plain, vocab_pad_multiple=8)
  return plain, padded


def _tokens():
  return jnp.asarray(np.random.default_rng(0).integers(0, 13, (2, 7)), jnp.int32)


def test_padded_tables_start_as_the_unpadded_ones_plus_zero_rows():
  for tie in (False, True):
    plain, padded = _pair(tie_embeddings=tie)
    assert padded.padded_vocab_size == 16 and plain.padded_vocab_size == 13
    p0, p1 = (model_lib.init_params(c, jax.random.key(3)) for c in (plain, padded))
    np.testing.assert_array_equal(p1["token_embed"][:13], p0["token_embed"])
    assert not np.any(p1["token_embed"][13:])
    if not tie:
      np.testing.assert_array_equal(p1["vocab_head"]["kernel"][:, :13], p0["vocab_head"]["kernel"])
      assert not np.any(p1["vocab_head"]["kernel"][:, 13:])


def test_padded_model_has_the_same_logits_loss_gradients_and_decodes():
  for tie in (False, True):
    plain, padded = _pair(tie_embeddings=tie)
    p0, p1 = (model_lib.init_params(c, jax.random.key(4)) for c in (plain, padded))
    tokens = _tokens()
    logits1 = model_lib.step_logits(padded, p1, tokens)
    assert logits1.shape == (2, 7, 3, 14)  # [B, N, K+1, V+1]: padding is never a logit
    np.testing.assert_array_equal(logits1, model_lib.step_logits(plain, p0, tokens))
    batch = {
      "inputs": tokens,
      "targets": jnp.roll(tokens, -1, axis=1),
      "weights": jnp.ones((2, 7)),
      "segment_ids": jnp.ones((2, 7), jnp.int32),
      "positions": jnp.broadcast_to(jnp.arange(7), (2, 7)),
    }
    loss = losses.make_loss("cyb_ap")

    def value(cfg, params, chunk, batch=batch, loss=loss):
      stats = evaluation.step_stats(cfg, params, batch, vocab_chunk=chunk)
      return loss(stats, batch["weights"], 0.0)[0]

    for chunk in (None, 5):
      v0, g0 = jax.value_and_grad(value, argnums=1)(plain, p0, chunk)
      v1, g1 = jax.value_and_grad(value, argnums=1)(padded, p1, chunk)
      assert v0 == v1
      np.testing.assert_array_equal(g1["token_embed"][:13], g0["token_embed"])
      assert not np.any(g1["token_embed"][13:])  # the padding never learns
      if not tie:
        assert not np.any(g1["vocab_head"]["kernel"][:, 13:])
    outs = [
      decode.generate(c, p, tokens[:, :3], jax.random.key(0), max_new_tokens=4, halting="sample", temperature=1.0)
      for c, p in ((plain, p0), (padded, p1))
    ]
    jax.tree.map(np.testing.assert_array_equal, outs[0], outs[1])


def test_a_padded_import_equals_the_unpadded_import_and_exports_the_same_tensors(tmp_path):
  cfg0, p0 = pretrained.load(FIXTURES / "qwen2_bias", max_pauses=1)
  cfg1 = dataclasses.replace(cfg0, vocab_pad_multiple=64)
  assert cfg1.padded_vocab_size > cfg1.vocab_size
  p1 = pretrained.load_params(FIXTURES / "qwen2_bias", cfg1)
  tokens = jnp.asarray([[1, 4, 9, 2, 5]], jnp.int32)
  np.testing.assert_array_equal(model_lib.step_logits(cfg1, p1, tokens), model_lib.step_logits(cfg0, p0, tokens))
  pretrained.save(tmp_path / "a", cfg0, p0)
  pretrained.save(tmp_path / "b", cfg1, p1)
  assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
