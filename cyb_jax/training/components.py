"""From a run config to the pieces a run is made of: model config, data, loss, optimiser, a loaded run.

The one place that reads a run config (``configs/base.py`` lists every field). The trainer,
the experiment, ``launch/analyze.py``, ``launch/generate.py``, benchmarks and tests all build
their pieces here, so that each field is interpreted and validated once:

* :func:`model_config` -- ``config.model`` plus the data's vocabulary -> ``ModelConfig``;
* :func:`make_run_data` -- ``config.data`` -> the run's ``DataBundle``;
* :func:`make_loss` -- ``config.loss`` -> a :class:`cyb_jax.losses.Loss` (the loss library
  interprets ``loss.name``; nothing here branches on it);
* :func:`make_optimizer` -- ``config.optimizer`` -> AdamW with its learning-rate schedule;
* :func:`protocol` -- ``config.eval`` and the loss -> the evaluation protocol;
* :func:`validate` -- every check, before anything is written;
* :func:`load_run` -- a finished run's config, data and parameters from its workdir;
* :func:`schedule_changes` -- what a resumed run would change in its learning-rate schedule.

Imports go down only: this module uses the model, data, loss, checkpoint and evaluation
layers and none of them import it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax
from absl import logging

from cyb_jax import files
from cyb_jax import losses
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.analysis import evaluation
from cyb_jax.data import DataBundle
from cyb_jax.data import make_data
from cyb_jax.data import validate_data_config
from cyb_jax.training import checkpoint as ckpt_lib

HF_PREFIX = "hf:"  # init_from=hf:PATH: a Hugging Face-format base model (cyb_jax.pretrained)

# model.* fields that say how a model is computed, trained or extended with pauses; every other
# model field is architecture, which an hf: base model brings (those must then be None).
_PAUSE_AND_RUNTIME_FIELDS = (
  "max_pauses",
  "pause_layout",
  "shared_pause_embed",
  "dtype",
  "param_dtype",
  "remat_policy",
  "scan_layers",
  "unroll_pause_scan",
  "init_pause_prob",
  "vocab_pad_multiple",
  "attention_impl",
)

# Run-config fields that were once 0 for "derive it": older config.json files are read with
# 0 meaning None.
_LEGACY_ZERO_IS_NONE = ("model.vocab_size", "model.num_kv_heads", "model.head_dim", "loss.vocab_chunk")


def pretrained_path(config: ml_collections.ConfigDict) -> str | None:
  """The base model folder of ``init_from=hf:PATH`` (local or ``gs://``), else None."""
  init_from = config.init_from or ""
  return init_from[len(HF_PREFIX) :] if init_from.startswith(HF_PREFIX) else None


def _pretrained_model_config(
  config: ml_collections.ConfigDict, path: str, data_vocab_size: int
) -> model_lib.ModelConfig:
  """The base model's architecture with this run's pauses, dtypes and memory settings."""
  from cyb_jax import pretrained  # pylint: disable=g-import-not-at-top

  m = dict(config.model)
  fixed = sorted(k for k, v in m.items() if k not in _PAUSE_AND_RUNTIME_FIELDS and v is not None)
  if fixed:
    raise ValueError(
      f"init_from={config.init_from!r} brings the architecture, but the config "
      f"sets {', '.join(f'model.{k}={m[k]!r}' for k in fixed)}: leave them None "
      "(cyb_jax/configs/finetune_hf.py does)."
    )
  p = m.get("init_pause_prob")
  runtime = {k: m[k] for k in _PAUSE_AND_RUNTIME_FIELDS if k in m and k != "init_pause_prob"}
  runtime["vocab_pad_multiple"] = vocab_pad_multiple(config)
  cfg = pretrained.model_config(path, init_pause_prob=0.5 if p is None else p, **runtime)
  if p is None:
    cfg = dataclasses.replace(cfg, dk_bias_init=0.0)
  if cfg.vocab_size < data_vocab_size:
    raise ValueError(
      f"the tokenizer has {data_vocab_size} ids but the base model {path} only "
      f"{cfg.vocab_size}: use the model's own tokenizer (data.tokenizer)."
    )
  return cfg


def model_config(config: ml_collections.ConfigDict, data_vocab_size: int) -> model_lib.ModelConfig:
  """The ``ModelConfig`` of ``config.model``; ``vocab_size = None`` takes the data's vocabulary.

  ``model.init_pause_prob = p`` sets the DK bias to ``logit(p) + log V``: at initialisation
  the vocabulary logits are near 0, so P(<don't know>) starts near ``p`` at every step and
  the pause steps receive gradient from the start; ``None`` leaves the bias at 0. With
  ``init_from=hf:PATH`` the architecture is the base model's (:mod:`cyb_jax.pretrained`).
  """
  path = pretrained_path(config)
  if path is not None:
    return _pretrained_model_config(config, path, data_vocab_size)
  unset = sorted(
    k
    for k in ("num_layers", "d_model", "num_heads", "mlp_dim", "tie_embeddings", "rope_base")
    if k in config.model and config.model[k] is None
  )
  if unset:
    raise ValueError(
      f"{', '.join('model.' + k for k in unset)} unset: give them, or "
      "init_from='hf:PATH' to take a pretrained model's architecture."
    )
  fields = {f.name for f in dataclasses.fields(model_lib.ModelConfig)} - {"dk_bias_init"}
  m = dict(config.model)
  init_pause_prob = m.pop("init_pause_prob", None)
  if m.pop("dk_bias_init", 0.0) not in (0.0, None):
    raise ValueError(
      "model.dk_bias_init is not a config field: set the initial pause probability with model.init_pause_prob."
    )
  unknown = sorted(set(m) - fields)
  if unknown:
    raise ValueError(f"unknown model config fields {unknown}; allowed: {sorted(fields | {'init_pause_prob'})}.")
  vocab = m.pop("vocab_size", None)
  vocab = data_vocab_size if vocab is None else int(vocab)
  if vocab < data_vocab_size:
    raise ValueError(
      f"model.vocab_size={vocab} is smaller than the data's vocabulary "
      f"({data_vocab_size} ids); use None to take the data's."
    )
  dk_bias = 0.0
  if init_pause_prob is not None:
    if not 0.0 < init_pause_prob < 1.0:
      raise ValueError(f"model.init_pause_prob={init_pause_prob} must lie in (0, 1), or be None for a DK bias of 0.")
    dk_bias = math.log(init_pause_prob / (1 - init_pause_prob)) + math.log(vocab)
  m["vocab_pad_multiple"] = vocab_pad_multiple(config)
  return model_lib.ModelConfig(vocab_size=vocab, dk_bias_init=dk_bias, **m)


def vocab_pad_multiple(config: ml_collections.ConfigDict) -> int:
  """``model.vocab_pad_multiple`` times the mesh's ``tensor`` size: the embedding and output
  head then split evenly over the tensor axis, whatever the vocabulary (docs/design.md
  section 10). Resuming on a mesh of another tensor size needs the same padded size."""
  multiple = config.model.get("vocab_pad_multiple", 1)
  if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
    raise ValueError(f"model.vocab_pad_multiple={multiple!r} must be an int >= 1.")
  tensor = config.mesh.tensor
  if tensor == -1:
    tensor = sharding.mesh_shape(config.mesh, jax.device_count())[2]
  return multiple * tensor


def make_loss(config: ml_collections.ConfigDict) -> losses.Loss:
  """The loss of ``config.loss`` for a model with ``config.model.max_pauses`` pauses."""
  loss = losses.make_loss_from_config(config.loss)
  loss.check_num_steps(config.model.max_pauses + 1)
  return loss


def vocab_chunk(config: ml_collections.ConfigDict) -> int | None:
  """``loss.vocab_chunk``: None for full logits, else the chunk width (checked)."""
  chunk = config.loss.vocab_chunk
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
    raise ValueError(f"loss.vocab_chunk={chunk!r} must be None (full logits) or an int >= 1.")
  return chunk


def protocol(config: ml_collections.ConfigDict) -> evaluation.Protocol:
  """The evaluation protocol of a run: ``eval.tau`` and the loss's read-out step."""
  return evaluation.protocol_of(config.loss.name, config.model.max_pauses + 1, config.eval.tau)


def schedule_steps(config: ml_collections.ConfigDict) -> int:
  """The steps the learning-rate schedule spans: ``optimizer.schedule_steps``, or
  ``num_train_steps`` when that is None."""
  steps = config.optimizer.schedule_steps
  if steps is None:
    return config.num_train_steps
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"optimizer.schedule_steps={steps!r} must be None (= num_train_steps) or a positive int.")
  return steps


def schedule_facts(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields that define the learning rate of every step (stored in checkpoints)."""
  o = config.optimizer
  return {
    "schedule_steps": schedule_steps(config),
    "warmup_steps": o.warmup_steps,
    "learning_rate": o.learning_rate,
    "end_learning_rate_fraction": o.end_learning_rate_fraction,
  }


def schedule_changes(saved: Mapping[str, Any] | None, config: ml_collections.ConfigDict) -> list[str]:
  """``"field: checkpoint A vs config B"`` for each schedule field a resume would change.

  ``saved`` is the checkpoint's :func:`schedule_facts` (None for checkpoints written before
  they were stored: nothing to compare).
  """
  if not saved:
    return []
  now = schedule_facts(config)
  return [
    f"optimizer.{k}: checkpoint {saved[k]!r} vs config {now[k]!r}" for k in now if k in saved and saved[k] != now[k]
  ]


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up, cosine decay over :func:`schedule_steps`, global-norm clipping."""
  o = config.optimizer
  if o.learning_rate <= 0:
    raise ValueError(f"optimizer.learning_rate={o.learning_rate} must be > 0.")
  if o.warmup_steps < 0:
    raise ValueError(f"optimizer.warmup_steps={o.warmup_steps} must be >= 0.")
  horizon = schedule_steps(config)
  warmup = min(o.warmup_steps, horizon // 2)
  if warmup != o.warmup_steps:
    logging.warning(
      "optimizer.warmup_steps=%d shortened to %d (half of the schedule's %d steps).", o.warmup_steps, warmup, horizon
    )
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=o.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(horizon, warmup + 1),
    end_value=o.learning_rate * o.end_learning_rate_fraction,
  )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = []
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule


def validate(config: ml_collections.ConfigDict) -> losses.Loss:
  """Fails fast, before anything is written, on values that cannot work; returns the loss.

  The data fields are checked by :func:`make_run_data` (before it reads or writes
  anything); :func:`validate_all` checks both without building the data.
  """
  if config.data.source is None:
    raise ValueError(
      "data.source is required by this config: e.g. --config.data.source='text:/path/*.txt' (or 'tfds:NAME')."
    )
  for name in ("num_train_steps", "eval_every_steps", "checkpoint_every_steps", "log_every_steps", "keep_checkpoints"):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive integer.")
  if config.model.max_pauses < 0:
    raise ValueError(f"model.max_pauses={config.model.max_pauses} must be >= 0 (K, the most pauses per token).")
  accum = config.optimizer.grad_accum_steps
  if accum < 1 or config.data.batch_size % accum:
    raise ValueError(
      f"optimizer.grad_accum_steps={accum} must be >= 1 and divide data.batch_size={config.data.batch_size}."
    )
  vocab_chunk(config)
  schedule_steps(config)
  init_folder = pretrained_path(config) or config.init_from
  if init_folder and not files.resolve(init_folder).is_dir():
    raise ValueError(f"init_from={config.init_from!r} is not a folder.")
  if pretrained_path(config) is not None and config.data.source == "synthetic":
    raise ValueError(
      f"init_from={config.init_from!r} fine-tunes a pretrained language model: "
      "give it text (data.source='text:PATH' or 'tfds:NAME'), not the synthetic "
      "task."
    )
  warmup = config.loss.get("pause_warmup_steps", 0)
  if isinstance(warmup, int) and warmup >= config.num_train_steps:
    raise ValueError(
      f"loss.pause_warmup_steps={warmup} covers the whole run (num_train_steps={config.num_train_steps}): "
      f"{config.loss.name} would never train; set it below num_train_steps (e.g. "
      f"{config.num_train_steps // 2}) or to 0."
    )
  protocol(config)
  return make_loss(config)


def validate_all(config: ml_collections.ConfigDict) -> None:
  """:func:`validate` and the data fields (e.g. every run of an experiment, up front)."""
  validate(config)
  validate_data_config(config.data, process_count=jax.process_count())


def make_run_data(config: ml_collections.ConfigDict, workdir: str) -> DataBundle:
  """The run's data (validated once, in :func:`cyb_jax.data.make_data`), for this process.

  With ``init_from=hf:PATH`` and no ``data.tokenizer``, the text is encoded with the base
  model's own tokenizer (the folder's ``tokenizer.json`` or ``tokenizer.model``).
  """
  data_config = config.data
  path = pretrained_path(config)
  if path is not None and not data_config.tokenizer:
    data_config = ml_collections.ConfigDict(data_config.to_dict())
    data_config.tokenizer = path
  return make_data(
    data_config, seed=config.seed, workdir=workdir, process_index=jax.process_index(), process_count=jax.process_count()
  )


def run_meta(model_cfg: model_lib.ModelConfig, config: ml_collections.ConfigDict) -> dict:
  """Facts a checkpoint must share with a config to be resumed by it, and its schedule."""
  return {"model": dataclasses.asdict(model_cfg), "loss": config.loss.name, "schedule": schedule_facts(config)}


def upgrade_legacy_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A run config read from an older ``config.json``, in today's form.

  Fields that once used 0 for "derive it" read 0 as None; the DK bias field that
  ``model.init_pause_prob`` overrode is dropped (it had no effect then).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted in _LEGACY_ZERO_IS_NONE:
    section, name = dotted.split(".")
    if config[section].get(name) == 0:
      config[section][name] = None
  if "dk_bias_init" in config.model:
    del config.model["dk_bias_init"]
  if config.model.get("init_pause_prob") == 0:
    config.model.init_pause_prob = None
  return config


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A trained run, ready for analysis or decoding.

  Attributes:
    config: the run's config (from its ``config.json``).
    model_cfg: its ``ModelConfig``.
    params: the parameters at ``step`` (host-local arrays).
    step: the checkpoint's step.
    data: the run's ``DataBundle`` (same tokenizer and eval set).
    protocol: how the run is evaluated (:func:`protocol`).
  """

  config: ml_collections.ConfigDict
  model_cfg: model_lib.ModelConfig
  params: Any
  step: int
  data: DataBundle
  protocol: evaluation.Protocol


def load_run(workdir: str, step: int | None = None, *, eval_batches: int | None = None) -> LoadedRun:
  """Loads a run's config, data and parameters (the newest checkpoint by default).

  ``eval_batches`` replaces the run's ``data.eval_batches`` (None: the run's own): more or
  fewer batches of the same held-out documents, in the same order (the train/eval split does
  not depend on it).
  """
  config = upgrade_legacy_config(ckpt_lib.load_config(workdir))
  if eval_batches is not None:
    if isinstance(eval_batches, bool) or not isinstance(eval_batches, int) or eval_batches < 1:
      raise ValueError(
        f"eval_batches={eval_batches!r} must be an int >= 1 (None: the run's {config.data.eval_batches})."
      )
    if not config.data.eval_batches:
      raise ValueError(
        f"eval_batches={eval_batches} needs a run with an eval split; {workdir!r} has data.eval_batches=0."
      )
    config.data.eval_batches = eval_batches
  data = make_run_data(config, workdir)
  model_cfg = model_config(config, data.info.vocab_size)
  abstract = jax.eval_shape(lambda: model_lib.init_params(model_cfg, jax.random.key(0)))
  params, step = ckpt_lib.restore_params(workdir, abstract, step)
  return LoadedRun(config=config, model_cfg=model_cfg, params=params, step=step, data=data, protocol=protocol(config))
