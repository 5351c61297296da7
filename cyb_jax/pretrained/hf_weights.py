"""Hugging Face safetensors names and layouts <-> the CYB parameter tree.

`tensor_map(cfg, hf)` lists, for every leaf of `model.init_params(cfg, ...)`, the checkpoint
tensor(s) it comes from and how (`Source`); scanned layers (`scan_layers`) stack one tensor
per layer on the leading axis. Layouts (PyTorch `nn.Linear` weights are `[out, in]`):

  "copy"      same array                         embeddings, norm weights, CYB tensors
  "in_proj"   [X*E, D]  -> [D, X, E]             q/k/v projections (X = H or G heads)
  "out_proj"  [D, H*E]  -> [H, E, D]             attention output projection
  "transpose" [B, A]    -> [A, B]                MLP projections, lm_head
  "bias"      [X*E]     -> [X, E]                q/k/v biases
  "scalar"    [1]       -> []                    the DK bias

Hugging Face checkpoints already order q/k features for rotate-half rotary embeddings, which is
the form `cyb_jax.model.layers.apply_rotary` uses, so no permutation is needed. Norm weights are
stored as they are used: Llama's y = x_hat * w, Gemma's y = x_hat * (1 + w) (`norm_plus_one`).

`SafetensorsFolder` reads (slices of) tensors from `model.safetensors` or the shards listed in
`model.safetensors.index.json`; every file access goes through `etils.epath`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
from etils import epath

from cyb_jax.model.config import ModelConfig

CYB_PREFIX = "cyb."
INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class Source:
  """Checkpoint tensor `name`, converted by `layout` into a leaf (or one layer) of `shape`."""

  name: str
  layout: str
  shape: tuple[int, ...]


def _layer_sources(cfg: ModelConfig, hf_gemma: bool, i: int) -> dict[tuple[str, ...], Source]:
  d, f = cfg.d_model, cfg.mlp_dim
  h, g, e = cfg.num_heads, cfg.resolved_num_kv_heads, cfg.resolved_head_dim
  p = f"model.layers.{i}."
  out = {
    ("attention_norm", "scale"): Source(p + "input_layernorm.weight", "copy", (d,)),
    ("attention", "q_kernel"): Source(p + "self_attn.q_proj.weight", "in_proj", (d, h, e)),
    ("attention", "k_kernel"): Source(p + "self_attn.k_proj.weight", "in_proj", (d, g, e)),
    ("attention", "v_kernel"): Source(p + "self_attn.v_proj.weight", "in_proj", (d, g, e)),
    ("attention", "out_kernel"): Source(p + "self_attn.o_proj.weight", "out_proj", (h, e, d)),
    ("mlp", "gate_kernel"): Source(p + "mlp.gate_proj.weight", "transpose", (d, f)),
    ("mlp", "up_kernel"): Source(p + "mlp.up_proj.weight", "transpose", (d, f)),
    ("mlp", "down_kernel"): Source(p + "mlp.down_proj.weight", "transpose", (f, d)),
  }
  if hf_gemma:
    out[("mlp_norm", "scale")] = Source(p + "pre_feedforward_layernorm.weight", "copy", (d,))
  else:
    out[("mlp_norm", "scale")] = Source(p + "post_attention_layernorm.weight", "copy", (d,))
  if cfg.post_norms:
    if not hf_gemma:
      raise ValueError("post_norms exist only in the gemma3_text layout")
    out[("post_attention_norm", "scale")] = Source(p + "post_attention_layernorm.weight", "copy", (d,))
    out[("post_mlp_norm", "scale")] = Source(p + "post_feedforward_layernorm.weight", "copy", (d,))
  if cfg.qkv_bias:
    out[("attention", "q_bias")] = Source(p + "self_attn.q_proj.bias", "bias", (h, e))
    out[("attention", "k_bias")] = Source(p + "self_attn.k_proj.bias", "bias", (g, e))
    out[("attention", "v_bias")] = Source(p + "self_attn.v_proj.bias", "bias", (g, e))
  if cfg.out_bias:
    out[("attention", "out_bias")] = Source(p + "self_attn.o_proj.bias", "copy", (d,))
  if cfg.qk_norm:
    out[("attention", "q_norm", "scale")] = Source(p + "self_attn.q_norm.weight", "copy", (e,))
    out[("attention", "k_norm", "scale")] = Source(p + "self_attn.k_norm.weight", "copy", (e,))
  return out


def tensor_map(cfg: ModelConfig, *, hf_gemma: bool) -> dict[tuple[str, ...], Sequence[Source]]:
  """Leaf path of the parameter tree -> its sources (one, or L stacked for scanned layers)."""
  d = cfg.d_model
  out: dict[tuple[str, ...], Sequence[Source]] = {
    ("token_embed",): [Source("model.embed_tokens.weight", "copy", (cfg.vocab_size, d))],
    ("final_norm", "scale"): [Source("model.norm.weight", "copy", (d,))],
    ("dk_head", "kernel"): [Source(CYB_PREFIX + "dk_head.kernel", "copy", (d,))],
    ("dk_head", "bias"): [Source(CYB_PREFIX + "dk_head.bias", "scalar", ())],
  }
  if not cfg.tie_embeddings:
    out[("vocab_head", "kernel")] = [Source("lm_head.weight", "transpose", (d, cfg.vocab_size))]
  if cfg.max_pauses > 0:
    rows = 1 if cfg.shared_pause_embed else cfg.max_pauses
    out[("pause_embed",)] = [Source(CYB_PREFIX + "pause_embed", "copy", (rows, d))]
  layers = [_layer_sources(cfg, hf_gemma, i) for i in range(cfg.num_layers)]
  for key in layers[0]:
    if cfg.scan_layers:
      out[("decoder", "layers") + key] = [layer[key] for layer in layers]
    else:
      for i, layer in enumerate(layers):
        out[("decoder", f"layer_{i}") + key] = [layer[key]]
  return out


def leaf_shape(sources: Sequence[Source], scanned: bool) -> tuple[int, ...]:
  return ((len(sources),) if scanned else ()) + sources[0].shape


# ----------------------------------------------------------------------------------------------
# Layout conversions, whole and by slice.


def _bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> list[tuple[int, int]]:
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  return [s.indices(n)[:2] for s, n in zip(index, shape)]


def read_slice(read, source: Source, index: tuple[slice, ...]) -> np.ndarray:
  """`converted_tensor[index]` reading only the rows/columns needed.

  `read(name, hf_index)` returns `checkpoint[name][hf_index]` (a tuple of slices).
  """
  b = _bounds(index, source.shape)
  layout = source.layout
  if layout == "copy":
    return np.asarray(read(source.name, tuple(slice(*x) for x in b)))
  if layout == "scalar":
    return np.asarray(read(source.name, (slice(0, 1),))).reshape(())
  if layout == "transpose":
    (a0, a1), (b0, b1) = b
    return np.asarray(read(source.name, (slice(b0, b1), slice(a0, a1)))).T
  e = source.shape[-1] if layout != "out_proj" else source.shape[1]
  if layout == "in_proj":  # ours [D, X, E] from [X*E, D]
    (d0, d1), (x0, x1), (e0, e1) = b
    rows = np.asarray(read(source.name, (slice(x0 * e, x1 * e), slice(d0, d1))))
    return rows.reshape(x1 - x0, e, d1 - d0)[:, e0:e1].transpose(2, 0, 1)
  if layout == "out_proj":  # ours [H, E, D] from [D, H*E]
    (x0, x1), (e0, e1), (d0, d1) = b
    cols = np.asarray(read(source.name, (slice(d0, d1), slice(x0 * e, x1 * e))))
    return cols.reshape(d1 - d0, x1 - x0, e)[:, :, e0:e1].transpose(1, 2, 0)
  if layout == "bias":  # ours [X, E] from [X*E]
    (x0, x1), (e0, e1) = b
    return np.asarray(read(source.name, (slice(x0 * e, x1 * e),))).reshape(x1 - x0, e)[:, e0:e1]
  raise ValueError(f"unknown layout {layout!r}")


def to_checkpoint(source: Source, leaf: np.ndarray) -> np.ndarray:
  """The checkpoint form of one (unstacked) leaf: the inverse of the conversion."""
  leaf = np.asarray(leaf)
  if leaf.shape != source.shape:
    raise ValueError(f"{source.name}: parameter shape {leaf.shape}, expected {source.shape}")
  if source.layout == "copy":
    return leaf
  if source.layout == "scalar":
    return leaf.reshape(1)
  if source.layout == "transpose":
    return leaf.T
  if source.layout == "in_proj":
    d, x, e = leaf.shape
    return leaf.transpose(1, 2, 0).reshape(x * e, d)
  if source.layout == "out_proj":
    x, e, d = leaf.shape
    return leaf.transpose(2, 0, 1).reshape(d, x * e)
  if source.layout == "bias":
    return leaf.reshape(-1)
  raise ValueError(f"unknown layout {source.layout!r}")


def checkpoint_shape(source: Source) -> tuple[int, ...]:
  return to_checkpoint(source, np.zeros(source.shape, np.int8)).shape


# ----------------------------------------------------------------------------------------------
# Reading a folder of safetensors files.


class SafetensorsFolder:
  """The tensors of `model.safetensors` or of the shards of `model.safetensors.index.json`.

  Local files are memory-mapped and sliced with `safetensors.safe_open(...).get_slice`. Other
  file systems (e.g. gs://) are read through `epath` by byte ranges (`RangedSafetensors`): either
  way a host reads only the rows of the first axis it asks for.
  """

  def __init__(self, folder: epath.PathLike, *, memory_map: bool = True):
    self.folder = epath.Path(folder)
    self._memory_map = memory_map
    index = self.folder / INDEX_FILENAME
    self._handles: dict[str, Any] = {}
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      self.file_of = {name: str(file) for name, file in weight_map.items()}
    elif (self.folder / SINGLE_FILENAME).exists():
      self.file_of = {name: SINGLE_FILENAME for name in self._open(SINGLE_FILENAME).keys()}
    else:
      raise ValueError(f"{str(self.folder)!r} has neither {SINGLE_FILENAME} nor {INDEX_FILENAME}")

  def _open(self, file: str):
    if file not in self._handles:
      path = self.folder / file
      if self._memory_map and os.path.exists(os.fspath(path)):
        self._handles[file] = safetensors.safe_open(os.fspath(path), framework="numpy")
      else:
        self._handles[file] = RangedSafetensors(path)
    return self._handles[file]

  def names(self) -> set[str]:
    return set(self.file_of)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open(self._file(name)).get_slice(name).get_shape())

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    handle = self._open(self._file(name))
    if not index:
      return np.asarray(handle.get_tensor(name))
    return np.asarray(handle.get_slice(name)[index])

  def _file(self, name: str) -> str:
    if name not in self.file_of:
      raise ValueError(f"tensor {name!r} is not in the checkpoint {str(self.folder)!r}")
    return self.file_of[name]


_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


class RangedSafetensors:
  """`safe_open`'s `keys` / `get_tensor` / `get_slice` over any `epath` file, by byte ranges.

  The safetensors layout: an 8-byte little-endian header length n, n bytes of JSON header
  (`{name: {"dtype", "shape", "data_offsets": [begin, end]}}`, offsets relative to the data),
  then the data. A slice reads the byte range of its rows of the first axis, then slices the
  remaining axes in memory.
  """

  def __init__(self, path: epath.PathLike):
    self.path = epath.Path(path)
    with self.path.open("rb") as f:
      (length,) = np.frombuffer(f.read(8), "<u8")
      header = json.loads(f.read(int(length)))
    header.pop("__metadata__", None)
    self._header = header
    self._data_start = 8 + int(length)

  def keys(self):
    return self._header.keys()

  def get_tensor(self, name: str) -> np.ndarray:
    return self.get_slice(name)[()]

  def get_slice(self, name: str) -> _RangedSlice:
    entry = self._header[name]
    if entry["dtype"] not in _DTYPES:
      raise ValueError(f"tensor {name!r} has dtype {entry['dtype']!r}, not one of {list(_DTYPES)}")
    return _RangedSlice(
      self, np.dtype(_DTYPES[entry["dtype"]]), tuple(entry["shape"]), self._data_start + entry["data_offsets"][0]
    )

  def read_bytes(self, start: int, size: int) -> bytes:
    with self.path.open("rb") as f:
      f.seek(start)
      return f.read(size)


@dataclasses.dataclass(frozen=True)
class _RangedSlice:
  file: RangedSafetensors
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int

  def get_shape(self) -> list[int]:
    return list(self.shape)

  def get_dtype(self) -> str:
    return str(self.dtype)

  def __getitem__(self, index) -> np.ndarray:
    index = index if isinstance(index, tuple) else (index,)
    if not self.shape:
      data = self.file.read_bytes(self.start, self.dtype.itemsize)
      return np.frombuffer(data, self.dtype).reshape(())
    r0, r1 = index[0].indices(self.shape[0])[:2] if index else (0, self.shape[0])
    row_items = int(np.prod(self.shape[1:], dtype=np.int64))
    row_bytes = row_items * self.dtype.itemsize
    data = self.file.read_bytes(self.start + r0 * row_bytes, max(r1 - r0, 0) * row_bytes)
    rows = np.frombuffer(data, self.dtype).reshape((max(r1 - r0, 0),) + self.shape[1:])
    return rows[(slice(None),) + tuple(index[1:])]
