"""cyb_jax: Catch Your Breath adaptive-computation language models in JAX.

The submodules are imported lazily (PEP 562): ``import cyb_jax`` imports nothing
else, and ``from cyb_jax import losses`` imports only what ``cyb_jax.losses`` needs
(JAX and NumPy), not Flax, orbax or TensorFlow Datasets. ``cyb_jax.model``,
``cyb_jax.training.train`` etc. load those when they are first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from collections.abc import Sequence
from importlib import metadata as _metadata
from typing import Any

_PYPROJECT_VERSION = "0.1.0"  # keep equal to [project] version in pyproject.toml

try:
  __version__: str = _metadata.version("cyb_jax")
except _metadata.PackageNotFoundError:  # run from a checkout that is not installed
  __version__ = _PYPROJECT_VERSION

__all__ = [
  # Foundations: import nothing of the project above them.
  "losses",  # per-step statistics, the five losses, evaluation protocols
  "data",  # synthetic task, text, TFDS, tokenizer, packing, iterators
  "files",  # paths and whole-file writes on local disks and gs://
  "console",  # quiet console: library logging to <workdir>/log.txt
  "sharding",  # mesh and logical axis rules
  "metrics_writer",  # metrics.jsonl and TensorBoard
  "configs",  # the shipped run configs (also usable as --config files)
  # The layers of the architecture, each importing only those below it.
  "model",  # the pause-aware transformer, its config, attention kernels, decoding
  "pretrained",  # Hugging Face checkpoints (Llama family, Gemma 3) in and out
  "analysis",  # evaluation, pause statistics, word view, reports, tables and plots
  "training",  # components, the sharded programs, the train step and loop, checkpoints, MFU
  "experiment",  # the loss comparison: plan, runs, results, data efficiency
]  # and above them all cyb_jax.cli, the command-line entry points (not a library API)


def lazy_submodules(namespace: dict[str, Any], names: Sequence[str]) -> Callable[[str], Any]:
  """A PEP 562 module ``__getattr__`` for the package whose globals are ``namespace``: each of
  its submodules ``names`` is imported on first access as an attribute, and kept."""

  def __getattr__(name: str) -> Any:
    if name in names:
      module = importlib.import_module(f"{namespace['__name__']}.{name}")
      namespace[name] = module
      return module
    raise AttributeError(
      f"module {namespace['__name__']!r} has no attribute {name!r}; its public submodules are {', '.join(names)}"
    )

  return __getattr__


__getattr__ = lazy_submodules(globals(), __all__)


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
