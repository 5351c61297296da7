"""Exporting a CYB model as a Hugging Face-format folder that `loader.load` reads back.

The base tensors keep their Hugging Face names and layouts (`hf_weights`), so the folder is
also a plain Llama / Qwen2 / Gemma 3 checkpoint for other tools (they ignore the extra tensors
`cyb.pause_embed`, `cyb.dk_head.kernel`, `cyb.dk_head.bias`, and the "cyb" entry of config.json
that records K, the layout and whether the pause embedding is shared).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
import numpy as np
import safetensors.numpy
from etils import epath
from jax.experimental import multihost_utils

from cyb_jax.model.config import ModelConfig
from cyb_jax.pretrained import hf_config
from cyb_jax.pretrained import hf_weights
from cyb_jax.pretrained import loader

# Files copied by `save(..., copy_files_from=...)`: tokenizer and generation settings.
COMPANION_FILES = (
  "tokenizer.json",
  "tokenizer.model",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
)


def _host_array(leaf) -> np.ndarray:
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
  return np.asarray(jax.device_get(leaf))


def save(
  path: epath.PathLike,
  cfg: ModelConfig,
  params,
  *,
  copy_files_from: epath.PathLike | None = None,
  companion_files: Sequence[str] = COMPANION_FILES,
) -> None:
  """Writes config.json and model.safetensors (one file) of `(cfg, params)` to `path`.

  Leaves keep their dtype. On several processes every process gathers the parameters and
  process 0 writes. `copy_files_from` copies the `companion_files` that exist there
  (tokenizer, generation config) into `path`.
  """
  hf = hf_config.hf_config_from_model_config(cfg)
  sources = hf_weights.tensor_map(cfg, hf_gemma=hf_config.is_gemma(hf))
  flat = loader.flatten(params)
  for key, axis in loader.VOCAB_AXIS.items():  # the padding rows are not the model's
    if key in flat:
      flat[key] = np.take(_host_array(flat[key]), np.arange(cfg.vocab_size), axis=axis)
  if set(flat) != set(sources):
    raise ValueError(f"params do not match the config: {sorted(set(flat) ^ set(sources))[:5]}")
  tensors = {}
  for key, srcs in sources.items():
    leaf = _host_array(flat[key])
    layers = list(leaf) if key[:2] == ("decoder", "layers") else [leaf]  # scanned: split L
    for src, layer in zip(srcs, layers):
      tensors[src.name] = np.ascontiguousarray(hf_weights.to_checkpoint(src, layer))
  if jax.process_index() != 0:
    return
  folder = epath.Path(path)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
  (folder / hf_weights.SINGLE_FILENAME).write_bytes(safetensors.numpy.save(tensors, metadata={"format": "pt"}))
  if copy_files_from is not None:
    source = epath.Path(copy_files_from)
    for name in companion_files:
      if (source / name).exists():
        (folder / name).write_bytes((source / name).read_bytes())
