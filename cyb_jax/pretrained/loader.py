"""Loading a Hugging Face-format folder as a pause-aware model (DESIGN section 9).

The base model becomes the step-0 path: its tensors fill the CYB parameter tree unchanged, so at
k = 0 (private layout, or K = 0) the vocabulary logits are the base model's. What the import
adds, unless the folder holds them already (an exported CYB model, see `export.save`):

  pause_embed `[K, D]` (or `[1, D]` shared): the mean token embedding row plus Gaussian noise of
    standard deviation `PAUSE_NOISE` times the RMS of the token embedding entries (drawn from
    `rng`), so pause inputs start at the token embeddings' scale (scaled by sqrt(D) like them
    when `scale_embeddings`).
  dk_head: kernel zero, bias `cfg.dk_bias_init` (`load` sets it to logit(p) + log V for an
    initial pause probability p, as `cyb_jax.training.components.model_config` does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from cyb_jax import model as model_lib
from cyb_jax.model.config import ModelConfig
from cyb_jax.pretrained import hf_config
from cyb_jax.pretrained import hf_weights

PAUSE_NOISE = 0.01
# Checkpoint tensors that carry no parameters (rotary tables some older exports include).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_hf_config(path: epath.PathLike) -> dict[str, Any]:
  """The parsed `config.json` of a checkpoint folder."""
  config_path = epath.Path(path) / "config.json"
  if not config_path.exists():
    raise ValueError(f"{str(config_path)!r} does not exist: not a Hugging Face-format folder")
  return json.loads(config_path.read_text())


def dk_bias_for(init_pause_prob: float, vocab_size: int) -> float:
  """logit(p) + log V: P(DK) = p when the V vocabulary logits are equal (the trainer's rule)."""
  if not 0.0 < init_pause_prob < 1.0:
    raise ValueError(f"init_pause_prob must lie in (0, 1), got {init_pause_prob!r}")
  return math.log(init_pause_prob / (1.0 - init_pause_prob)) + math.log(vocab_size)


def model_config(
  path: epath.PathLike,
  *,
  max_pauses: int | None = None,
  pause_layout: str | None = None,
  dtype: str = "float32",
  init_pause_prob: float = 0.5,
  **fields: Any,
) -> ModelConfig:
  """The ModelConfig of the folder's config.json with K pauses.

  `max_pauses` None takes the K an exported CYB model recorded (an error for a base model);
  `pause_layout` None takes the recorded layout, else "private"; `dtype` sets both the compute
  and the parameter dtype unless `fields` sets `param_dtype`.
  """
  hf = read_hf_config(path)
  saved = hf.get(hf_config.CYB_KEY) or {}
  if max_pauses is None:
    if "max_pauses" not in saved:
      raise ValueError(
        f"{str(path)!r} is a base model (no {hf_config.CYB_KEY!r} entry in its config.json): pass max_pauses"
      )
    max_pauses = int(saved["max_pauses"])
  if pause_layout is None:
    pause_layout = saved.get("pause_layout", "private")
  fields.setdefault("shared_pause_embed", bool(saved.get("shared_pause_embed", False)))
  fields.setdefault("param_dtype", dtype)
  vocab_size = int(hf.get("vocab_size") or 1)
  fields.setdefault("dk_bias_init", dk_bias_for(init_pause_prob, vocab_size))
  return hf_config.model_config_from_hf(hf, max_pauses=max_pauses, pause_layout=pause_layout, dtype=dtype, **fields)


def flatten(tree) -> dict[tuple[str, ...], Any]:
  """`{path tuple: leaf}` of a nested dict of arrays (the loader's and `export`'s view of params)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): leaf for path, leaf in flat}


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
  """The nested dict of a `{path tuple: leaf}` dict (the inverse of :func:`flatten`)."""
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


# Leaves with a vocabulary axis (padded to `padded_vocab_size`), and that axis.
VOCAB_AXIS = {("token_embed",): 0, ("vocab_head", "kernel"): 1}


def _padded_reader(read, shape: tuple[int, ...], axis: int, size: int):
  """``read`` of a leaf whose ``axis`` is padded from ``size`` to ``shape[axis]`` with zeros:
  the checkpoint is read only inside ``[0, size)``."""

  def read_padded(index):
    index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
    bounds = [s.indices(n)[:2] for s, n in zip(index, shape)]
    lo, hi = bounds[axis]
    out = np.zeros([b - a for a, b in bounds], np.float32)
    if lo < size:
      inner = list(index)
      inner[axis] = slice(lo, min(hi, size))
      part = read(tuple(inner))
      where = [slice(None)] * len(shape)
      where[axis] = slice(0, min(hi, size) - lo)
      out = out.astype(part.dtype)
      out[tuple(where)] = part
    return out

  return read_padded


def _leaf_reader(
  folder: hf_weights.SafetensorsFolder, sources, scanned: bool, dtype
) -> Callable[[tuple[slice, ...]], np.ndarray]:
  """index over the leaf -> numpy block in `dtype`, reading only that block."""

  def read(index):
    index = tuple(index)
    if not scanned:
      block = hf_weights.read_slice(folder.read, sources[0], index)
    else:
      layers = range(*(index[0] if index else slice(None)).indices(len(sources))[:2])
      block = np.stack([hf_weights.read_slice(folder.read, sources[i], index[1:]) for i in layers])
    return np.asarray(block).astype(dtype)

  return read


def load_params(
  path: epath.PathLike,
  cfg: ModelConfig,
  *,
  shardings: Any = None,
  dtype: str | None = None,
  rng: jax.Array | None = None,
) -> dict:
  """The parameter tree of `cfg` from the folder's safetensors, optionally sharded.

  Args:
    path: folder with model.safetensors or model.safetensors.index.json (+ shards).
    cfg: the model config (e.g. from `model_config(path, ...)`); `scan_layers` stacks layers.
    shardings: None (arrays on the default device) or a pytree like the params of
      `jax.sharding.NamedSharding`s (e.g. `sharding.logical_shardings(
      model.param_logical_axes(cfg), mesh, rules)`). Each leaf is then built with
      `jax.make_array_from_callback`: every host reads only the blocks its devices hold.
    dtype: leaf dtype; None means `cfg.param_dtype`.
    rng: key for the pause embedding noise when the folder has no CYB tensors (default key 0).

  Raises:
    ValueError: a missing tensor, a tensor of the wrong shape, or a checkpoint tensor that the
      config does not use (a sign of an unsupported architecture), each named.
  """
  dtype = jnp.dtype(cfg.param_dtype if dtype is None else dtype)
  hf = read_hf_config(path)
  folder = hf_weights.SafetensorsFolder(path)
  sources = hf_weights.tensor_map(cfg, hf_gemma=hf_config.is_gemma(hf))
  abstract = flatten(jax.eval_shape(model_lib.init_params, cfg, jax.random.key(0)))
  if set(abstract) != set(sources):
    raise AssertionError(f"tensor map and parameters differ: {set(abstract) ^ set(sources)}")
  sharding_of = {} if shardings is None else flatten(shardings)
  available = folder.names()
  used, fresh, out = set(), [], {}
  for key, leaf in abstract.items():
    srcs = sources[key]
    if srcs[0].name.startswith(hf_weights.CYB_PREFIX) and srcs[0].name not in available:
      fresh.append(key)
      continue
    for src in srcs:
      if src.name not in available:
        raise ValueError(f"tensor {src.name!r} (for {'/'.join(key)}) is missing from {str(path)!r}")
      want, got = hf_weights.checkpoint_shape(src), folder.shape(src.name)
      if want != got:
        raise ValueError(f"tensor {src.name!r} has shape {got}, the config needs {want}")
      used.add(src.name)
    read = _leaf_reader(folder, srcs, key[:2] == ("decoder", "layers"), dtype)
    if key in VOCAB_AXIS and cfg.padded_vocab_size != cfg.vocab_size:
      read = _padded_reader(read, leaf.shape, VOCAB_AXIS[key], cfg.vocab_size)
    if key in sharding_of:
      out[key] = jax.make_array_from_callback(leaf.shape, sharding_of[key], read)
    else:
      out[key] = jnp.asarray(read(()))
  ignored = {"lm_head.weight"} if cfg.tie_embeddings else set()
  unused = sorted(n for n in available - used - ignored if not n.endswith(_IGNORED_SUFFIXES))
  if unused:
    raise ValueError(
      f"{len(unused)} checkpoint tensors are not used by the config, e.g. "
      f"{unused[:5]}: the architecture is not supported as configured"
    )
  out.update(_fresh_cyb_params(cfg, out[("token_embed",)], fresh, sharding_of, dtype, rng))
  return unflatten(out)


def _fresh_cyb_params(cfg: ModelConfig, token_embed_VxD, keys, sharding_of, dtype, rng):
  """pause_embed and dk_head leaves that the checkpoint lacks (see module docstring)."""
  if not keys:
    return {}
  rng = jax.random.key(0) if rng is None else rng
  rows = 1 if cfg.shared_pause_embed else cfg.max_pauses

  def make(token_embed_VxD, rng):
    table = token_embed_VxD[: cfg.vocab_size].astype(jnp.float32)  # not the padding rows
    rms = jnp.sqrt(jnp.mean(jnp.square(table)))
    noise_RxD = jax.random.normal(rng, (rows, cfg.d_model), jnp.float32)
    values = {
      ("pause_embed",): table.mean(axis=0) + PAUSE_NOISE * rms * noise_RxD,
      ("dk_head", "kernel"): jnp.zeros((cfg.d_model,), jnp.float32),
      ("dk_head", "bias"): jnp.asarray(cfg.dk_bias_init, jnp.float32),
    }
    return {key: values[key].astype(dtype) for key in keys}

  out_shardings = {key: sharding_of[key] for key in keys} if sharding_of else None
  return jax.jit(make, out_shardings=out_shardings)(token_embed_VxD, rng)


def load(
  path: epath.PathLike,
  *,
  max_pauses: int | None = None,
  pause_layout: str | None = None,
  dtype: str = "float32",
  init_pause_prob: float = 0.5,
  rng: jax.Array | None = None,
  **fields: Any,
) -> tuple[ModelConfig, dict]:
  """`(ModelConfig, params)` of a Hugging Face-format folder as a pause-aware model.

  Args:
    path: folder (any `etils.epath` path) with config.json and *.safetensors.
    max_pauses: K; None takes the K of an exported CYB model.
    pause_layout: "private" or "visible"; None: the layout an exported CYB model recorded, else
      "private".
    dtype: compute and parameter dtype ("float32" or "bfloat16").
    init_pause_prob: p, the initial DK probability: dk bias = logit(p) + log V (used when the
      folder has no DK head).
    rng: key for the pause embedding noise (default key 0).
    fields: other ModelConfig fields (`remat_policy`, `scan_layers`, `param_dtype`, ...).

  Returns:
    The config and unsharded parameters; `model.step_logits(cfg, params, tokens)` gives
    `[B, N, K+1, V+1]` (vocabulary first, DK last), and `decode.generate` decodes. A base model
    gets `pause_embed` = mean token embedding + noise and a DK head with kernel 0 (module
    docstring). In the private layout the step-0 vocabulary logits are the base model's for
    every K; in the visible layout only at K = 0 (later positions see the pauses).
  """
  cfg = model_config(
    path, max_pauses=max_pauses, pause_layout=pause_layout, dtype=dtype, init_pause_prob=init_pause_prob, **fields
  )
  return cfg, load_params(path, cfg, rng=rng)
