"""A real run on a TFDS language-modelling dataset (lm1b here; c4/en works the same way).

Prepare the ArrayRecord files once (e.g. `tfds build lm1b --file_format=array_record`
or download_and_prepare to a GCS data_dir); training reads them with
`tfds.data_source`, without TensorFlow. Sized for a TPU pod slice: set the mesh
(e.g. `--config.mesh.fsdp=-1 --config.mesh.data=1`) for your slice.
"""

from cyb_jax.configs import default


def get_config():
  c = default.get_config()
  c.data.source = "tfds:lm1b"
  c.data.tfds_train_split = "train"
  c.data.tfds_eval_split = "test"
  c.data.tfds_text_key = "text"
  c.data.seq_len = 512
  c.data.batch_size = 256
  c.data.eval_batches = 32
  c.data.spm_vocab_size = 32000
  c.data.spm_max_sentences = 1_000_000
  c.loss.vocab_chunk = 8192
  c.model.num_layers = 12
  c.model.d_model = 768
  c.model.num_heads = 12
  c.model.mlp_dim = 3072
  c.model.max_pauses = 3
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "dots_with_no_batch_dims_saveable"
  c.model.scan_layers = True
  c.num_train_steps = 100_000
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 100
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 2000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.progress_bar = False
  return c
