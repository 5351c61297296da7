"""Baseline: always take all K pauses and read out the last step (Goyal et al. 2023)."""

from cyb_jax.configs import default


def get_config():
  c = default.get_config()
  c.loss.name = "pause_ce"
  c.loss.pause_warmup_steps = 0  # the baseline as published: its own loss from the start
  c.model.max_pauses = 3
  return c
