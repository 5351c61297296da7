"""Your own text files: `--config.data.source=text:PATH_OR_GLOB` (required; paragraphs are documents).

SentencePiece is trained on the training documents into <workdir>/tokenizer.model
(or give `--config.data.tokenizer=PATH.model`).
"""

from ml_collections.config_dict import placeholder

from cyb_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.source = placeholder(str)  # Required: "text:PATH_OR_GLOB" (local or gs://).
  c.data.doc_per = "paragraph"
  c.data.seq_len = 128
  c.data.batch_size = 16
  c.data.spm_vocab_size = 1024
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.num_train_steps = 2000
  return c
