r"""The CYB comparison (launch/experiment.py): five losses, same data, model, seeds and budget.

  python launch/experiment.py --config=cyb_jax/configs/experiment.py:smoke \
      --config.out_dir=/tmp/cyb_smoke

The preset follows the ':' of --config: "smoke" (a few minutes on a 2-core CPU: tiny model,
one seed, K = 1), "main" (the embedded arithmetic task, K = 1 and 3, 3 seeds), "text"
(English text: set --config.run.data.source=text:PATH), "gpu" (the main comparison sized
for one large GPU: a ~34M-parameter 8-layer model in bfloat16 on 4-digit arithmetic, meant
to take about 10 minutes on an H100/H200; not yet run on one) and "gpu_smoke" (the same
structure, tiny, for a CPU: CI runs it). A preset sets the fields below it; any field can
still be overridden after it.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from cyb_jax.configs import default


def _one_layer_model(run: ml_collections.ConfigDict, *, steps: int) -> None:
  """A 1-layer, d 64 model trained for `steps` on 16 x 64-token batches."""
  run.model.num_layers = 1
  run.model.d_model = 64
  run.model.num_heads = 4
  run.model.mlp_dim = 256
  run.data.seq_len = 64
  run.data.batch_size = 16
  run.num_train_steps = steps
  run.eval_every_steps = steps // 8
  run.checkpoint_every_steps = steps


def _gpu_model(
  run: ml_collections.ConfigDict, *, layers: int, width: int, steps: int, batch: int, seq_len: int
) -> None:
  """A bfloat16 model of ``layers`` x ``width`` (4 heads of 64 per 256 of width) on
  4-digit arithmetic, trained for ``steps`` on ``batch`` x ``seq_len``-token batches."""
  run.model.num_layers = layers
  run.model.d_model = width
  run.model.num_heads = max(1, width // 64)
  run.model.mlp_dim = 4 * width
  run.model.dtype = "bfloat16"
  run.data.synthetic.max_digits = 4
  run.data.seq_len = seq_len
  run.data.batch_size = batch
  run.num_train_steps = steps
  run.eval_every_steps = max(1, steps // 10)
  run.checkpoint_every_steps = steps
  run.log_every_steps = max(1, steps // 20)
  run.optimizer.learning_rate = 1e-3
  run.optimizer.warmup_steps = max(1, steps // 10)


def get_config(preset: str = "main") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = preset  # Label of the comparison in results.md/json (the preset unless renamed).
  c.out_dir = f"workdirs/experiment_{preset}"  # Runs go to <out_dir>/runs/<name>; results here.
  c.losses = ("ce", "pause_ce", "cyb_ap", "cyb_va", "cyb_dp")  # Losses to compare.
  c.pauses = (1, 3)  # K values for the pause losses (ce always has K = 0).
  c.pause_warmup = (0,)  # Pause warm-up lengths W for every CYB loss (0: none; e.g. (0, 400)
  #   trains each CYB run with and without a W-step warm-up, rows `{loss}_w{W}_K{k}`). The
  #   main, text and gpu presets run both: none, and the recommended half-run warm-up.
  c.seeds = (0, 1, 2)  # Seeds of the main comparison (sweeps use the first).
  c.ce_budgets = ()  # Longer ce runs: the total steps of each, every one > run.num_train_steps
  #   (e.g. (1600, 3200)), one per seed, each with its own learning-rate schedule: their final losses
  #   give the tokens ce needs to reach every model's final loss ("ce by budget" in results.md)
  #   and show whether ce's loss has flattened. () for none.
  c.from_ce = False  # Fine-tune every run from a shared ce checkpoint per seed (paper's setting).
  c.ce_init_steps = 500  # Steps of that shared ce checkpoint.
  c.analyse_pauses = True  # Per-difficulty / per-token pause analysis of each main run.
  c.summarise_only = False  # Train nothing: summarise the finished runs in out_dir (and list the rest).
  s = ml_collections.ConfigDict()
  s.gamma = ()  # cyb_ap sweep over gamma (one seed).
  s.prior_continuation = ()  # cyb_va sweep over the geometric prior's q (one seed).
  s.budget = ()  # cyb_dp sweep over the pause budget (one seed).
  c.sweep = s
  c.run = default.get_config()  # The per-run training config shared by every run.
  c.run.progress_bar = False
  c.run.write_report = False
  c.run.keep_checkpoints = 1

  if preset == "smoke":
    c.pauses = (1,)
    c.seeds = (0,)
    c.run.num_train_steps = 60
    c.run.eval_every_steps = 20
    c.run.checkpoint_every_steps = 60
    c.run.log_every_steps = 20
    c.run.model.num_layers = 1
    c.run.model.d_model = 32
    c.run.model.num_heads = 2
    c.run.model.mlp_dim = 64
    c.run.data.seq_len = 32
    c.run.data.batch_size = 8
    c.run.data.eval_batches = 2
    c.run.data.synthetic.max_digits = 2
  elif preset == "main":
    # A 1-layer model: what trains the 5 x 2 x 3 grid in about an hour on 2 CPU cores.
    # Note that a private pause step adds width, not depth: its slot reads the same layer's
    # keys/values of the real tokens as step 0 (in 1 layer: the token embeddings).
    _one_layer_model(c.run, steps=800)
    c.pause_warmup = (0, 400)
  elif preset == "text":
    c.pauses = (1,)
    c.seeds = (0,)
    c.run.data.source = placeholder(str)  # Required: --config.run.data.source=text:PATH.
    c.run.data.doc_per = "paragraph"
    c.run.data.spm_vocab_size = 512
    _one_layer_model(c.run, steps=800)
    c.pause_warmup = (0, 400)
  elif preset == "gpu":
    # 8 x 512: ~34M parameters; 15 runs per seed (CYB with and without the warm-up), ~20 s each
    # at the H200's bf16 rate.
    _gpu_model(c.run, layers=8, width=512, steps=600, batch=64, seq_len=256)
    c.pause_warmup = (0, 300)
    c.run.data.eval_batches = 16
  elif preset == "gpu_smoke":
    c.pauses = (1,)
    c.seeds = (0,)
    _gpu_model(c.run, layers=2, width=64, steps=4, batch=4, seq_len=32)
    c.run.data.eval_batches = 1
  else:
    raise ValueError(f"preset={preset!r} is unknown; allowed: 'smoke', 'main', 'text', 'gpu', 'gpu_smoke'.")
  return c
