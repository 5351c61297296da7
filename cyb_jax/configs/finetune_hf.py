r"""Fine-tune a pretrained language model (Llama family, Gemma 3) with a CYB loss on your text.

  cyb-train --config=cyb_jax/configs/finetune_hf.py --workdir=/tmp/ft \
      --config.init_from=hf:/path/to/SmolLM2-135M --config.data.source='text:/path/*.txt'

`init_from=hf:PATH` (a Hugging Face-format folder, local or gs://, with config.json,
*.safetensors and the tokenizer) gives the architecture, the parameters (each host reads only
its own slices) and, unless data.tokenizer is set, the tokenizer; the pause embeddings and
the <don't know> head start fresh (docs/design.md section 9). The model.* architecture fields
are None here: the base model brings them. Then `cyb-generate --workdir=/tmp/ft` shows the
pauses, and `cyb-export --workdir=/tmp/ft --out=/tmp/ft_hf` writes a Hugging Face folder.
"""

from ml_collections.config_dict import placeholder

from cyb_jax.configs import default

# model.* fields that the base model brings (left None in a fine-tuning config).
ARCHITECTURE_FIELDS = (
  "vocab_size",
  "num_layers",
  "d_model",
  "num_heads",
  "mlp_dim",
  "num_kv_heads",
  "head_dim",
  "tie_embeddings",
  "rope_base",
)


def get_config():
  c = default.get_config()
  c.init_from = placeholder(str)  # Required: "hf:PATH" of the base model.
  c.data.source = placeholder(str)  # Required: "text:PATH_OR_GLOB" or "tfds:NAME".
  c.data.doc_per = "paragraph"
  c.data.seq_len = 256
  c.data.batch_size = 8
  for field in ARCHITECTURE_FIELDS:
    c.model[field] = None  # The base model's.
  c.model.max_pauses = 1
  c.model.dtype = "bfloat16"  # Compute dtype; parameters stay float32 (model.param_dtype).
  c.model.remat_policy = "dots_with_no_batch_dims_saveable"
  c.loss.name = "cyb_va"
  c.loss.vocab_chunk = 8192  # Real vocabularies: never materialise [B, N, K+1, V+1] logits.
  c.optimizer.learning_rate = 3e-5
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.0
  c.num_train_steps = 1000
  c.loss.pause_warmup_steps = 0  # From a trained model the warm-up did not help (docs/RESULTS.md section 7).
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 500
  c.log_every_steps = 10
  return c
