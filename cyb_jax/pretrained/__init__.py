"""Pretrained base models (Llama family, Gemma 3 text) as pause-aware CYB models.

  cfg, params = cyb_jax.pretrained.load("/path/to/hf_folder", max_pauses=3)
  logits_BxNxKxV1 = cyb_jax.model.step_logits(cfg, params, tokens_BxN)

`load` reads config.json and the safetensors of a Hugging Face-format folder (DESIGN
section 9); `load_params` is its sharded form for the trainer; `save` exports a CYB model as
such a folder (readable again by `load`). See `loader`, `export`, `hf_config`, `hf_weights`.
"""

from cyb_jax.pretrained.export import save
from cyb_jax.pretrained.hf_config import SUPPORTED_MODEL_TYPES
from cyb_jax.pretrained.hf_config import hf_config_from_model_config
from cyb_jax.pretrained.hf_config import model_config_from_hf
from cyb_jax.pretrained.loader import PAUSE_NOISE
from cyb_jax.pretrained.loader import dk_bias_for
from cyb_jax.pretrained.loader import load
from cyb_jax.pretrained.loader import load_params
from cyb_jax.pretrained.loader import model_config
from cyb_jax.pretrained.loader import read_hf_config

__all__ = [
  "PAUSE_NOISE",
  "SUPPORTED_MODEL_TYPES",
  "dk_bias_for",
  "hf_config_from_model_config",
  "load",
  "load_params",
  "model_config",
  "model_config_from_hf",
  "read_hf_config",
  "save",
]
