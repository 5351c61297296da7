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
# Two float32 computations of the same logits (scan against flattened mask, scanned against
# unrolled layers, ...) agree to float32 rounding. That needs float32 matmuls at full precision,
# which tests/conftest.py pins for the session: JAX's default on NVIDIA GPUs (TF32, a 10-bit
# mantissa) and TPUs (bfloat16 passes) puts them ~1e-3 apart.
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
  return model_lib.step_hidden_flat(cfg, params, tokens, segment_ids=segment_ids, positions=positions)


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
  flat_hidden = step_hidden_flat(CFG, params, tokens, segment_ids=segment_ids, positions=positions)
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
  scanned_cfg = dataclasses.replace(CFG, scan_layers=True, remat_policy="dots_saveable", unroll_pause_scan=True)
  params, tokens = _params(), _tokens()
  layers = [params["decoder"][f"layer_{i}"] for i in range(CFG.num_layers)]
  scanned = {**params, "decoder": {"layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}}
  shapes = jax.eval_shape(lambda rng: model_lib.init_params(scanned_cfg, rng), jax.random.key(0))
  assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(lambda s: s.shape, shapes)
  np.testing.assert_allclose(step_logits(scanned_cfg, scanned, tokens), step_logits(CFG, params, tokens), **TOL)


def test_grouped_kv_heads_equal_repeated_full_heads():
  """G = 2 key/value heads equal H = 4 heads whose key/value kernels repeat each group's."""
  params, tokens = _params(), _tokens()
  full_cfg = dataclasses.replace(VISIBLE, num_kv_heads=None)
  full = jax.tree.map(lambda a: a, params)
  for i in range(CFG.num_layers):
    attention = full["decoder"][f"layer_{i}"]["attention"]
    for name in ("k_kernel", "v_kernel"):
      attention[name] = jnp.repeat(attention[name], CFG.num_heads // CFG.num_kv_heads, axis=1)
  np.testing.assert_allclose(step_logits(full_cfg, full, tokens), step_logits(VISIBLE, params, tokens), **TOL)


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
  cfg = ModelConfig(vocab_size=11, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_pauses=2)
  params = model_lib.init_params(cfg, jax.random.key(3))
  tokens = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
  hidden = model_lib.step_hidden(cfg, params, tokens)
  vocab, dk = model_lib.split_logits_from_hidden(cfg, params, hidden)
  joined = model_lib.step_logits(cfg, params, tokens)
  np.testing.assert_array_equal(vocab, joined[..., :-1])
  np.testing.assert_array_equal(dk, joined[..., -1])


# ----------------------------------------------------------------------------------------------
# Architecture variants (Llama family, Gemma 3) and sliding windows.

W = 3
WINDOWED = dataclasses.replace(
  CFG,
  layer_types=("sliding", "full"),
  sliding_window=W,
  rope_local_base=100.0,
  rope_scaling="llama3",
  rope_scaling_factor=4.0,
  rope_low_freq_factor=1.0,
  rope_high_freq_factor=4.0,
  rope_original_max_positions=4,
)
GEMMA_LIKE = dataclasses.replace(
  WINDOWED,
  norm_plus_one=True,
  mlp_activation="gelu_tanh",
  scale_embeddings=True,
  qk_norm=True,
  post_norms=True,
  query_pre_attn_scalar=12.0,
  attn_logit_softcap=3.0,
  final_logit_softcap=5.0,
  qkv_bias=True,
  out_bias=True,
  rms_norm_eps=1e-5,
  rope_scaling="linear",
  rope_low_freq_factor=None,
  rope_high_freq_factor=None,
  rope_original_max_positions=None,
)


def _random_params(cfg, seed=0):
  """Every parameter random (norm scales and biases too), so that each feature shows."""
  shapes = jax.eval_shape(lambda rng: model_lib.init_params(cfg, rng), jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(scale=0.3, size=s.shape) + (s.ndim == 1) * 0.5, s.dtype), shapes)


def test_default_config_parameters_are_unchanged_by_the_architecture_fields():
  shapes = jax.eval_shape(lambda rng: model_lib.init_params(CFG, rng), jax.random.key(0))
  layer = shapes["decoder"]["layer_0"]
  assert sorted(layer) == ["attention", "attention_norm", "mlp", "mlp_norm"]
  assert sorted(layer["attention"]) == ["k_kernel", "out_kernel", "q_kernel", "v_kernel"]
  params = model_lib.init_params(CFG, jax.random.key(0))
  np.testing.assert_array_equal(params["final_norm"]["scale"], 1.0)


def test_gemma_like_config_adds_its_parameters():
  shapes = jax.eval_shape(lambda rng: model_lib.init_params(GEMMA_LIKE, rng), jax.random.key(0))
  layer = shapes["decoder"]["layer_1"]
  assert {"post_attention_norm", "post_mlp_norm"} <= set(layer)
  assert {"q_bias", "k_bias", "v_bias", "out_bias", "q_norm", "k_norm"} <= set(layer["attention"])
  assert layer["attention"]["q_norm"]["scale"].shape == (CFG.resolved_head_dim,)
  params = model_lib.init_params(GEMMA_LIKE, jax.random.key(0))
  np.testing.assert_array_equal(params["final_norm"]["scale"], 0.0)  # (1 + w), w = 0


@pytest.mark.parametrize("layout", ["private", "visible"])
def test_one_sliding_layer_sees_exactly_the_window_by_derivatives(layout):
  """With one sliding layer, slot (n, k) depends on token m iff 0 <= n - m < W (both layouts)."""
  cfg = dataclasses.replace(CFG, num_layers=1, layer_types=("sliding",), sliding_window=W, pause_layout=layout)
  params = _random_params(cfg)
  tokens = jnp.arange(N)[None] + 7
  direction_D = jax.random.normal(jax.random.key(5), (cfg.d_model,))

  def hidden(token_embed):
    return model_lib.step_hidden(cfg, {**params, "token_embed": token_embed}, tokens)

  def hidden_tangent(m):
    tangent = jnp.zeros_like(params["token_embed"]).at[tokens[0, m]].set(direction_D)
    return jax.jvp(hidden, (params["token_embed"],), (tangent,))[1][0]

  tangents_NxNxKxD = jax.jit(jax.vmap(hidden_tangent))(jnp.arange(N))
  influence_NxNxK = np.asarray(jnp.abs(tangents_NxNxKxD).max(axis=3)).transpose(1, 0, 2)
  distance_NxN = np.arange(N)[:, None] - np.arange(N)[None, :]  # [output n, input m]
  inside_NxN = (distance_NxN >= 0) & (distance_NxN < W)
  assert np.all(influence_NxNxK[~inside_NxN] == 0.0)
  assert np.all(influence_NxNxK[inside_NxN] > 0.0)


@pytest.mark.parametrize("cfg", [WINDOWED, GEMMA_LIKE], ids=["llama3_windows", "gemma_like"])
def test_private_scan_equals_flattened_mask_with_windows(cfg):
  params, tokens = _random_params(cfg), _tokens()
  segment_ids, positions = _packed_ids()
  scan_logits = step_logits(cfg, params, tokens, segment_ids=segment_ids, positions=positions)
  flat_hidden = step_hidden_flat(cfg, params, tokens, segment_ids=segment_ids, positions=positions)
  np.testing.assert_allclose(scan_logits, model_lib.logits_from_hidden(cfg, params, flat_hidden), **TOL)
  full = dataclasses.replace(cfg, layer_types=None, sliding_window=None, rope_local_base=None)
  assert np.abs(step_logits(full, params, tokens) - step_logits(cfg, params, tokens)).max() > 1e-3


def test_scanned_and_rematerialised_layers_of_mixed_types_match_unrolled():
  """Layer types reach scanned (and rematerialised) blocks as traced flags."""
  params, tokens = _random_params(GEMMA_LIKE), _tokens()
  layers = [params["decoder"][f"layer_{i}"] for i in range(CFG.num_layers)]
  stacked = {**params, "decoder": {"layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}}
  expected = step_logits(GEMMA_LIKE, params, tokens)
  scanned_cfg = dataclasses.replace(GEMMA_LIKE, scan_layers=True, remat_policy="full")
  np.testing.assert_allclose(step_logits(scanned_cfg, stacked, tokens), expected, **TOL)
  remat_cfg = dataclasses.replace(GEMMA_LIKE, remat_policy="dots_saveable")
  np.testing.assert_allclose(step_logits(remat_cfg, params, tokens), expected, **TOL)


def test_final_logit_softcap_caps_vocabulary_logits_only():
  params, tokens = _random_params(GEMMA_LIKE), _tokens()
  uncapped = dataclasses.replace(GEMMA_LIKE, final_logit_softcap=None)
  hidden = step_hidden_flat(GEMMA_LIKE, params, tokens)
  raw = model_lib.logits_from_hidden(uncapped, params, hidden)
  capped = model_lib.logits_from_hidden(GEMMA_LIKE, params, hidden)
  np.testing.assert_allclose(capped[..., :V], 5.0 * jnp.tanh(raw[..., :V] / 5.0), **TOL)
  np.testing.assert_array_equal(model_lib.cap_vocab_logits(GEMMA_LIKE, raw[..., :V]), capped[..., :V])
  np.testing.assert_array_equal(capped[..., V], raw[..., V])
  assert float(jnp.abs(raw[..., :V]).max()) > 5.0


def test_attention_softcap_and_scale_follow_their_formula():
  """attend == softmax(c tanh(q.k s / c)) v, computed directly."""
  from cyb_jax.model import attention

  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32) for _ in range(3))
  mask = jnp.tril(jnp.ones((5, 5), bool))[None]
  out = attention.attend(q, attention.KeyValues(k, v), mask, scale=0.7, softcap=1.5)
  scores = 1.5 * jnp.tanh(jnp.einsum("bshe,bmhe->bhsm", q, k) * 0.7 / 1.5)
  weights = jax.nn.softmax(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1)
  np.testing.assert_allclose(out, jnp.einsum("bhsm,bmhe->bshe", weights, v), **TOL)


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(layer_types=("sliding", "full")), "sliding_window must be an integer >= 1, got None"),
    (dict(sliding_window=4), "sliding_window=4 needs some layer_types entry 'sliding'"),
    (dict(layer_types=("full",)), "layer_types has 1 entries, num_layers=2"),
    (dict(layer_types=("full", "local"), sliding_window=2), "layer_types entry must be one of"),
    (dict(rope_scaling="yarn"), "rope_scaling must be one of"),
    (dict(rope_scaling="linear"), "rope_scaling='linear' needs rope_scaling_factor"),
    (dict(rope_scaling_factor=2.0), "rope_scaling_factor=2.0 must be None with rope_scaling"),
    (dict(mlp_activation="relu"), "mlp_activation must be one of"),
    (dict(final_logit_softcap=0.0), "final_logit_softcap must be a finite number > 0, got 0.0"),
    (dict(rope_local_base=10.0), "rope_local_base=10.0 needs some 'sliding' layer"),
  ],
)
def test_config_rejects_bad_architecture_values(changes, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**(SIZES | changes))


def test_layer_types_from_a_list_become_a_hashable_tuple():
  cfg = ModelConfig(**SIZES, layer_types=["sliding", "full"], sliding_window=2)
  assert cfg.layer_types == ("sliding", "full") and hash(cfg) == hash(dataclasses.replace(cfg))
