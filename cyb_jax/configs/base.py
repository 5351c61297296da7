"""Every field of a training run, with its default. Other configs start from this one.

Usage: ``python launch/train.py --config=cyb_jax/configs/default.py --workdir=/tmp/run`` (or
``cyb-train``), overriding any field with ``--config.a.b=value``. Fields that are None until
set ("derive it") are typed placeholders, so ``--config.model.vocab_size=512`` works.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from cyb_jax.data import default_data_config
from cyb_jax.sharding import DEFAULT_LOGICAL_RULES
from cyb_jax.sharding import default_mesh_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = ""  # Default output folder when --workdir is not given.
  c.seed = 0  # Seeds parameter init and the training data order.
  c.num_train_steps = 1000  # Optimiser steps.
  c.eval_every_steps = 200  # Evaluate on the held-out set every this many steps (and at the end).
  c.checkpoint_every_steps = 500  # Save a checkpoint every this many steps (and at the end).
  c.keep_checkpoints = 3  # Keep the newest N checkpoints.
  c.log_every_steps = 50  # Write a train row to metrics.jsonl every this many steps.
  c.init_from = ""  # Workdir (or checkpoint folder) of another run to fine-tune from: its parameters
  #                   are copied, and parameters it lacks (pause embeddings, DK head) start fresh.
  c.progress_bar = True  # Show a tqdm progress bar with tokens per second and ETA.
  c.write_report = True  # Write report.md and plots at the end.
  c.profile_steps = ()  # (start, stop): write a jax.profiler trace of train steps start..stop
  #   (both included, numbered as in metrics.jsonl) into <workdir>/profile; () = off.
  c.peak_flops_per_device = placeholder(float)  # FLOP/s of one device that train/mfu divides
  #   by; None: the bf16 table of TPUs/GPUs in cyb_jax/training/mfu.py, or on CPU a float32 matmul
  #   peak measured at start-up (~1 s); 0: no MFU.

  m = ml_collections.ConfigDict()
  m.vocab_size = placeholder(int)  # V; None takes the data's vocabulary size (a larger V is allowed).
  m.vocab_pad_multiple = 1  # Embedding/output head rows padded to a multiple of this x mesh.tensor
  #   (never read: an exact pad, so any vocabulary splits over the mesh); 128 suits TPUs.
  m.num_layers = 2  # Transformer blocks.
  m.d_model = 64  # Residual width D.
  m.num_heads = 4  # Query heads.
  m.num_kv_heads = placeholder(int)  # Key/value heads for grouped-query attention (None = num_heads).
  m.head_dim = placeholder(int)  # Per-head width (None = d_model // num_heads).
  m.mlp_dim = 256  # SwiGLU hidden width.
  m.max_pauses = 3  # K: most pauses per token (0 = an ordinary language model).
  m.pause_layout = "private"  # "private" (pauses seen only by their own position) or "visible".
  m.shared_pause_embed = False  # One pause embedding for every pause index instead of K.
  m.tie_embeddings = False  # Use the token embedding as the output head.
  m.dtype = "float32"  # Compute dtype: "float32" or "bfloat16".
  m.param_dtype = "float32"  # Parameter dtype.
  m.remat_policy = "none"  # Block rematerialisation: none | full | dots_saveable | ...
  m.attention_impl = "xla"  # "xla" (dense scores, the reference), "dot_product"
  #   (a fused flash kernel on GPU in bf16: tokamax's Mosaic GPU attention; no attention soft cap)
  #   or "splash" (Pallas splash attention on TPU; interpret mode elsewhere; seq_len % 128 == 0).
  m.scan_layers = False  # Stack layers and nn.scan over them: 12-layer train steps compile 1.5-2.6x
  #   faster, but ran 15-35% slower on CPU (benchmarks/compile_time.py); changes the parameter tree.
  m.init_pause_prob = ml_collections.FieldReference(0.5, field_type=float)  # Start with
  #   P(<don't know>) ~ p at every step (DK bias logit(p) + log V), so pauses are reachable
  #   early; None: DK bias 0 (P ~ 1 / (V + 1)). The one way to set the DK head's start.
  m.rope_base = 10000.0  # Rotary frequency base.
  c.model = m

  loss = ml_collections.ConfigDict()
  loss.name = "cyb_ap"  # One of: ce, pause_ce, cyb_ap, cyb_va, cyb_dp.
  loss.gamma = 0.9  # cyb_ap: value of a correct answer decays as gamma^k, 0 < gamma <= 1.
  loss.omega = 0.0  # cyb_ap: hazard that the world demands an answer at each step, 0 <= omega < 1.
  loss.prior = "geometric"  # cyb_va: "geometric" | "uniform" | "explicit" prior over stopping steps.
  loss.prior_continuation = 0.5  # cyb_va geometric prior: rho_k proportional to q^k.
  loss.prior_values = ()  # cyb_va explicit prior: K+1 positive numbers summing to 1.
  loss.beta = 1.0  # cyb_va: weight of the KL term.
  loss.kl = "token"  # cyb_va: "token" (KL per position) or "batch" (KL of the batch mean).
  loss.budget = 1.0  # cyb_dp: allowed mean pauses per token.
  loss.multiplier_init = 0.0  # cyb_dp: initial Lagrange multiplier mu.
  loss.multiplier_rate = 0.01  # cyb_dp: dual-ascent step eta (0 = a fixed ponder cost mu).
  loss.pause_warmup_steps = 0  # W: steps 0..W-1 train every pause slot (pause_warmup_loss), the
  #   configured loss from step W on (docs/design.md section 11); 0 = no warm-up.
  loss.pause_warmup_loss = "all_steps"  # Warm-up loss: "all_steps" (mean_k -log c_k) or "pause_ce".
  loss.vocab_chunk = placeholder(int)  # An int: compute the loss from hidden states in vocabulary
  #   chunks of this width, never materialising [B, N, K+1, V+1] logits (large vocabularies).
  c.loss = loss

  o = ml_collections.ConfigDict()
  o.learning_rate = 3e-3  # Peak learning rate of AdamW.
  o.warmup_steps = 100  # Linear warmup from 0 to the peak.
  o.schedule_steps = placeholder(int)  # Steps the warm-up + cosine schedule spans (None =
  #   num_train_steps). Set it to the first run's value to extend a run with more steps while
  #   the steps already taken keep their learning rates.
  o.end_learning_rate_fraction = 0.1  # Cosine decay ends at this fraction of the peak.
  o.b1 = 0.9  # AdamW beta1.
  o.b2 = 0.98  # AdamW beta2.
  o.eps = 1e-9  # AdamW epsilon.
  o.weight_decay = 0.01  # Decoupled weight decay on matrices (not on norms, biases, embeddings).
  o.grad_clip_norm = 1.0  # Global-norm gradient clipping (0 = off).
  o.grad_accum_steps = 1  # Split each batch into this many micro-batches (same maths, less memory).
  c.optimizer = o

  ev = ml_collections.ConfigDict()
  ev.tau = 0.5  # Threshold protocol: answer at the first step with P(<don't know>) <= tau.
  c.eval = ev

  c.data = default_data_config()  # Data source, packing and tokenizer (cyb_jax/data/config.py).
  c.mesh = default_mesh_config()  # Device mesh sizes (cyb_jax/sharding.py).
  c.logical_axis_rules = DEFAULT_LOGICAL_RULES  # Logical axis name -> mesh axes.
  return c
