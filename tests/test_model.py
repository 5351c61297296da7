"""Properties of the pause-aware transformer (cyb_jax.model): layouts, causality, packing."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import model as model_lib
from cyb_jax.model import ModelConfig

B, N, V, K = 2, 12, 50, 3
TOL = dict(rtol=1e-5, atol=1e-5)
SIZES = dict(vocab_size=V, num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_pauses=K)
CFG = ModelConfig(**SIZES, num_kv_heads=2, dk_bias_init=-1.5)
VISIBLE = dataclasses.replace(CFG, pause_layout="visible")
is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731


# Jitted entry points called with every argument explicit: tests of one config (also those of
# test_decode.py, which imports step_logits) share one compilation.
@functools.partial(jax.jit, static_argnums=0)
def _step_logits(cfg, params, tokens, segment_ids, positions):
  return model_lib.step_logits(cfg, params, tokens, segment_ids=segment_ids, positions=positions)


@functools.partial(jax.jit, static_argnums=0)
def _step_hidden_flat(cfg, params, tokens, segment_ids, positions):
  return model_lib.step_hidden_flat(
      cfg, params, tokens, segment_ids=segment_ids, positions=positions
  )


def _ids(tokens, segment_ids, positions):
  b, n = tokens.shape
  if segment_ids is None:
    segment_ids = jnp.ones((b, n), jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  return segment_ids.astype(jnp.int32), positions.astype(jnp.int32)


def step_logits(cfg, params, tokens, *, segment_ids=None, positions=None):
  return _step_logits(cfg, params, tokens, *_ids(tokens, segment_ids, positions))


def step_hidden_flat(cfg, params, tokens, *, segment_ids=None, positions=None):
  return _step_hidden_flat(cfg, params, tokens, *_ids(tokens, segment_ids, positions))


def _params(seed=0):
  """Parameters of CFG; both layouts (and bfloat16 compute) share them."""
  params = model_lib.init_params(CFG, jax.random.key(seed))
  assert float(params["dk_head"]["bias"]) == CFG.dk_bias_init
  assert not params["dk_head"]["kernel"].any()
  # A non-zero DK kernel, so the DK logit depends on the input as it does after training.
  params["dk_head"]["kernel"] = jax.random.normal(jax.random.key(seed + 100), (CFG.d_model,))
  return params


def _tokens(seed=1):
  return jax.random.randint(jax.random.key(seed), (B, N), 0, V)


def _packed_ids():
  """Row 0: two documents of 5 and 7 tokens. Row 1: one document of 9 tokens, then padding."""
  segment_ids = jnp.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])
  positions = jnp.array([list(range(5)) + list(range(7)), list(range(12))])
  return segment_ids, positions


def test_private_scan_equals_flattened_mask():
  params, tokens = _params(), _tokens()
  segment_ids, positions = _packed_ids()
  scan_logits = step_logits(CFG, params, tokens, segment_ids=segment_ids, positions=positions)
  flat_hidden = step_hidden_flat(
      CFG, params, tokens, segment_ids=segment_ids, positions=positions
  )
  assert scan_logits.shape == (B, N, K + 1, V + 1) and scan_logits.dtype == jnp.float32
  flat_logits = model_lib.logits_from_hidden(CFG, params, flat_hidden)
  np.testing.assert_allclose(scan_logits, flat_logits, **TOL)


@pytest.mark.parametrize("cfg", [CFG, VISIBLE], ids=["private", "visible"])
def test_packed_documents_equal_separate_documents(cfg):
  """Attention never crosses segments and rotary positions restart per document."""
  params, tokens = _params(), _tokens()
  segment_ids, positions = _packed_ids()
  packed = step_logits(cfg, params, tokens, segment_ids=segment_ids, positions=positions)
  # The second document alone at the start of a row, padded; the first document stays in place.
  alone_tokens = jnp.stack([tokens[0], jnp.concatenate([tokens[0, 5:], tokens[0, :5]])])
  alone_ids = jnp.array([[1] * 5 + [0] * 7, [1] * 7 + [0] * 5])
  alone = step_logits(cfg, params, alone_tokens, segment_ids=alone_ids)
  np.testing.assert_allclose(packed[0, :5], alone[0, :5], **TOL)
  np.testing.assert_allclose(packed[0, 5:], alone[1, :7], **TOL)


@pytest.mark.parametrize("cfg", [CFG, VISIBLE], ids=["private", "visible"])
def test_causality_by_derivatives(cfg):
  """d step_hidden[:, n] / d input embedding at m is exactly 0 for m > n and non-zero for m <= n.

  Jacobian columns by forward-mode differentiation: one random direction per input position m.
  """
  params = _params()
  tokens = jnp.arange(N)[None] + 7  # distinct tokens: embedding row tokens[m] feeds position m only
  direction_D = jax.random.normal(jax.random.key(5), (cfg.d_model,))

  def hidden(token_embed):
    return model_lib.step_hidden(cfg, {**params, "token_embed": token_embed}, tokens)

  def hidden_tangent(m):
    tangent = jnp.zeros_like(params["token_embed"]).at[tokens[0, m]].set(direction_D)
    return jax.jvp(hidden, (params["token_embed"],), (tangent,))[1][0]

  tangents_NxNxKxD = jax.jit(jax.vmap(hidden_tangent))(jnp.arange(N))  # [input m, output n, ..]
  influence_NxN = np.asarray(jnp.abs(tangents_NxNxKxD).max(axis=(2, 3))).T  # [output n, input m]
  future = np.triu(np.ones((N, N), bool), k=1)
  assert np.all(influence_NxN[future] == 0.0)
  assert np.all(influence_NxN[~future] > 0.0)


def test_pause_embed_private_leaves_step0_unchanged_visible_changes_it():
  params, tokens = _params(), _tokens()
  moved = {**params, "pause_embed": params["pause_embed"] + 1.0}
  for cfg in (CFG, VISIBLE):
    before, after = step_logits(cfg, params, tokens), step_logits(cfg, moved, tokens)
    change_BxNxK = np.abs(after - before).max(-1)
    assert np.all(change_BxNxK[:, :, 1:] > 1e-4)  # every pause slot moves
    if cfg.pause_layout == "private":
      assert np.all(change_BxNxK[:, :, 0] == 0.0)
    else:  # position 0 has no earlier pauses; every later position sees them
      assert np.all(change_BxNxK[:, 0, 0] == 0.0)
      assert np.all(change_BxNxK[:, 1:, 0] > 1e-4)


def test_private_pause_k_ignores_later_pause_embeddings():
  """Slot (n, k) sees pauses 1..k only: moving pause_embed[j] changes exactly the steps > j."""
  params, tokens = _params(), _tokens()
  before = step_logits(CFG, params, tokens)
  for j in range(K):
    moved = {**params, "pause_embed": params["pause_embed"].at[j].add(1.0)}
    change_K = np.abs(step_logits(CFG, moved, tokens) - before).max(axis=(0, 1, 3))
    assert np.all(change_K[: j + 1] == 0.0) and np.all(change_K[j + 1 :] > 1e-4)


def test_zero_pauses_is_an_ordinary_language_model():
  """K = 0: no pause parameters, one step; both layouts equal step 0 of a K > 0 model."""
  params, tokens = _params(), _tokens()
  no_pause_params = {key: value for key, value in params.items() if key != "pause_embed"}
  zero = dataclasses.replace(CFG, max_pauses=0)
  shapes = jax.eval_shape(lambda rng: model_lib.init_params(zero, rng), jax.random.key(0))
  assert jax.tree.structure(shapes) == jax.tree.structure(no_pause_params)
  expected = step_logits(CFG, params, tokens)[:, :, :1]
  for cfg in (zero, dataclasses.replace(zero, pause_layout="visible")):
    np.testing.assert_allclose(step_logits(cfg, no_pause_params, tokens), expected, **TOL)


def test_layer_scan_remat_and_unrolled_pause_scan_match_the_default_forward():
  scanned_cfg = dataclasses.replace(
      CFG, scan_layers=True, remat_policy="dots_saveable", unroll_pause_scan=True
  )
  params, tokens = _params(), _tokens()
  layers = [params["decoder"][f"layer_{i}"] for i in range(CFG.num_layers)]
  scanned = {**params, "decoder": {"layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}}
  shapes = jax.eval_shape(lambda rng: model_lib.init_params(scanned_cfg, rng), jax.random.key(0))
  assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(lambda s: s.shape, shapes)
  np.testing.assert_allclose(
      step_logits(scanned_cfg, scanned, tokens), step_logits(CFG, params, tokens), **TOL
  )


def test_grouped_kv_heads_equal_repeated_full_heads():
  """G = 2 key/value heads equal H = 4 heads whose key/value kernels repeat each group's."""
  params, tokens = _params(), _tokens()
  full_cfg = dataclasses.replace(VISIBLE, num_kv_heads=None)
  full = jax.tree.map(lambda a: a, params)
  for i in range(CFG.num_layers):
    attention = full["decoder"][f"layer_{i}"]["attention"]
    for name in ("k_kernel", "v_kernel"):
      attention[name] = jnp.repeat(attention[name], CFG.num_heads // CFG.num_kv_heads, axis=1)
  np.testing.assert_allclose(
      step_logits(full_cfg, full, tokens), step_logits(VISIBLE, params, tokens), **TOL
  )


def test_output_projection_defines_the_logits():
  params, tokens = _params(), _tokens()
  hidden = step_hidden_flat(CFG, params, tokens)
  kernel_DxV, dk_kernel_D, dk_bias = model_lib.output_projection(CFG, params)
  dk = hidden @ dk_kernel_D + dk_bias
  expected = jnp.concatenate([hidden @ kernel_DxV, dk[..., None]], axis=-1)
  np.testing.assert_allclose(step_logits(CFG, params, tokens), expected, **TOL)


def test_tied_embeddings_and_shared_pause_embedding():
  tied = dataclasses.replace(CFG, tie_embeddings=True, shared_pause_embed=True)
  shapes = jax.eval_shape(lambda rng: model_lib.init_params(tied, rng), jax.random.key(0))
  assert "vocab_head" not in shapes and shapes["pause_embed"].shape == (1, CFG.d_model)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
  output_kernel_DxV, _, _ = model_lib.output_projection(tied, params)
  np.testing.assert_array_equal(output_kernel_DxV, params["token_embed"].T)


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
  params, tokens = _params(), _tokens()
  low = step_logits(dataclasses.replace(VISIBLE, dtype="bfloat16"), params, tokens)
  high = step_logits(VISIBLE, params, tokens)
  assert low.dtype == jnp.float32
  assert float(jnp.abs(low - high).max()) <= 0.05 * float(jnp.abs(high).max())


def test_param_logical_axes_name_every_parameter_axis():
  allowed = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "pauses", "layers", "norm"}
  for cfg in (CFG, dataclasses.replace(CFG, scan_layers=True)):
    init = lambda rng, cfg=cfg: model_lib.init_params(cfg, rng)  # noqa: E731
    shapes = jax.eval_shape(init, jax.random.key(0))
    axes = model_lib.param_logical_axes(cfg)
    assert jax.tree.structure(shapes) == jax.tree.structure(axes, is_leaf=is_spec)
    for shape, spec in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=is_spec)):
      assert len(spec) == len(shape.shape) and set(spec) <= allowed
  axes = model_lib.param_logical_axes(dataclasses.replace(CFG, scan_layers=True))
  expected = jax.sharding.PartitionSpec("layers", "mlp", "embed")
  assert axes["decoder"]["layers"]["mlp"]["down_kernel"] == expected


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(max_pauses=-1), "max_pauses must be an integer >= 0, got -1"),
        (dict(pause_layout="shared"), "pause_layout must be one of"),
        (dict(d_model=30), "d_model=30 is not divisible by num_heads=4"),
        (dict(num_kv_heads=3), "num_heads=4 is not divisible by num_kv_heads=3"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(remat_policy="sometimes"), "remat_policy must be one of"),
        (dict(head_dim=7), "head_dim"),
        (dict(num_layers=0), "num_layers must be an integer >= 1, got 0"),
    ],
)
def test_config_rejects_bad_values_with_clear_messages(changes, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**(SIZES | changes))


def test_config_builds_from_a_dict_and_is_hashable():
  cfg = ModelConfig(**dict(SIZES))
  assert cfg == ModelConfig(**dataclasses.asdict(cfg))
  assert hash(cfg) == hash(dataclasses.replace(cfg))
  assert (cfg.resolved_num_kv_heads, cfg.resolved_head_dim, cfg.num_steps) == (4, 8, K + 1)


def test_step_hidden_rejects_mismatched_segment_ids():
  with pytest.raises(ValueError, match="segment_ids must have the tokens' shape"):
    model_lib.step_hidden(CFG, _params(), _tokens(), segment_ids=jnp.ones((B, N - 1), jnp.int32))


def test_split_logits_are_the_parts_of_step_logits():
  cfg = ModelConfig(vocab_size=11, num_layers=1, d_model=16, num_heads=2, mlp_dim=32,
                          max_pauses=2)
  params = model_lib.init_params(cfg, jax.random.key(3))
  tokens = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
  hidden = model_lib.step_hidden(cfg, params, tokens)
  vocab, dk = model_lib.split_logits_from_hidden(cfg, params, hidden)
  joined = model_lib.step_logits(cfg, params, tokens)
  np.testing.assert_array_equal(vocab, joined[..., :-1])
  np.testing.assert_array_equal(dk, joined[..., -1])
