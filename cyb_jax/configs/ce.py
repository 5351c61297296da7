"""Baseline: no pauses (K = 0), plain cross-entropy, on the default task."""

from cyb_jax.configs import default


def get_config():
  c = default.get_config()
  c.loss.name = "ce"
  c.loss.pause_warmup_steps = 0  # ce trains no pauses
  c.model.max_pauses = 0
  return c
