"""``python launch/experiment.py ...`` in a checkout is ``cyb-experiment ...``: see cyb_jax/cli/experiment.py."""

from cyb_jax.cli.experiment import run

if __name__ == "__main__":
  run()
