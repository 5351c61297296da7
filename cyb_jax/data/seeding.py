"""Keyed random number generators: one independent numpy stream per purpose and index.

Every random choice in the data layer draws from `keyed_rng(stream, *keys)`, where
`stream` names the purpose (a module constant below) and `keys` are non-negative
integers such as (seed, batch_index, row). The generator is a pure function of its key,
so any batch, row or epoch order can be regenerated directly, on any process, in any
order, without replaying earlier draws. Distinct streams never share a key because the
stream tag is part of the SeedSequence entropy.
"""

from __future__ import annotations

import numpy as np

# Stream tags (arbitrary distinct constants; changing one changes the data).
SYNTHETIC_TRAIN = 1
SYNTHETIC_EVAL = 2
TEXT_EPOCH_ORDER = 3
TEXT_EVAL_SPLIT = 4
TFDS_EPOCH_ORDER = 5
# The fixed key of seed-independent streams (eval sets, the text train/eval split).
FIXED_KEY = 0


def keyed_rng(stream: int, *keys: int) -> np.random.Generator:
  """Returns a numpy Generator determined by (stream, *keys).

  Args:
    stream: one of the stream tags of this module.
    *keys: non-negative integers (seed, batch index, row, epoch, ...).

  Raises:
    ValueError: if a key is negative or not an integer.
  """
  for k in keys:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
      raise ValueError(f"RNG keys must be non-negative integers, got {k!r} in {keys!r}.")
  return np.random.default_rng(np.random.SeedSequence([stream, *[int(k) for k in keys]]))
