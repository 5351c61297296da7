"""``python launch/generate.py ...`` in a checkout is ``cyb-generate ...``: see cyb_jax/cli/generate.py."""

from cyb_jax.cli.generate import run

if __name__ == "__main__":
  run()
