"""CYB in your own JAX model: a plain-JAX model that may think one more step per token, trained with
CYB-DP from `cyb_jax.losses` (which needs only JAX and NumPy) and optax.

The model reads token x_n and makes K + 1 attempts at the next token: attempt k applies one more
residual MLP step to the same position's state and emits V + 1 logits, the vocabulary and
<don't know> LAST. Anything that produces `[..., K+1, V+1]` logits this way (e.g. a MaxText
decoder run K + 1 times on the pause inputs) plugs into the losses the same way.

  python examples/cyb_in_your_model.py --steps=300
"""

import argparse

import jax
import jax.numpy as jnp
import optax

from cyb_jax import losses

V, D, K = 16, 64, 2  # vocabulary, width, pauses


def init(key):
  k = jax.random.split(key, 4)
  return {
    "embed": jax.random.normal(k[0], (V, D)) * 0.1,
    "step": jax.random.normal(k[1], (D, D)) / jnp.sqrt(D),  # one "pause" of compute
    "out": jax.random.normal(k[2], (D, V)) / jnp.sqrt(D),
    "dk": jnp.zeros((D,)),  # the <don't know> head
  }


def step_logits(params, tokens_BxN):
  """`[B, N, K+1, V+1]`: attempt k reads the state after k extra steps."""
  h_BxNxD = params["embed"][tokens_BxN]
  attempts = []
  for _ in range(K + 1):
    attempts.append(jnp.concatenate([h_BxNxD @ params["out"], (h_BxNxD @ params["dk"])[..., None]], axis=-1))
    h_BxNxD = h_BxNxD + jnp.tanh(h_BxNxD @ params["step"])
  return jnp.stack(attempts, axis=-2)


def batch(key, b=32, n=8):
  """A task where some targets need more compute: y = (3 x^2 + 1) mod V for odd x, x for even x."""
  x_BxN = jax.random.randint(key, (b, n), 0, V)
  return x_BxN, jnp.where(x_BxN % 2 == 1, (3 * x_BxN**2 + 1) % V, x_BxN)


def main(steps: int) -> float:
  loss = losses.make_loss("cyb_dp", budget=0.5, multiplier_rate=0.05)  # hashable: a static argument
  params, mu = init(jax.random.key(0)), loss.init_state()
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, mu, key):
    tokens, targets = batch(key)

    def value(p):
      stats = losses.step_log_probs(step_logits(p, tokens), targets, vocab_size=V)
      value, metrics, new_mu = loss(stats, jnp.ones(targets.shape), mu)
      return value, (metrics, new_mu)

    (value, (metrics, mu)), grads = jax.value_and_grad(value, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, mu, metrics

  for i in range(steps):
    params, opt_state, mu, metrics = train_step(params, opt_state, mu, jax.random.key(i + 1))
  print(f"nll_mix {float(metrics['nll_mix']):.3f}, pauses/token {float(metrics['expected_pauses']):.2f}, mu {mu:.3f}")
  return float(metrics["nll_mix"])


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=300)
  main(parser.parse_args().steps)
