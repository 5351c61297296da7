"""CYB-AP (anytime prediction): a correct answer after k pauses is worth gamma^k."""

from cyb_jax.configs import default


def get_config():
  c = default.get_config()
  c.loss.name = "cyb_ap"
  c.loss.gamma = 0.9
  c.loss.omega = 0.0
  return c
