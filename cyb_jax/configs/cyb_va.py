"""CYB-VA (variational): a truncated geometric prior over stopping steps, KL per token."""

from cyb_jax.configs import default


def get_config():
  c = default.get_config()
  c.loss.name = "cyb_va"
  c.loss.prior = "geometric"
  c.loss.prior_continuation = 0.5
  c.loss.beta = 1.0
  c.loss.kl = "token"
  return c
