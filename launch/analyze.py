"""``python launch/analyze.py ...`` in a checkout is ``cyb-analyze ...``: see cyb_jax/cli/analyze.py."""

from cyb_jax.cli.analyze import run

if __name__ == "__main__":
  run()
