"""cyb_jax: Catch Your Breath adaptive-computation language models in JAX.

The submodules are imported lazily (PEP 562): ``import cyb_jax`` imports nothing
else, and ``from cyb_jax import losses`` imports only what ``cyb_jax.losses`` needs
(JAX and NumPy), not Flax, orbax or TensorFlow Datasets. ``cyb_jax.model``,
``cyb_jax.train`` etc. load those when they are first used.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata

_PYPROJECT_VERSION = "0.1.0"  # keep equal to [project] version in pyproject.toml

try:
  __version__: str = _metadata.version("cyb_jax")
except _metadata.PackageNotFoundError:  # run from a checkout that is not installed
  __version__ = _PYPROJECT_VERSION

__all__ = [
  "analysis",  # pause statistics of a trained model
  "attention",  # slot-grid attention (private / visible pauses), KV caches
  "attention_blocks",  # key/value blocks and the exact one-block softmax both paths share
  "attention_kernels",  # fused GPU attention (Pallas, segment ids) with the block merge
  "attention_splash",  # Pallas splash attention (TPU) for the prefill and the private pause step
  "checkpoint",  # orbax checkpoints with the data position
  "components",  # run config -> model config, data, loss, optimiser, loaded run
  "configs",  # the shipped run configs (also usable as --config files)
  "console",  # quiet console: library logging to <workdir>/log.txt
  "data",  # synthetic task, text, TFDS, tokenizer, packing, iterators
  "decode",  # jitted adaptive decoding
  "efficiency",  # data-efficiency maths of eval curves
  "evaluation",  # the one evaluation path: parameters -> protocol figures
  "experiment",  # the loss comparison: running it
  "experiment_plan",  # the loss comparison: its runs
  "experiment_plots",  # the loss comparison: its plots
  "experiment_results",  # the loss comparison: results.md/json and plots
  "files",  # paths and whole-file writes on local disks and gs://
  "hosts",  # preemption and data positions across processes
  "init_from",  # the parameters a fine-tuning run starts from
  "layers",  # RMSNorm, SwiGLU, initialisers
  "losses",  # per-step statistics, the five losses, evaluation protocols
  "metrics_writer",  # metrics.jsonl and TensorBoard
  "mfu",  # model FLOPs, device peaks, MFU, the profiler window
  "model",  # the pause-aware transformer (public functions)
  "model_config",  # ModelConfig: the architecture fields and their checks
  "pretrained",  # Hugging Face checkpoints (Llama family, Gemma 3) in and out
  "plots",  # report plots
  "prefetch",  # batches produced and placed ahead of the train step
  "programs",  # the sharded jitted programs of a run
  "report",  # report.md and pause_stats
  "report_tables",  # report markdown tables
  "run_analysis",  # a run folder analysed (cyb-analyze)
  "samples",  # decoded samples with pauses shown
  "sharding",  # mesh and logical axis rules
  "steps",  # the train state and the pure train step
  "train",  # train_and_evaluate
  "transformer",  # the Flax modules of the transformer
  "word_analysis",  # pauses by word, word position and part-of-speech tag
  "word_report",  # words.json/md and the by-tag plot (cyb-analyze)
]


def __getattr__(name: str):
  """Imports the public submodule ``name`` on first access (PEP 562)."""
  if name in __all__:
    module = importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module
    return module
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}; its public submodules are {', '.join(__all__)}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
