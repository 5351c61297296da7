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

The paper's setting, fine-tuning a pretrained LM with every loss ("finetune"; "finetune_gpu"
for one large GPU and a 135M-360M base; "finetune_smoke", tiny, on the committed random
fixture, for CI; docs/design.md "The fine-tuning protocol"):

  python launch/experiment.py --config=cyb_jax/configs/experiment.py:finetune_gpu \
      --config.run.init_from=hf:/models/SmolLM2-135M --config.run.data.source='text:/data/*.txt' \
      --config.out_dir=workdirs/ft_smollm2

Every run starts from `run.init_from` (required): "hf:PATH", a Hugging Face-format folder
(local or gs://; Llama family, Gemma 3) whose config.json gives the architecture and whose
tokenizer encodes the text, or a cyb_jax run folder, whose config.json gives the architecture
(the model.* fields left None) and whose tokenizer.model the text (unless data.tokenizer is
set). Nothing is downloaded. ce (K = 0) is the no-pause baseline, pause_ce the second; each
CYB loss runs with and without a half-run pause warm-up; ce also at 2x and 4x the budget;
results.md opens with the base model's own evaluation at step 0, "base (no fine-tuning)".
From a small cyb_jax base on a CPU, add --config.run.model.dtype=float32
--config.run.loss.vocab_chunk=1024 (one chunk for a vocabulary of up to 1024 pieces; None
cannot be given on the command line) --config.run.optimizer.learning_rate=1e-3 (the
preset's 3e-5 suits a large pretrained LM). The word and part-of-speech view of each run, for text
with a tagged copy (every word as word/tag; --config.tagged_text=PATH puts it in the
commands results.md lists):

  cyb-analyze --workdir=<out_dir>/runs/<run> --tagged_text=PATH --eval_batches=64
  python tools/words_summary.py --analysis="<row>:<out_dir>/runs/<run>/analysis/step_<steps>_eval64" \
      ... --out=<out_dir>/words
"""

import pathlib

import ml_collections
from ml_collections.config_dict import placeholder

from cyb_jax.configs import default
from cyb_jax.configs import finetune_hf


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


# The tiny random Llama (SmolLM2-shaped, tied) fixture with its tokenizer, for finetune_smoke.
_TINY_BASE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hf" / "smollm2_tied"


def _finetune(c: ml_collections.ConfigDict, *, steps: int, batch: int, seq_len: int, eval_batches: int) -> None:
  """Every run fine-tunes from ``run.init_from`` (required): ce (K = 0), pause_ce and the CYB
  losses with and without a half-run pause warm-up (K = 1), ce also at 2x and 4x the budget,
  3 seeds, ``steps`` of ``batch`` x ``seq_len`` tokens."""
  c.pauses = (1,)
  c.pause_warmup = (0, steps // 2)
  c.ce_budgets = (2 * steps, 4 * steps)
  r = c.run
  r.init_from = placeholder(str)  # Required: "hf:PATH" (Hugging Face folder, local or gs://) or a run folder.
  r.data.source = placeholder(str)  # Required: "text:PATH_OR_GLOB" (or "tfds:NAME").
  r.data.doc_per = "paragraph"  # Text: paragraphs are documents.
  r.data.seq_len = seq_len
  r.data.batch_size = batch
  r.data.eval_batches = eval_batches  # The same held-out set for every run and the base.
  for field in finetune_hf.ARCHITECTURE_FIELDS:
    r.model[field] = None  # The base's (hf: its config.json; a run folder: its config.json).
  r.model.dtype = "bfloat16"  # Compute dtype; parameters stay float32 (model.param_dtype).
  r.model.remat_policy = "dots_with_no_batch_dims_saveable"  # Activation memory of a real model.
  r.loss.vocab_chunk = 8192  # Real vocabularies: never materialise [B, N, K+1, V+1] logits.
  r.optimizer.learning_rate = 3e-5  # Fine-tuning: small steps from the base.
  r.optimizer.warmup_steps = max(1, steps // 20)
  r.optimizer.weight_decay = 0.0  # No pull of the base's weights towards 0.
  r.num_train_steps = steps
  r.eval_every_steps = max(1, steps // 8)  # Eval curves for the data-efficiency tables.
  r.checkpoint_every_steps = steps
  r.log_every_steps = max(1, steps // 50)


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
  c.tagged_text = ""  # Text data: its tagged copy (every word as word/tag, e.g. brown_tagged.txt), named
  #   in results.md's commands for the word and part-of-speech view (cyb-analyze), which
  #   links the views once written; nothing is run with it. "": a placeholder in the commands.
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
  elif preset == "finetune":
    # The paper's setting on your base model and text (sizes for any accelerator).
    _finetune(c, steps=1000, batch=32, seq_len=512, eval_batches=16)
  elif preset == "finetune_gpu":
    # One large GPU (H100/H200), a 135M-360M base such as SmolLM2 in bfloat16; the grid of one
    # seed in ~15-20 minutes for 135M. Estimate, per seed: 8 grid runs (ce at K = 0; pause_ce
    # and the 3 CYB losses x 2 warm-ups at K = 1, each ~2x a K = 0 run: two slots per token)
    # plus ce at 2x and 4x: 1 + 7 x 2 + 2 + 4 = 21 K = 0 run-equivalents of 500 x 16 x 512 =
    # 4.1M tokens = 86M tokens. A 135M model costs ~6 x 135M = 0.81 GFLOP/token (+ ~0.1 for
    # attention at N = 512); at ~40% of the H200's 989 TFLOP/s bf16 peak (~400 TFLOP/s),
    # ~430k tokens/s: ~200 s of steps; at 20% MFU, ~400 s. Add ~10 start-ups (compile of a
    # 30-layer step, base load, evals; ~30-60 s each, not measured for this size): ~8-15 min
    # in all. The H200's measured ~170k tokens/s (../shared/measured/h200/default_job.log) is
    # a tiny model's, bound by per-step overhead, not FLOPs. A 360M base costs ~2.7x the
    # steps: halve run.num_train_steps (and the budgets) to stay near 20 minutes. Not yet run.
    _finetune(c, steps=500, batch=16, seq_len=512, eval_batches=16)
    c.seeds = (0,)
  elif preset == "finetune_smoke":
    # The same grid, tiny, on the committed random SmolLM2-shaped fixture: CI runs it (~1 min).
    _finetune(c, steps=4, batch=4, seq_len=16, eval_batches=1)
    c.seeds = (0,)
    c.run.init_from = f"hf:{_TINY_BASE}"  # The fixture (vocabulary 96, with its tokenizer.json).
    c.run.model.dtype = "float32"  # CPU: float32 steps are faster than emulated bfloat16.
    c.run.model.remat_policy = "none"  # Nothing to save at this size.
    c.run.loss.vocab_chunk = None  # 97 logits: full logits.
    c.run.optimizer.warmup_steps = 1
    c.run.log_every_steps = 2
    c.analyse_pauses = True
  else:
    raise ValueError(
      f"preset={preset!r} is unknown; allowed: 'smoke', 'main', 'text', 'gpu', 'gpu_smoke', "
      "'finetune', 'finetune_gpu', 'finetune_smoke'."
    )
  return c
