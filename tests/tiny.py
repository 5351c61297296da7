"""Small configs and checks shared by the tests."""

from typing import Any

import ml_collections
import numpy as np

from cyb_jax.configs import default as default_config
from cyb_jax.data import default_data_config


def tiny_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The default loss on the synthetic task with a 1-layer, d_model 32, K = 2 model.

  6 steps of 4 x 16 tokens, evaluated and checkpointed every 3 steps. ``overrides``
  are dotted paths, e.g. ``tiny_config(**{"model.d_model": 48})``.
  """
  c = default_config.get_config()
  c.update_from_flattened_dict(
    {
      "num_train_steps": 6,
      "loss.pause_warmup_steps": 0,  # tests of the warm-up set their own
      "eval_every_steps": 3,
      "checkpoint_every_steps": 3,
      "log_every_steps": 1,
      "keep_checkpoints": 10,
      "progress_bar": False,
      "write_report": False,
      "model.num_layers": 1,
      "model.d_model": 32,
      "model.num_heads": 2,
      "model.mlp_dim": 64,
      "model.max_pauses": 2,
      "data.seq_len": 16,
      "data.batch_size": 4,
      "data.eval_batches": 2,
      "data.synthetic.max_digits": 2,
      "optimizer.warmup_steps": 2,
    }
  )
  c.update_from_flattened_dict(overrides)
  return c


def data_config(**fields: Any) -> ml_collections.ConfigDict:
  """``default_data_config()`` with ``fields`` set (it is locked: a typo raises)."""
  cfg = default_data_config()
  for name, value in fields.items():
    setattr(cfg, name, value)
  return cfg


def assert_equal_batches(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
  """Two batches have the same fields, each exactly equal."""
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
