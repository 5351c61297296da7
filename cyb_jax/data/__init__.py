"""The data layer: synthetic arithmetic, text files and TFDS, packed into resumable batches.

Entry points: `default_data_config()` (every field, commented) and
`make_data(config, seed=, workdir=, process_index=, process_count=) -> DataBundle`.
"""

from cyb_jax.data.config import default_data_config
from cyb_jax.data.config import validate_data_config
from cyb_jax.data.iterators import TrainIterator
from cyb_jax.data.pipeline import DataBundle
from cyb_jax.data.pipeline import DataInfo
from cyb_jax.data.pipeline import EvalText
from cyb_jax.data.pipeline import make_data

__all__ = [
  "DataBundle",
  "DataInfo",
  "EvalText",
  "TrainIterator",
  "default_data_config",
  "make_data",
  "validate_data_config",
]
