"""cyb_jax: Catch Your Breath adaptive-computation language models in JAX."""
