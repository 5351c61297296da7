"""The base model a fine-tuning comparison starts from (``run.init_from``), and its own evaluation.

Every run of a fine-tuning comparison (the ``finetune*`` presets) starts from the same base
(docs/design.md, "The fine-tuning protocol"): a Hugging Face-format folder (``hf:PATH``) or a
cyb_jax run folder.

* :func:`with_base` completes the run template from a run-folder base: its tokenizer (unless
  ``data.tokenizer`` is set) and its architecture (the ``model.*`` fields left None). An
  ``hf:`` base needs nothing: the trainer takes both from the folder.
* :func:`evaluate_base` evaluates the base parameters once, before any fine-tuning, exactly as
  the grid's ``ce`` run (``K = 0``) would be evaluated at step 0: the same eval set, protocol,
  programs (:func:`cyb_jax.training.programs.make_programs`'s eval step) and starting
  parameters (:func:`cyb_jax.training.init_from.initial_params`). The result is cached in
  ``<out_dir>/base/``, beside the runs.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from cyb_jax import files
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.data import config as data_config_lib
from cyb_jax.data import tokenizer as tokenizer_lib
from cyb_jax.experiment import plan as plan_lib
from cyb_jax.training import checkpoint as ckpt_lib
from cyb_jax.training import components
from cyb_jax.training import init_from as init_from_lib
from cyb_jax.training import programs as programs_lib
from cyb_jax.training import train

BASE_DIR = "base"  # <out_dir>/base: the base model's evaluation (config.json, eval.json)
EVAL_FILE = "eval.json"


def _base_tokenizer(base: str, base_config: ml_collections.ConfigDict) -> str:
  """The tokenizer a run folder was trained with: its data.tokenizer, its own hf: base's
  folder, else the SentencePiece model it trained into its workdir."""
  if base_config.data.get("tokenizer"):
    return base_config.data.tokenizer
  hf = components.pretrained_path(base_config)
  if hf is not None:
    return hf
  path = files.resolve(base) / tokenizer_lib.TOKENIZER_FILENAME
  if not path.exists():
    raise ValueError(f"run.init_from={base!r} trained on text but has no {tokenizer_lib.TOKENIZER_FILENAME}.")
  return os.fspath(path)


def with_base(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with its run template completed from a run-folder ``run.init_from``.

  For a cyb_jax run folder (not ``hf:``): every ``run.model`` field that is None here and set
  in the base run's config.json takes the base's value (its architecture; the finetune
  presets leave them None), and on text or TFDS data an unset ``run.data.tokenizer`` becomes
  the base's tokenizer, so that token ids mean what the base learnt. Otherwise ``config``
  itself is returned.

  Raises:
    ValueError: the folder is not a run folder, or a text run folder without its tokenizer.
  """
  base = config.run.init_from
  if not base or components.pretrained_path(config.run) is not None:
    return config
  folder = files.resolve(base)
  if folder.name == ckpt_lib.CHECKPOINT_DIR:  # init_from may name a run's checkpoints folder
    folder = folder.parent
  try:
    base_config = components.upgrade_legacy_config(ckpt_lib.load_config(os.fspath(folder)))
  except FileNotFoundError as e:
    raise ValueError(f"run.init_from={base!r}: {e}") from None
  config = copy.deepcopy(config)
  config.unlock()
  run = config.run
  for key, value in base_config.model.items():
    if key in run.model and run.model[key] is None and value is not None and key != "init_pause_prob":
      run.model[key] = value
  source = data_config_lib.parse_source(run.data.source) if run.data.source else None
  if source is not None and source.kind != "synthetic" and not run.data.tokenizer:
    run.data.tokenizer = _base_tokenizer(os.fspath(folder), base_config)
  return config


def _eval_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run config the base is evaluated with: the grid's ``ce`` run at seed 0.

  Seed 0 whatever the grid's seeds: neither the eval set nor a ``K = 0`` model's starting
  parameters depend on it, so grids of other seeds in one out_dir share the evaluation.
  """
  spec = plan_lib.RunSpec("ce_s0", "ce", 0, 0)
  return plan_lib.run_config(config, spec)


def evaluate_base(config: ml_collections.ConfigDict, out_dir: str) -> dict[str, Any] | None:
  """The base model's eval figures at step 0 (None without ``run.init_from``), cached.

  The parameters are those the grid's ``ce`` run (``K = 0``) starts from, evaluated with its
  eval set and protocol by the trainer's own eval program: the base language model's loss on
  the fine-tuning data's held-out set. The eval set does not depend on the seed, nor (at
  ``K = 0``) do the starting parameters. A cached evaluation is reused when it was made with
  the same run config (else ValueError, as for a run).

  Returns:
    :func:`cyb_jax.analysis.evaluation.figures` plus ``init_from``, or None.
  """
  if not config.run.init_from:
    return None
  c = _eval_config(config)
  workdir = os.path.join(out_dir, BASE_DIR)
  cached = files.resolve(workdir) / EVAL_FILE
  if (files.resolve(workdir) / ckpt_lib.CONFIG_FILE).exists():
    plan_lib.check_same_run(components.upgrade_legacy_config(ckpt_lib.load_config(workdir)), c, workdir)
    if cached.exists():
      return files.read_json(cached)
  components.validate(c)
  data = components.make_run_data(c, workdir)
  if not data.eval_batches:
    return None
  model_cfg = components.model_config(c, data.info.vocab_size)
  mesh = sharding.make_mesh(c.mesh)
  rules = sharding.rules_from_config(c.logical_axis_rules)
  programs = programs_lib.make_programs(c, model_cfg, mesh, rules)
  with sharding.mesh_context(mesh, rules):
    init = jax.jit(functools.partial(model_lib.init_params, model_cfg), out_shardings=programs.shardings.params)
    params = init_from_lib.initial_params(c, model_cfg, init(jax.random.key(c.seed)), programs.shardings.params)
    batches = [sharding.global_batch({k: b[k] for k in train.BATCH_KEYS}, mesh) for b in data.eval_batches]
    figures = dict(programs.evaluate(params, batches), init_from=c.init_from)
  if jax.process_index() == 0:
    files.resolve(workdir).mkdir(parents=True, exist_ok=True)
    ckpt_lib.save_config(workdir, c)
    files.write_json(os.fspath(cached), figures, indent=2, default=float)
  logging.info("Base %s at step 0: eval nll_mix %.4f.", c.init_from, figures["nll_mix"])
  return figures


def read_base_eval(out_dir: str) -> dict[str, Any] | None:
  """The cached :func:`evaluate_base` of ``out_dir`` (None if there is none)."""
  path = files.resolve(os.path.join(out_dir, BASE_DIR)) / EVAL_FILE
  return files.read_json(path) if path.exists() else None
