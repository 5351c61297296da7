"""CYB-DP: at most `budget` mean pauses per token, enforced by dual ascent on a multiplier."""

from configs import default


def get_config():
  c = default.get_config()
  c.loss.name = "cyb_dp"
  c.loss.budget = 1.0
  c.loss.multiplier_init = 0.0
  c.loss.multiplier_rate = 0.01
  return c
