"""Hugging Face `config.json` <-> `ModelConfig` for the Llama family and Gemma 3 text models.

Supported `model_type`s: "llama" (Llama 2/3.x, SmolLM2), "mistral", "qwen2", "gemma3_text".
Both ways rotary parameters are written in configs are read: `rope_theta` + `rope_scaling`
(+ Gemma's `rope_local_base_freq`), and transformers 5's `rope_parameters` (one dict, or one per
layer type for Gemma 3). A config value the model cannot express (an unknown rotary scaling, an
activation other than the family's, MLP biases, bidirectional attention, ...) is refused with a
ValueError naming the key and its value; keys that do not change the function (token ids,
`max_position_embeddings`, dropout, `transformers_version`, ...) are ignored.

An exported CYB model records its pause settings in a "cyb" entry of config.json
(`CYB_KEY`): `max_pauses`, `pause_layout`, `shared_pause_embed`.
"""

from __future__ import annotations

from typing import Any

from cyb_jax.model.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma3_text")
CYB_KEY = "cyb"
_HF_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}
_GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh")


def is_gemma(hf: dict[str, Any]) -> bool:
  return hf.get("model_type") == "gemma3_text"


def model_config_from_hf(
  hf: dict[str, Any], *, max_pauses: int, pause_layout: str = "private", **fields: Any
) -> ModelConfig:
  """The `ModelConfig` of a Hugging Face config dict, with `max_pauses` pauses.

  `fields` sets further ModelConfig fields that do not describe the base model (`dtype`,
  `param_dtype`, `dk_bias_init`, `shared_pause_embed`, `remat_policy`, `scan_layers`, ...).

  Raises:
    ValueError: an unsupported `model_type` or config value, naming it.
  """
  model_type = hf.get("model_type")
  if model_type == "gemma3":
    raise ValueError(
      "model_type='gemma3' is the multimodal Gemma 3; only its text model is "
      f"supported: model_type must be one of {SUPPORTED_MODEL_TYPES}"
    )
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
  gemma = is_gemma(hf)
  d_model, num_heads = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
  head_dim = hf.get("head_dim") or d_model // num_heads
  num_kv_heads = hf.get("num_key_value_heads") or num_heads
  num_layers = _get(hf, "num_hidden_layers")
  arch = dict(
    vocab_size=_get(hf, "vocab_size"),
    num_layers=num_layers,
    d_model=d_model,
    num_heads=num_heads,
    # None where the default gives the same value, so configs compare equal to the defaults.
    num_kv_heads=None if num_kv_heads == num_heads else num_kv_heads,
    head_dim=None if d_model % num_heads == 0 and head_dim == d_model // num_heads else head_dim,
    mlp_dim=_get(hf, "intermediate_size"),
    rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
  )
  _refuse_if(hf, "mlp_bias", lambda v: bool(v))
  _refuse_if(hf, "partial_rotary_factor", lambda v: v not in (None, 1, 1.0))
  _refuse_if(hf, "pretraining_tp", lambda v: v not in (None, 1))
  if gemma:
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in _GEMMA_ACTIVATIONS:
      raise ValueError(
        f"hidden_activation={activation!r} is not supported for gemma3_text; allowed: {_GEMMA_ACTIVATIONS}"
      )
    _refuse_if(hf, "use_bidirectional_attention", lambda v: bool(v))
    _refuse_if(hf, "attention_bias", lambda v: bool(v))
    if hf.get("attn_logit_softcapping") is not None:  # Gemma 2 applies it, Gemma 3 code does not
      raise ValueError(
        f"attn_logit_softcapping={hf['attn_logit_softcapping']!r} is not supported "
        "for gemma3_text: transformers' Gemma 3 attention ignores it, so the "
        "checkpoint's function is ambiguous; set it to null"
      )
    arch.update(
      norm_plus_one=True,
      mlp_activation="gelu_tanh",
      scale_embeddings=True,
      qk_norm=True,
      post_norms=True,
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
      final_logit_softcap=_optional_float(hf.get("final_logit_softcapping")),
    )
  else:
    activation = hf.get("hidden_act", "silu")
    if activation != "silu":
      raise ValueError(f"hidden_act={activation!r} is not supported for {model_type}; allowed: 'silu'")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
      _refuse_if(hf, key, lambda v: v is not None)
    bias = bool(hf.get("attention_bias", False))
    arch.update(qkv_bias=bias or model_type == "qwen2", out_bias=bias)
  layer_types = _layer_types(hf, num_layers)
  arch.update(_rope_fields(hf, layer_types))
  if "sliding" in layer_types:
    arch.update(layer_types=layer_types, sliding_window=int(_get(hf, "sliding_window")))
  return ModelConfig(**arch, max_pauses=max_pauses, pause_layout=pause_layout, **fields)


def _get(hf: dict[str, Any], key: str):
  if hf.get(key) is None:
    raise ValueError(f"config.json lacks {key!r} (model_type={hf.get('model_type')!r})")
  return hf[key]


def _optional_float(value) -> float | None:
  return None if value is None else float(value)


def _refuse_if(hf: dict[str, Any], key: str, bad) -> None:
  if key in hf and bad(hf[key]):
    raise ValueError(f"{key}={hf[key]!r} is not supported (model_type={hf.get('model_type')!r})")


def _layer_types(hf: dict[str, Any], num_layers: int) -> tuple[str, ...]:
  """ "full"/"sliding" per layer, from `layer_types` or the model family's rule."""
  model_type = hf["model_type"]
  if hf.get("layer_types") is not None:
    names = list(hf["layer_types"])
    if len(names) != num_layers:
      raise ValueError(f"layer_types has {len(names)} entries, num_hidden_layers={num_layers}")
    for name in names:
      if name not in _HF_LAYER_TYPES:
        raise ValueError(f"layer_types entry {name!r} is not supported; allowed: {tuple(_HF_LAYER_TYPES)}")
    types = tuple(_HF_LAYER_TYPES[name] for name in names)
  elif model_type == "gemma3_text":
    pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
    types = tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(num_layers))
  elif model_type == "mistral" and hf.get("sliding_window") is not None:
    types = ("sliding",) * num_layers
  elif model_type == "qwen2" and hf.get("use_sliding_window"):
    first = int(hf.get("max_window_layers", num_layers))
    types = tuple("sliding" if i >= first else "full" for i in range(num_layers))
  else:
    types = ("full",) * num_layers
  if model_type == "qwen2" and not hf.get("use_sliding_window"):
    types = ("full",) * num_layers  # Qwen2 ignores sliding_window unless use_sliding_window
  return types


def _rope_fields(hf: dict[str, Any], layer_types: tuple[str, ...]) -> dict[str, Any]:
  """rope_base, rope_scaling* and rope_local_base from either way of writing them."""
  gemma = is_gemma(hf)
  params = hf.get("rope_parameters")
  if params is not None and gemma:
    full = dict(params.get("full_attention") or {"rope_type": "default"})
    local = dict(params.get("sliding_attention") or {"rope_type": "default"})
    full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
  elif params is not None:
    full, local = dict(params), None
    full.setdefault("rope_theta", hf.get("rope_theta", 10_000.0))
  else:
    full = dict(hf.get("rope_scaling") or {"rope_type": "default"})
    full["rope_theta"] = hf.get("rope_theta", 1_000_000.0 if gemma else 10_000.0)
    local = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10_000.0)} if gemma else None
  out = dict(rope_base=float(full["rope_theta"]), **_scaling_fields(full, "full_attention"))
  if local is not None and "sliding" in layer_types:
    if _rope_type(local) != "default":
      raise ValueError(
        f"rope type {_rope_type(local)!r} of sliding_attention layers is not supported; allowed: 'default'"
      )
    out["rope_local_base"] = float(local["rope_theta"])
  return out


def _rope_type(params: dict[str, Any]) -> str:
  return params.get("rope_type", params.get("type", "default"))


def _scaling_fields(params: dict[str, Any], where: str) -> dict[str, Any]:
  kind = _rope_type(params)
  if params.get("partial_rotary_factor") not in (None, 1, 1.0):
    raise ValueError(f"partial_rotary_factor={params['partial_rotary_factor']!r} is not supported")
  if kind == "default":
    return {}
  if kind == "linear":
    return dict(rope_scaling="linear", rope_scaling_factor=float(params["factor"]))
  if kind == "llama3":
    return dict(
      rope_scaling="llama3",
      rope_scaling_factor=float(params["factor"]),
      rope_low_freq_factor=float(params["low_freq_factor"]),
      rope_high_freq_factor=float(params["high_freq_factor"]),
      rope_original_max_positions=int(params["original_max_position_embeddings"]),
    )
  raise ValueError(f"rope_scaling type {kind!r} ({where}) is not supported; allowed: 'default', 'linear', 'llama3'")


def hf_config_from_model_config(cfg: ModelConfig) -> dict[str, Any]:
  """A Hugging Face config dict (transformers 5 layout) of `cfg`, plus the "cyb" entry.

  Gemma-style configs (the Gemma 3 set of norms, GeGLU, embedding scale) become "gemma3_text",
  the others "llama" (or "qwen2" with q/k/v biases and no output bias).

  Raises:
    ValueError: a combination of fields that no supported family has.
  """
  gemma_flags = (
    cfg.norm_plus_one,
    cfg.mlp_activation == "gelu_tanh",
    cfg.scale_embeddings,
    cfg.qk_norm,
    cfg.post_norms,
  )
  if any(gemma_flags) and not all(gemma_flags):
    raise ValueError(
      "norm_plus_one, mlp_activation='gelu_tanh', scale_embeddings, qk_norm and "
      "post_norms are Gemma 3's and must be set together to export, got "
      f"{gemma_flags}"
    )
  gemma = all(gemma_flags)
  if cfg.attn_logit_softcap is not None:
    raise ValueError(
      f"attn_logit_softcap={cfg.attn_logit_softcap!r} has no gemma3_text, Llama or Qwen2 equivalent to export"
    )
  hf: dict[str, Any] = dict(
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    intermediate_size=cfg.mlp_dim,
    num_hidden_layers=cfg.num_layers,
    num_attention_heads=cfg.num_heads,
    num_key_value_heads=cfg.resolved_num_kv_heads,
    head_dim=cfg.resolved_head_dim,
    rms_norm_eps=cfg.rms_norm_eps,
    tie_word_embeddings=cfg.tie_embeddings,
    torch_dtype=cfg.param_dtype,
    dtype=cfg.param_dtype,
  )
  full = {"rope_type": cfg.rope_scaling or "default", "rope_theta": cfg.rope_base}
  if cfg.rope_scaling is not None:
    full["factor"] = cfg.rope_scaling_factor
  if cfg.rope_scaling == "llama3":
    full.update(
      low_freq_factor=cfg.rope_low_freq_factor,
      high_freq_factor=cfg.rope_high_freq_factor,
      original_max_position_embeddings=cfg.rope_original_max_positions,
    )
  hf_types = {v: k for k, v in _HF_LAYER_TYPES.items()}
  layer_types = [hf_types[t] for t in cfg.resolved_layer_types]
  if gemma:
    local_theta = cfg.rope_base if cfg.rope_local_base is None else cfg.rope_local_base
    if cfg.rope_local_base is None and cfg.rope_scaling is not None and cfg.sliding_window:
      raise ValueError("gemma3_text sliding layers rotate unscaled: set rope_local_base")
    hf.update(
      model_type="gemma3_text",
      architectures=["Gemma3ForCausalLM"],
      hidden_activation="gelu_pytorch_tanh",
      query_pre_attn_scalar=_int_if_integral(
        cfg.resolved_head_dim if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar
      ),
      final_logit_softcapping=cfg.final_logit_softcap,
      layer_types=layer_types,
      sliding_window=cfg.sliding_window or 4096,
      attention_bias=False,
      rope_parameters={
        "full_attention": full,
        "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
      },
    )
  else:
    for name in ("query_pre_attn_scalar", "final_logit_softcap"):
      if getattr(cfg, name) is not None:
        raise ValueError(f"{name}={getattr(cfg, name)!r} has no Llama/Qwen2 equivalent to export")
    if cfg.sliding_window is not None or cfg.rope_local_base is not None:
      raise ValueError("sliding-window layers export only as gemma3_text")
    qwen = cfg.qkv_bias and not cfg.out_bias
    if cfg.out_bias and not cfg.qkv_bias:
      raise ValueError("out_bias without qkv_bias has no Llama/Qwen2 equivalent to export")
    hf.update(
      model_type="qwen2" if qwen else "llama",
      architectures=["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
      hidden_act="silu",
      rope_parameters=full,
    )
    if not qwen:
      hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
  hf[CYB_KEY] = dict(
    max_pauses=cfg.max_pauses, pause_layout=cfg.pause_layout, shared_pause_embed=cfg.shared_pause_embed
  )
  return hf


def _int_if_integral(value: float) -> int | float:
  """An int where the value is integral: transformers' strict configs want one there."""
  return int(value) if float(value).is_integer() else value
