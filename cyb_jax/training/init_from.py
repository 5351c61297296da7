"""The parameters a fine-tuning run starts from (``config.init_from``): a run folder or ``hf:PATH``."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cyb_jax import model as model_lib
from cyb_jax.training import checkpoint as ckpt_lib
from cyb_jax.training import components


def merge_init_params(fresh: Any, source: Any) -> tuple[Any, list[str], list[str]]:
  """Copies every parameter of ``source`` into ``fresh`` where the path exists.

  Parameters only in ``fresh`` (a K = 0 model has no ``pause_embed``) stay freshly
  initialised; a parameter in both with different shapes is an error, and so is a parameter in
  one only, but for the pause embeddings and the DK head (a ``ce`` base fine-tuned with pauses,
  or a pause model fine-tuned as ``ce``): it would be lost, or start random under trained
  weights, silently (e.g. layers stacked by ``scan_layers`` on one side only, which name their
  parameters differently; an untied head from a tied base).

  Returns:
    ``(params, copied paths, fresh paths)``.
  """
  flat_source = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  copied, kept = [], []

  def pick(path, fresh_leaf):
    key = jax.tree_util.keystr(path)
    if key not in flat_source:
      kept.append(key)
      return fresh_leaf
    src = np.asarray(flat_source[key])
    if src.shape != fresh_leaf.shape:
      raise ckpt_lib.IncompatibleCheckpointError(
        f"init_from: parameter {key} has shape {src.shape} in the checkpoint but {fresh_leaf.shape} in this model."
      )
    copied.append(key)
    return jax.device_put(src.astype(fresh_leaf.dtype), fresh_leaf.sharding)

  params = jax.tree_util.tree_map_with_path(pick, fresh)
  lost = sorted(k for k in set(flat_source) - set(copied) if not k.startswith(_DROPPABLE))
  if lost:
    raise ckpt_lib.IncompatibleCheckpointError(
      f"init_from: {len(lost)} parameters of the checkpoint have no place in this model, e.g. {lost[:3]}; "
      f"this model's are named like {kept[:3]} (another layer layout? check model.scan_layers)."
    )
  unfilled = sorted(k for k in kept if not k.startswith(_DROPPABLE))
  if unfilled:
    raise ckpt_lib.IncompatibleCheckpointError(
      f"init_from: {len(unfilled)} parameters of this model are not in the checkpoint, e.g. {unfilled[:3]}: "
      "they would start random under trained weights (another architecture? compare model.* with the base's)."
    )
  return params, copied, kept


# Parameters in one side only that are expected: the pause embeddings and the DK head (K = 0 on
# one side).
_DROPPABLE = ("['pause_embed']", "['dk_head']")


def initial_params(
  config: ml_collections.ConfigDict, model_cfg: model_lib.ModelConfig, fresh: Any, shardings: Any
) -> Any:
  """The parameters a fine-tuning run starts from (``config.init_from``), placed by ``shardings``.

  * ``hf:PATH``: the base model's tensors, each host reading only the slices its devices
    hold (:func:`cyb_jax.pretrained.load_params`), with fresh pause embeddings and DK head;
  * a cyb_jax run folder: its newest checkpoint's parameters (not its optimiser state) where
    this model has them; parameters it lacks (a K = 0 run has no ``pause_embed``) keep the
    fresh values of ``fresh``.

  Raises:
    IncompatibleCheckpointError: another vocabulary, or a parameter of another shape.
  """
  path = components.pretrained_path(config)
  if path is not None:
    from cyb_jax import pretrained  # pylint: disable=g-import-not-at-top

    params = pretrained.load_params(path, model_cfg, shardings=shardings, rng=jax.random.key(config.seed))
    logging.info("init_from %s: loaded the base model's parameters.", config.init_from)
    return params
  source_params, source_meta = ckpt_lib.restore_params_for_init(config.init_from)
  source_vocab = source_meta.get("model", {}).get("vocab_size")
  if source_vocab != model_cfg.vocab_size:
    raise ckpt_lib.IncompatibleCheckpointError(
      f"init_from={config.init_from!r} has vocab_size {source_vocab}, this model {model_cfg.vocab_size}."
    )
  params, copied, kept = merge_init_params(fresh, source_params)
  logging.info("init_from %s: copied %d parameters; fresh: %s", config.init_from, len(copied), kept)
  return params
