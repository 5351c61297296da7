"""The embedded default task: CYB-DP with K = 3 and a pause warm-up on synthetic arithmetic.

A few minutes on a CPU. The data are generated on the fly (no download): additions and
multiplications with answers written least significant digit first, each target token
labelled with how much computation it needs (cyb_jax/data/synthetic.py).

The recommended CYB setting (docs/RESULTS.md, "Recommended default"): CYB-DP with a budget
of one pause per token on average, after a warm-up that trains every pause slot as a
predictor for the first half of the run (`loss.pause_warmup_steps`, design section 11).
Switch with --config.loss.name=cyb_ap etc.; ce trains no pauses, so give it
--config.loss.pause_warmup_steps=0 too (or use configs/ce.py).
"""

from cyb_jax.configs import base


def get_config():
  c = base.get_config()
  c.num_train_steps = 800
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 400
  c.log_every_steps = 25
  c.model.num_layers = 1
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.mlp_dim = 256
  c.model.max_pauses = 3
  c.model.init_pause_prob = 0.5
  c.loss.name = "cyb_dp"
  c.loss.budget = 1.0
  c.loss.multiplier_rate = 0.01
  c.loss.pause_warmup_steps = 400  # The first half trains every pause slot (docs/RESULTS.md:
  #   pauses by difficulty and the best text losses come with it); 0 to switch to ce.
  c.data.source = "synthetic"
  c.data.seq_len = 64
  c.data.batch_size = 16
  c.data.eval_batches = 8
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 100
  return c
