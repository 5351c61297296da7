"""Fine-tuning an imported base model with CYB: init_from=hf:PATH end to end, then export."""

import os
import pathlib

import jax
import numpy as np
import pytest

from cyb_jax import model as model_lib
from cyb_jax import pretrained
from cyb_jax.configs import finetune_hf
from cyb_jax.training import components
from cyb_jax.training import train

pytestmark = pytest.mark.slow

BASE = pathlib.Path(__file__).parent / "fixtures" / "hf" / "smollm2_tied"


def _config(tmp_path, **overrides):
  corpus = tmp_path / "corpus.txt"
  rng = np.random.default_rng(0)
  words = ["the", "cat", "cats", "sat", "on", "mats", "dog", "ran", "won't", "didn't"]
  corpus.write_text("\n\n".join(" ".join(rng.choice(words, size=20)) for _ in range(60)))
  c = finetune_hf.get_config()
  c.update_from_flattened_dict(
    {
      "init_from": f"hf:{BASE}",
      "data.source": f"text:{corpus}",
      "data.seq_len": 16,
      "data.batch_size": 4,
      "data.eval_batches": 1,
      "num_train_steps": 3,
      "loss.pause_warmup_steps": 1,  # step 0 warms the fresh pause slots up, then cyb_va
      "eval_every_steps": 3,
      "checkpoint_every_steps": 3,
      "log_every_steps": 1,
      "progress_bar": False,
      "write_report": False,
      "model.dtype": "float32",
      "model.remat_policy": "none",
      "loss.vocab_chunk": 64,
      "optimizer.warmup_steps": 1,
      **overrides,
    }
  )
  return c


def test_a_base_model_fine_tunes_with_cyb_va_and_exports_a_folder_that_reimports(tmp_path):
  workdir = str(tmp_path / "run")
  result = train.train_and_evaluate(_config(tmp_path), workdir)
  assert result["stopped"] == "completed" and np.isfinite(result["nll_mix"])
  run = components.load_run(workdir)
  base_cfg, base_params = pretrained.load(BASE, max_pauses=1)
  assert run.model_cfg.vocab_size == base_cfg.vocab_size and run.model_cfg.tie_embeddings
  # Fine-tuning moved the base tensors (the run did train them).
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), run.params["decoder"], base_params["decoder"]
  )
  assert max(jax.tree.leaves(moved)) > 0
  out = str(tmp_path / "hf_out")  # what cyb-export writes
  pretrained.save(out, run.model_cfg, run.params, copy_files_from=components.pretrained_path(run.config))
  assert os.path.exists(os.path.join(out, "tokenizer.json"))  # the base model's tokenizer
  cfg2, params2 = pretrained.load(out)  # K and the layout come from the exported config
  assert (cfg2.max_pauses, cfg2.pause_layout) == (1, "private")
  tokens = np.asarray([[1, 5, 9, 2, 7, 3]], np.int32)
  np.testing.assert_array_equal(
    model_lib.step_logits(cfg2, params2, tokens), model_lib.step_logits(run.model_cfg, run.params, tokens)
  )


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"model.d_model": 64}, r"sets model.d_model=64: leave them None"),
    ({"data.source": "synthetic"}, r"give it text"),
    ({"init_from": "hf:/nonexistent/base"}, r"init_from='hf:/nonexistent/base' is not a folder"),
  ],
)
def test_bad_fine_tuning_configs_fail_fast_and_write_nothing(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(_config(tmp_path, **overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_the_finetune_config_requires_its_base_model_and_text():
  c = finetune_hf.get_config()
  with pytest.raises(ValueError, match=r"data.source is required"):
    components.validate(c)
  c.data.source = "text:/x/*.txt"
  with pytest.raises(
    ValueError,
    match=r"model.d_model, model.mlp_dim, model.num_heads, "
    r"model.num_layers, model.rope_base, "
    r"model.tie_embeddings unset",
  ):
    components.model_config(c, 100)
