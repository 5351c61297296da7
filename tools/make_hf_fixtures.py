"""Writes tests/fixtures/hf/<name>/: tiny random Hugging Face checkpoints and their logits.

Run once, in a separate environment with torch and transformers (never needed by the tests):

  python3 -m venv /tmp/hfref
  /tmp/hfref/bin/pip install torch==2.13.0 transformers safetensors tokenizers
  /tmp/hfref/bin/python tools/make_hf_fixtures.py

Each folder holds what `save_pretrained` writes (config.json, model.safetensors, or two shards
with model.safetensors.index.json) and `reference.npz`: `input_ids` `[2, 12]` int32 and the
reference's float32 `logits` `[2, 12, V]` (eager attention). Every parameter is redrawn at
random (norm weights and biases included), so that a mapping error shows in the logits.

  llama3_gqa    Llama, grouped-query attention (4 query / 2 key-value heads), explicit
                head_dim, llama3 rotary scaling, untied head; saved in 2 shards with an index.
  qwen2_bias    Qwen2: biases on q/k/v (none on o), untied head.
  smollm2_tied  SmolLM2-like Llama with tied embeddings, plus a tokenizer.json (a tiny BPE
                trained here), tokenizer_config.json, and tokenizer_reference.json: a text
                and the ids transformers' AutoTokenizer gives it.
  gemma3_text   Gemma3ForCausalLM: sliding-window (W = 4) and global layers with their own
                rotary bases (linear scaling on the global ones), q/k norms, 4 norms per block,
                query_pre_attn_scalar != head_dim, final logit soft cap (transformers' Gemma 3
                does not apply attn_logit_softcapping, so the importer refuses it).
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import tokenizers
import torch
import transformers

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"
VOCAB = 96
SIZES = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  intermediate_size=64,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
  torch_dtype="float32",
)


def _randomize(model: torch.nn.Module, *, norm_center: float, seed: int) -> None:
  """Redraws every parameter: norm weights around `norm_center`, the others around 0."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      center, std = (norm_center, 0.1) if "norm" in name else (0.0, 0.15)
      if "embed" in name:
        std = 0.5
      p.copy_(center + std * torch.randn(p.shape, generator=gen))


def _tiny_tokenizer(folder: pathlib.Path) -> None:
  """A byte-level BPE of at most VOCAB - 8 entries with <|endoftext|> as BOS/EOS (SmolLM2's
  special tokens; no BOS is added, as SmolLM2's tokenizer_config says)."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
    vocab_size=VOCAB - 8, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False
  )  # the alphabet of the text only, so that every id is < VOCAB
  text = ["the cat sat on the mat.", "a dog ran in the park.", "the end of the story."] * 20
  tok.train_from_iterator(text, trainer)
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(
    json.dumps(
      {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": None,
        "add_bos_token": False,
        "tokenizer_class": "GPT2Tokenizer",
      },
      indent=2,
    )
  )


def _write(name: str, model: transformers.PreTrainedModel, *, shards: bool = False) -> None:
  folder = OUT / name
  shutil.rmtree(folder, ignore_errors=True)
  folder.mkdir(parents=True)
  model.eval()
  kwargs = dict(max_shard_size="60KB") if shards else {}
  model.save_pretrained(folder, **kwargs)
  rng = np.random.default_rng(0)
  input_ids = rng.integers(0, VOCAB, size=(2, 12)).astype(np.int32)
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(input_ids.astype(np.int64))).logits
  np.savez(folder / "reference.npz", input_ids=input_ids, logits=logits.float().numpy())
  files = sorted(p.name for p in folder.iterdir())
  print(name, files, sum(p.stat().st_size for p in folder.iterdir()), "bytes")


def main() -> None:
  torch.manual_seed(0)
  eager = dict(attn_implementation="eager")

  llama = transformers.LlamaConfig(
    **SIZES,
    num_hidden_layers=2,
    head_dim=12,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    rope_parameters=dict(
      rope_type="llama3",
      rope_theta=500000.0,
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=8,
    ),
  )
  model = transformers.LlamaForCausalLM._from_config(llama, **eager)
  _randomize(model, norm_center=1.0, seed=1)
  _write("llama3_gqa", model, shards=True)

  qwen = transformers.Qwen2Config(
    **SIZES,
    num_hidden_layers=2,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
  )
  model = transformers.Qwen2ForCausalLM._from_config(qwen, **eager)
  _randomize(model, norm_center=1.0, seed=2)
  _write("qwen2_bias", model)

  smol = transformers.LlamaConfig(
    **SIZES,
    num_hidden_layers=2,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=0,
    rope_parameters=dict(rope_type="default", rope_theta=100000.0),
  )
  model = transformers.LlamaForCausalLM._from_config(smol, **eager)
  _randomize(model, norm_center=1.0, seed=3)
  _write("smollm2_tied", model)
  _tiny_tokenizer(OUT / "smollm2_tied")
  text = "the cat sat on the mat. the dog ran"
  ids = transformers.AutoTokenizer.from_pretrained(OUT / "smollm2_tied")(text).input_ids
  (OUT / "smollm2_tied" / "tokenizer_reference.json").write_text(json.dumps({"text": text, "input_ids": ids}))

  gemma = transformers.Gemma3TextConfig(
    **SIZES,
    num_hidden_layers=3,
    head_dim=16,
    query_pre_attn_scalar=24,
    sliding_window=4,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    rope_parameters={
      "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
      "full_attention": dict(rope_type="linear", rope_theta=1000000.0, factor=2.0),
    },
    final_logit_softcapping=8.0,
    tie_word_embeddings=True,
  )
  model = transformers.Gemma3ForCausalLM._from_config(gemma, **eager)
  _randomize(model, norm_center=0.0, seed=4)
  _write("gemma3_text", model)


if __name__ == "__main__":
  main()
