r"""Runs the CYB comparison and writes results.md, results.json and plots.

  python launch/experiment.py --config=configs/experiment.py:smoke --config.out_dir=/tmp/smoke
  python launch/experiment.py --config=configs/experiment.py:main --config.seeds=0,1,2

The text after ':' picks the preset (smoke, main, text); `--config.preset=smoke` does
the same. Finished runs are reused and interrupted ones resume, so the command can be
run again after a stop.
"""

import sys

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/experiment.py:smoke", "Experiment config (file:preset).", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from cyb_jax import experiment  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  results = experiment.run_experiment(config)
  if results.get("stopped") == "preempted":
    print(f"Stopped by SIGTERM during run {results['run']}; run the same command to resume.")
  else:
    print(f"Wrote {config.out_dir}/results.md, results.json and plots/.")


def _preset_to_config_arg(argv: list[str]) -> list[str]:
  """Turns `--config.preset=X` into `--config=FILE:X`, so the preset's fields are set first
  and every other `--config.*` override still applies after them."""
  presets = [a.split("=", 1)[1] for a in argv if a.startswith("--config.preset=")]
  if not presets:
    return argv
  out, has_config = [], False
  for a in argv:
    if a.startswith("--config.preset="):
      continue
    if a.startswith("--config="):
      a = a.split(":", 1)[0] + ":" + presets[-1]
      has_config = True
    out.append(a)
  if not has_config:
    out.insert(1, f"--config=configs/experiment.py:{presets[-1]}")
  return out


if __name__ == "__main__":
  app.run(main, argv=_preset_to_config_arg(sys.argv))
