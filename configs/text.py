"""Your own text files: `--config.data.source=text:PATH_OR_GLOB` (one document per line by default).

SentencePiece is trained on the training documents into <workdir>/tokenizer.model
(or give `--config.data.tokenizer=PATH.model`).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = "text:../shared/data/tinyshakespeare.txt"
  c.data.doc_per = "paragraph"
  c.data.seq_len = 128
  c.data.batch_size = 16
  c.data.spm_vocab_size = 1024
  c.model.d_model = 128
  c.model.mlp_dim = 512
  c.num_train_steps = 2000
  return c
