r"""Runs the CYB comparison and writes results.md, results.json and plots (``cyb-experiment``).

  cyb-experiment --config=cyb_jax/configs/experiment.py:smoke --config.out_dir=/tmp/smoke
  cyb-experiment --config=cyb_jax/configs/experiment.py:main --config.seeds=0,1,2

The text after ':' picks the preset (smoke, main, text). Finished runs are reused and
interrupted ones resume, so the command can be run again after a stop.
"""

from absl import app
from ml_collections import config_flags

from cyb_jax.configs import config_path

_CONFIG = config_flags.DEFINE_config_file(
  "config", config_path("experiment") + ":smoke", "Experiment config (file:preset).", lock_config=True
)


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


def run():
  """The ``cyb-experiment`` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
