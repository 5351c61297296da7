"""``python launch/prepare_data.py ...`` in a checkout is ``cyb-prepare-data ...``: see cyb_jax/cli/prepare_data.py."""

from cyb_jax.cli.prepare_data import run

if __name__ == "__main__":
  run()
