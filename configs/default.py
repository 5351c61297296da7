"""The embedded default task: CYB-AP with K = 3 on synthetic arithmetic, a few minutes on a CPU.

The data are generated on the fly (no download): additions and multiplications with
answers written least significant digit first, each target token labelled with how
much computation it needs (cyb_jax/data/synthetic.py).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.num_train_steps = 1500
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 500
  c.log_every_steps = 50
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.max_pauses = 3
  c.model.init_pause_prob = 0.5
  c.loss.name = "cyb_ap"
  c.loss.gamma = 0.9
  c.data.source = "synthetic"
  c.data.seq_len = 64
  c.data.batch_size = 32
  c.data.eval_batches = 8
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 100
  return c
