r"""Trains a pause-aware language model (``cyb-train``; ``python launch/train.py`` in a checkout).

  cyb-train --workdir=/tmp/cyb_default            # the embedded default task
  cyb-train --config=cyb_jax/configs/cyb_va.py --workdir=/tmp/va \
      --config.model.max_pauses=1 --config.num_train_steps=500

Running again with the same workdir resumes from its newest checkpoint. Compiled programs
are cached in ``--compilation_cache`` (default ``~/.cache/cyb_jax/xla``), so a resumed or
repeated run skips most of its compile time.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cyb_jax.configs import config_path

_CONFIG = config_flags.DEFINE_config_file("config", config_path("default"), "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: config.workdir).")
_MULTIHOST = flags.DEFINE_bool(
  "multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-host GPU)."
)
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  os.path.join("~", ".cache", "cyb_jax", "xla"),
  "Persistent XLA compilation cache folder (local or gs://); '' turns it off. Unless given "
  "explicitly, a set JAX_COMPILATION_CACHE_DIR takes precedence.",
)
_VERBOSE = flags.DEFINE_bool(
  "verbose", False, "Show library INFO logging on the console (it always goes to <workdir>/log.txt)."
)


def setup_compilation_cache(path: str, *, explicit: bool) -> str | None:
  """Points JAX's persistent compilation cache at ``path`` ('' = off); returns the folder used.

  ``explicit`` False (the flag's default): an environment JAX_COMPILATION_CACHE_DIR, which
  JAX reads itself, is kept.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if not explicit and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not path:
    if explicit:
      jax.config.update("jax_compilation_cache_dir", None)
    return None
  if "://" not in path:
    path = os.path.expanduser(path)
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top

  if _MULTIHOST.value:
    jax.distributed.initialize()
  cache = setup_compilation_cache(_COMPILATION_CACHE.value, explicit=flags.FLAGS["compilation_cache"].present)
  if cache and jax.process_count() > 1 and jax.devices()[0].platform == "cpu":
    # jax 0.12.1: a multi-process CPU program loaded from the persistent cache deadlocks in its
    # first collective (tests/test_sharding.py).
    jax.config.update("jax_compilation_cache_dir", None)
    logging.warning("The compilation cache is off: several CPU processes cannot share cached programs.")
    cache = None
  from cyb_jax import console  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import train  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  workdir = _WORKDIR.value or config.workdir
  if not workdir:
    raise app.UsageError("Give --workdir (or set config.workdir).")
  # Before the first backend use (its "Unable to initialize backend" lines go to the file too);
  # then again with this process's index, which needs the backend.
  console.setup_logging(workdir, verbose=_VERBOSE.value)
  if jax.process_index():
    console.setup_logging(workdir, verbose=_VERBOSE.value, process_index=jax.process_index())
  logging.info(
    "JAX process %d of %d, %d devices; compilation cache %s.",
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
    cache or "off",
  )
  result = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    summary = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    print(
      "Final:", ", ".join(f"{k}={v:.4g}" if not isinstance(v, str) else f"{k}={v}" for k, v in sorted(summary.items()))
    )
    report = " and report.md" if config.write_report else ""
    print(f"Wrote {workdir}: metrics.jsonl{report}, TensorBoard events in tensorboard/, checkpoints in checkpoints/.")


def run():
  """The ``cyb-train`` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
