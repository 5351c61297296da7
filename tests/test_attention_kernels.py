"""The fused attention path (`attention_impl="dot_product"`, cyb_jax.model.attention.kernels and
.flash) computes the dense reference (`attention.attend`, `attention_impl="xla"`): values and
gradients.

`flash_attention`'s custom VJP (the log-normaliser's cotangent folded into the kernel's backward
pass, the pause merge, GQA, windows as key ranges) runs here with the reference kernel, which
honours the flash contract (its backward reads `out` only through `delta`), so every gradient is
checked exactly on a CPU. tokamax's GPU kernel cannot run on a CPU: `tests/test_gpu_compile.py`
compiles it for an H100 and `tests/test_accelerator_lowering.py` checks that programs lowered for
CUDA carry it; the `gpu`-marked test below compares it with `attend` on a GPU."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyb_jax import model as model_lib
from cyb_jax.model import attention
from cyb_jax.model import decode
from cyb_jax.model.attention import flash
from cyb_jax.model.attention import kernels as attention_kernels
from cyb_jax.model.config import RUNTIME_FIELDS
from cyb_jax.model.config import ModelConfig

B, N, V, K, W = 2, 12, 50, 2, 3
TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=2e-5)  # of each gradient array's largest entry (sums that cancel)
# GQA (4 query heads on 2 key/value heads) and a sliding-window / full layer mix.
CFG = ModelConfig(
  vocab_size=V,
  num_layers=3,
  d_model=32,
  num_heads=4,
  mlp_dim=64,
  max_pauses=K,
  num_kv_heads=2,
  dk_bias_init=-1.0,
  layer_types=("sliding", "full", "sliding"),
  sliding_window=W,
)
FUSED = dataclasses.replace(CFG, attention_impl="dot_product")


def _packed_ids():
  """Row 0: two documents of 5 and 7 tokens. Row 1: one document of 9 tokens, then padding."""
  segment_ids = jnp.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3], jnp.int32)
  positions = jnp.array([list(range(5)) + list(range(7)), list(range(12))], jnp.int32)
  return segment_ids, positions


def _params(cfg=CFG, seed=0):
  params = model_lib.init_params(cfg, jax.random.key(seed))
  params["dk_head"]["kernel"] = jax.random.normal(jax.random.key(seed + 100), (cfg.d_model,))
  return params


def _tokens(seed=1):
  return jax.random.randint(jax.random.key(seed), (B, N), 0, V)


@functools.partial(jax.jit, static_argnums=0)
def logits_and_grads(cfg, params, tokens, segment_ids, positions):
  """step_logits, and the gradient of a scalar function of all of them w.r.t. the parameters."""

  def f(p):
    logits = model_lib.step_logits(cfg, p, tokens, segment_ids=segment_ids, positions=positions)
    weights = jnp.sin(jnp.arange(logits.size, dtype=jnp.float32)).reshape(logits.shape)
    return (weights * logits).sum(), logits

  (_, logits), grads = jax.value_and_grad(f, has_aux=True)(params)
  return logits, grads


def assert_trees_close(a, b, *, rtol):
  """Every leaf x of `a` is within rtol * max|y| of the same leaf y of `b` (normwise)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * float(np.abs(y).max()), err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------
# The kernel wrapper against `attend` on random inputs.


def _random_qkv(b=2, s=7, m=7, h=4, g=2, e=8, j=3, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(keys[0], (b, s, h, e))
  shared = attention.KeyValues(jax.random.normal(keys[1], (b, m, g, e)), jax.random.normal(keys[2], (b, m, g, e)))
  private = attention.KeyValues(
    jax.random.normal(keys[3], (b, s, j, g, e)), jax.random.normal(keys[4], (b, s, j, g, e))
  )
  return q, shared, private


def _check_equal_with_grads(f_ref, f_fused, args):
  """Equal values and equal gradients (w.r.t. every argument) of a weighted sum of the output."""
  out_ref, out_fused = f_ref(*args), f_fused(*args)
  np.testing.assert_allclose(out_fused, out_ref, **TOL)
  weights = jax.random.normal(jax.random.key(9), out_ref.shape)
  grad = lambda f: jax.grad(lambda *a: (weights * f(*a)).sum(), range(len(args)))  # noqa: E731
  assert_trees_close(grad(f_fused)(*args), grad(f_ref)(*args), **GRAD_TOL)


# Row 0: two documents of 10 and 22 tokens; row 1: one of 25, then padding (segment 0).
_SEGMENTS = jnp.array([[1] * 10 + [2] * 22, [1] * 25 + [0] * 7])
_POSITIONS = jnp.array([list(range(10)) + list(range(22)), list(range(25)) + list(range(7))])


def _document_mask(window=None):
  mask = attention.causal_segment_mask(_SEGMENTS)
  return mask if window is None else mask & attention.window_mask(_POSITIONS, _POSITIONS, window)


@pytest.mark.parametrize("window", [None, 3])
def test_flash_shared_attention_equals_attend(window):
  """The real-token pass: `flash_attention` computes `attend` over the causal-within-documents
  mask (and a sliding window, as key ranges), in value and gradient, with GQA and a custom scale."""
  q, shared, _ = _random_qkv(s=32, m=32)
  mask = _document_mask(window)
  _check_equal_with_grads(
    lambda q, kv: attention.attend(q, kv, mask, scale=0.3),
    lambda q, kv: attention_kernels.flash_document_attend(
      q, kv, _SEGMENTS, scale=0.3, window=window, kernel=flash.REFERENCE
    ),
    (q, shared),
  )


@pytest.mark.parametrize("window", [None, 3])
def test_flash_shared_plus_private_attention_equals_attend(window):
  """The private pause step: the shared block's log-normaliser, differentiated by folding its
  cotangent into the flash backward pass (no extra kernel pass), merges with the private block
  into the joint softmax, in value and gradient (w.r.t. q, the shared and the private keys). Row
  0 sees 1 private key, row 1 all 3; scores near 30 (an unstabilised merge overflows float32)."""
  q, shared, private = _random_qkv(s=32, m=32)
  q = 10.0 * q
  mask = _document_mask(window)
  private_mask = (jnp.arange(3)[None, None] < jnp.array([1, 3])[:, None, None]).astype(bool)
  _check_equal_with_grads(
    lambda q, kv, pkv: attention.attend(q, kv, mask, pkv, private_mask),
    lambda q, kv, pkv: attention_kernels.flash_document_attend(
      q, kv, _SEGMENTS, pkv, private_mask, window=window, kernel=flash.REFERENCE
    ),
    (q, shared, private),
  )


def test_flash_attention_both_outputs_differentiate_exactly():
  """`flash_attention`'s (out, lse) against dense autodiff: the gradient of
  sum(w1 * out) + sum(w2 * lse) w.r.t. q, k and v, with GQA (the log-normaliser's cotangent
  folded into the backward pass's delta), and lse itself."""
  q, shared, _ = _random_qkv(b=2, s=32, m=32, h=4, g=2)
  key_start = flash.key_starts(_SEGMENTS)
  w1 = jax.random.normal(jax.random.key(3), q.shape)
  w2 = jax.random.normal(jax.random.key(4), (2, 32, 4))

  def dense(q, k, v):
    scores = jnp.einsum("bshe,bmhe->bshm", q, jnp.repeat(k, 2, axis=2))
    scores = jnp.where(_document_mask()[:, :, None, :], scores, -jnp.inf)
    out = jnp.einsum("bshm,bmhe->bshe", jax.nn.softmax(scores, axis=-1), jnp.repeat(v, 2, axis=2))
    return out, jax.nn.logsumexp(scores, axis=-1)

  def loss(f):
    def value(*args):
      out, lse = f(*args)
      return (w1 * out).sum() + (w2 * lse).sum()

    return value

  fused = lambda q, k, v: flash.flash_attention(q, k, v, key_start, flash.REFERENCE)  # noqa: E731
  for x, y in zip(fused(q, shared.k, shared.v), dense(q, shared.k, shared.v)):
    np.testing.assert_allclose(x, y, **TOL)
  assert_trees_close(
    jax.grad(loss(fused), (0, 1, 2))(q, shared.k, shared.v),
    jax.grad(loss(dense), (0, 1, 2))(q, shared.k, shared.v),
    **GRAD_TOL,
  )
  # Where the output's cotangent is zero the fold has nothing to carry: lse's cotangent is
  # dropped (flash_attention's contract), and nothing divides by zero.
  only_lse = jax.grad(lambda q: (w2 * fused(q, shared.k, shared.v)[1]).sum())(q)
  np.testing.assert_array_equal(only_lse, 0.0)


def test_key_starts_are_document_and_window_starts():
  segments = jnp.array([[1, 1, 1, 2, 2, 0, 0, 0]])
  np.testing.assert_array_equal(flash.key_starts(segments), [[0, 0, 0, 3, 3, 5, 5, 5]])
  np.testing.assert_array_equal(flash.key_starts(segments, window=2), [[0, 0, 1, 3, 3, 5, 5, 6]])


def test_flash_kernel_choice_by_dtype_and_platform():
  """16-bit calls take the flash path, float32 ones the dense `attend` (no refusal: the dense
  kernel is the float32 kernel). Without a GPU JAX can target, the platform kernel is the
  reference, with the reason."""
  assert attention_kernels.uses_flash_kernel(jnp.bfloat16)
  assert attention_kernels.uses_flash_kernel(jnp.float16)
  assert not attention_kernels.uses_flash_kernel(jnp.float32)
  assert flash.MosaicGpuFlash.unavailable_reason() is not None  # this CPU host
  assert attention_kernels.platform_kernel() is flash.REFERENCE


# ------------------------------------------------------------------------------------------
# The whole model.


@pytest.mark.parametrize("cfg", [CFG, dataclasses.replace(CFG, pause_layout="visible")], ids=["private", "visible"])
def test_fused_step_logits_and_gradients_equal_dense(cfg):
  """K = 2 with packed segments, GQA and sliding/full layers: the private pause scan (real
  prefill + fused pause steps) and the flat visible grid give the dense path's logits and
  parameter gradients."""
  params, tokens = _params(), _tokens()
  segment_ids, positions = _packed_ids()
  fused = dataclasses.replace(cfg, attention_impl="dot_product")
  ref_logits, ref_grads = logits_and_grads(cfg, params, tokens, segment_ids, positions)
  logits, grads = logits_and_grads(fused, params, tokens, segment_ids, positions)
  np.testing.assert_allclose(logits, ref_logits, **TOL)
  assert_trees_close(grads, ref_grads, **GRAD_TOL)


def test_fused_scanned_layers_equal_dense():
  """Scanned layers (the sliding flag traced) and an unrolled pause scan: same logits."""
  cfg = dataclasses.replace(CFG, scan_layers=True, unroll_pause_scan=True)
  params, tokens = _params(cfg), _tokens()
  segment_ids, positions = _packed_ids()
  step = jax.jit(model_lib.step_logits, static_argnums=0)
  fused = dataclasses.replace(cfg, attention_impl="dot_product")
  np.testing.assert_allclose(
    step(fused, params, tokens, segment_ids=segment_ids, positions=positions),
    step(cfg, params, tokens, segment_ids=segment_ids, positions=positions),
    **TOL,
  )


@pytest.mark.parametrize("layout", ["private", "visible"])
def test_fused_decoder_equals_training_forward(layout):
  """The decoder (shared and private caches through the fused kernel) computes the training
  forward's logits."""
  cfg = dataclasses.replace(FUSED, pause_layout=layout)
  params, tokens = _params(), _tokens(4)
  logits, pauses = decode.teacher_forced_step_logits(cfg, params, tokens)
  np.testing.assert_array_equal(pauses, K)
  np.testing.assert_allclose(logits, model_lib.step_logits(cfg, params, tokens), rtol=1e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------
# Configuration.


def test_attention_impl_is_a_runtime_field_defaulting_to_dense():
  assert "attention_impl" in RUNTIME_FIELDS
  assert CFG.attention_impl == "xla"


def test_bad_attention_impls_are_refused():
  with pytest.raises(ValueError, match="attention_impl must be one of"):
    dataclasses.replace(CFG, attention_impl="flash")
  with pytest.raises(ValueError, match="does not support attn_logit_softcap"):
    dataclasses.replace(CFG, attention_impl="dot_product", attn_logit_softcap=50.0)
  dataclasses.replace(CFG, attn_logit_softcap=50.0)  # the dense path supports it


def test_attention_module_refuses_a_soft_cap_with_the_fused_kernel():
  module = attention.Attention(num_heads=2, num_kv_heads=1, head_dim=8, rope_base=1e4, softcap=5.0, impl="dot_product")
  x, positions = jnp.ones((1, 3, 16)), jnp.arange(3)[None]
  visibility = attention.Visibility(attention.causal_segment_mask(jnp.ones((1, 3), jnp.int32)))
  with pytest.raises(ValueError, match="not supported"):
    module.init(jax.random.key(0), x, positions, None, visibility)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 256])
def test_gpu_kernel_compiled_for_the_gpu_equals_attend_in_bfloat16(head_dim):
  """On a GPU: tokamax's compiled Mosaic kernel, in bfloat16, with the private block, is as close
  to the float32 reference as the dense bfloat16 path is, in value and in gradient (head widths
  64 and Gemma's 256)."""
  q, shared, private = _random_qkv(s=128, m=128, e=head_dim)
  segments = jnp.array([[1] * 40 + [2] * 88, [1] * 100 + [0] * 28])
  mask = attention.causal_segment_mask(segments)
  private_mask = jnp.ones((1, 1, 3), bool)
  bf = lambda t: jax.tree.map(lambda x: x.astype(jnp.bfloat16), t)  # noqa: E731
  weights = jax.random.normal(jax.random.key(9), q.shape)

  def value_and_grads(f, args):
    out = f(*args)
    grads = jax.grad(lambda *a: (weights * f(*a).astype(jnp.float32)).sum(), range(len(args)))(*args)
    return jax.tree.map(lambda x: x.astype(jnp.float32), (out, grads))

  args = (q, shared, private)
  exact = value_and_grads(lambda q, kv, pkv: attention.attend(q, kv, mask, pkv, private_mask), args)
  dense = value_and_grads(lambda q, kv, pkv: attention.attend(q, kv, mask, pkv, private_mask), bf(args))
  fused = value_and_grads(
    jax.jit(lambda q, kv, pkv: attention_kernels.flash_document_attend(q, kv, segments, pkv, private_mask)), bf(args)
  )
  for x_fused, x_dense, x_exact in zip(jax.tree.leaves(fused), jax.tree.leaves(dense), jax.tree.leaves(exact)):
    dense_err = float(jnp.abs(x_dense - x_exact).max())
    assert float(jnp.abs(x_fused - x_exact).max()) <= 2 * dense_err + 1e-2, dense_err
