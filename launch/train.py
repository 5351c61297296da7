"""``python launch/train.py ...`` in a checkout is ``cyb-train ...``: see cyb_jax/cli/train.py."""

from cyb_jax.cli.train import run

if __name__ == "__main__":
  run()
