"""Command-line entry points (``cyb-train``, ``cyb-experiment``, ``cyb-analyze``, ``cyb-generate``,
``cyb-prepare-data``, ``cyb-export``): absl flags, then one call into the library. ``launch/*.py``
run them from a checkout.

The console scripts call the functions below (named after the commands, as the submodules are
after the modules), which import their command's module and run it. The
commands need the ``train`` extra; started without it (``pip install cyb_jax`` installs the losses
alone), a command says so in one line instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
import sys

# Top-level modules of the `train` extra's distributions (pyproject.toml) that the commands import.
TRAIN_EXTRA_MODULES = frozenset(
  {
    "absl",
    "array_record",
    "chex",
    "etils",
    "flax",
    "matplotlib",
    "ml_collections",
    "optax",
    "orbax",
    "safetensors",
    "sentencepiece",
    "tensorboardX",
    "tensorflow_datasets",
    "tokenizers",
    "tqdm",
  }
)


def _run(command: str, module: str) -> None:
  try:
    run = importlib.import_module(f"cyb_jax.cli.{module}").run
  except ModuleNotFoundError as e:
    missing = (e.name or "").split(".")[0]
    if missing not in TRAIN_EXTRA_MODULES:
      raise
    sys.exit(f"{command}: needs the training extra (no module {missing!r}): pip install 'cyb_jax[train]'")
  run()


def cyb_train() -> None:
  _run("cyb-train", "train")


def cyb_experiment() -> None:
  _run("cyb-experiment", "experiment")


def cyb_analyze() -> None:
  _run("cyb-analyze", "analyze")


def cyb_generate() -> None:
  _run("cyb-generate", "generate")


def cyb_prepare_data() -> None:
  _run("cyb-prepare-data", "prepare_data")


def cyb_export() -> None:
  _run("cyb-export", "export")
