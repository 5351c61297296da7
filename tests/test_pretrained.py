"""Pretrained Hugging Face base models as CYB models (cyb_jax.pretrained), against transformers.

The fixtures (tests/fixtures/hf/<name>/, written by tools/make_hf_fixtures.py with torch and
transformers) hold tiny random checkpoints and transformers' float32 logits on fixed inputs.
"""

import dataclasses
import functools
import json
import math
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from cyb_jax import model as model_lib
from cyb_jax import pretrained
from cyb_jax import sharding
from cyb_jax.data import tokenizer as tokenizer_lib
from cyb_jax.model import decode
from tests.multidevice import harness

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "hf"
NAMES = ("llama3_gqa", "qwen2_bias", "smollm2_tied", "gemma3_text")
K = 2
V = 96
step_logits = jax.jit(model_lib.step_logits, static_argnums=0)


@functools.cache
def _load(name, **fields):
  return pretrained.load(FIXTURES / name, max_pauses=K, **fields)


def _reference(name):
  ref = np.load(FIXTURES / name / "reference.npz")
  return ref["input_ids"], ref["logits"]


def _moved_cyb(cfg, params, seed=0):
  """Params whose pause embeddings and DK kernel are moved far from their initial values."""
  rng = np.random.default_rng(seed)
  out = jax.tree.map(lambda a: a, params)
  moves_KxD = jnp.asarray(rng.normal(size=(K, cfg.d_model)), jnp.float32)
  out["pause_embed"] = params["pause_embed"] + moves_KxD
  out["dk_head"]["kernel"] = jnp.asarray(rng.normal(size=(cfg.d_model,)), jnp.float32)
  return out


@pytest.mark.parametrize("name", NAMES)
def test_imported_step0_vocabulary_logits_equal_transformers_logits(name):
  cfg, params = _load(name)
  input_ids, expected_BxNxV = _reference(name)
  logits = step_logits(cfg, params, jnp.asarray(input_ids))
  assert logits.shape == (*input_ids.shape, K + 1, V + 1) and logits.dtype == jnp.float32
  assert float(np.abs(np.asarray(logits[:, :, 0, :V]) - expected_BxNxV).max()) <= 1e-4


def test_bfloat16_import_is_close_to_the_float32_reference():
  cfg, params = pretrained.load(FIXTURES / "gemma3_text", max_pauses=1, dtype="bfloat16")
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  input_ids, expected_BxNxV = _reference("gemma3_text")
  logits = step_logits(cfg, params, jnp.asarray(input_ids))
  assert logits.dtype == jnp.float32
  error = np.abs(np.asarray(logits[:, :, 0, :V]) - expected_BxNxV).max()
  assert error <= 0.03 * np.abs(expected_BxNxV).max()


def test_architecture_features_of_the_fixtures_are_imported():
  """Each fixture exercises what it is meant to (so that its parity test means something)."""
  llama, qwen, smol, gemma = (_load(n)[0] for n in NAMES)
  assert (llama.rope_scaling, llama.resolved_num_kv_heads, llama.head_dim) == ("llama3", 2, 12)
  assert not llama.tie_embeddings and llama.d_model // llama.num_heads != llama.head_dim
  assert (qwen.qkv_bias, qwen.out_bias, smol.tie_embeddings) == (True, False, True)
  assert gemma.layer_types == ("sliding", "sliding", "full") and gemma.sliding_window == 4
  assert (gemma.rope_local_base, gemma.rope_base, gemma.rope_scaling) == (1e4, 1e6, "linear")
  assert gemma.qk_norm and gemma.post_norms and gemma.norm_plus_one and gemma.scale_embeddings
  assert (gemma.query_pre_attn_scalar, gemma.final_logit_softcap) == (24.0, 8.0)
  assert (FIXTURES / "llama3_gqa" / "model.safetensors.index.json").exists()


def test_added_parameters_start_as_documented_and_leave_step0_unchanged():
  cfg, params = _load("gemma3_text")
  np.testing.assert_array_equal(params["dk_head"]["kernel"], 0.0)
  assert float(params["dk_head"]["bias"]) == pytest.approx(math.log(V))  # logit(0.5) + log V
  table = np.asarray(params["token_embed"])
  rms = float(np.sqrt(np.mean(table**2)))
  offset = np.asarray(params["pause_embed"]) - table.mean(axis=0)
  assert params["pause_embed"].shape == (K, cfg.d_model)
  assert 0 < np.abs(offset).max() <= 5 * pretrained.PAUSE_NOISE * rms
  tokens = jnp.asarray(_reference("gemma3_text")[0])
  before = np.asarray(step_logits(cfg, params, tokens))
  after = np.asarray(step_logits(cfg, _moved_cyb(cfg, params), tokens))
  np.testing.assert_array_equal(after[:, :, 0, :V], before[:, :, 0, :V])
  assert np.abs(after[:, :, 1:] - before[:, :, 1:]).min(axis=-1).max() > 1e-3  # pauses moved


def test_imported_gemma_private_scan_equals_flat_reference_with_windows():
  """Packed documents longer than the window (W = 4) on sliding and global layers."""
  cfg, params = _load("gemma3_text")
  params = _moved_cyb(cfg, params)
  tokens = jnp.asarray(_reference("gemma3_text")[0])
  segment_ids = jnp.array([[1] * 5 + [2] * 7, [1] * 10 + [0] * 2])
  positions = jnp.array([list(range(5)) + list(range(7)), list(range(12))])
  kwargs = dict(segment_ids=segment_ids, positions=positions)
  scan = jax.jit(functools.partial(model_lib.step_logits, **kwargs), static_argnums=0)
  flat = jax.jit(functools.partial(model_lib.step_hidden_flat, **kwargs), static_argnums=0)
  expected = model_lib.logits_from_hidden(cfg, params, flat(cfg, params, tokens))
  np.testing.assert_allclose(scan(cfg, params, tokens), expected, rtol=1e-5, atol=1e-5)
  wide = dataclasses.replace(cfg, sliding_window=64)  # the window matters for these inputs
  assert np.abs(np.asarray(scan(wide, params, tokens) - expected)).max() > 1e-3


def test_imported_gemma_with_scanned_layers_equals_unrolled_layers():
  """Scanned layers of mixed types read their type as a traced flag."""
  cfg, params = _load("gemma3_text")
  scanned_cfg, scanned = _load("gemma3_text", scan_layers=True)
  assert scanned["decoder"]["layers"]["attention"]["q_kernel"].shape[0] == cfg.num_layers
  tokens = jnp.asarray(_reference("gemma3_text")[0])
  np.testing.assert_allclose(
    step_logits(scanned_cfg, scanned, tokens), step_logits(cfg, params, tokens), rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("layout", ["private", "visible"])
def test_imported_gemma_decoder_equals_training_forward_with_windows(layout):
  cfg, params = _load("gemma3_text")
  cfg = dataclasses.replace(cfg, pause_layout=layout)
  params = _moved_cyb(cfg, params)
  tokens = jnp.asarray(_reference("gemma3_text")[0])
  logits, pauses = decode.teacher_forced_step_logits(cfg, params, tokens)
  np.testing.assert_array_equal(pauses, K)
  np.testing.assert_allclose(logits, step_logits(cfg, params, tokens), rtol=1e-5, atol=2e-5)
  new, new_pauses = decode.generate(cfg, params, tokens[:, :3], jax.random.key(0), max_new_tokens=9, halting="max")
  sequence = jnp.concatenate([tokens[:, :3], new], axis=1)
  last_step = np.asarray(step_logits(cfg, params, sequence))[:, 2:11, K, :V]
  np.testing.assert_array_equal(new, last_step.argmax(-1))
  np.testing.assert_array_equal(new_pauses, K)


@pytest.mark.parametrize("name", ["llama3_gqa", "gemma3_text"])
def test_export_round_trip_gives_identical_logits(name, tmp_path):
  cfg, params = _load(name)
  params = _moved_cyb(cfg, params)
  pretrained.save(tmp_path, cfg, params, copy_files_from=FIXTURES / name)
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf["cyb"] == dict(max_pauses=K, pause_layout="private", shared_pause_embed=False)
  visible_cfg = dataclasses.replace(cfg, pause_layout="visible")
  pretrained.save(tmp_path, visible_cfg, params, copy_files_from=FIXTURES / name)
  assert pretrained.load(tmp_path)[0] == visible_cfg  # K and the layout from config.json
  pretrained.save(tmp_path, cfg, params, copy_files_from=FIXTURES / name)
  again_cfg, again = pretrained.load(tmp_path)
  assert again_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, again, params)
  tokens = jnp.asarray(_reference(name)[0])
  np.testing.assert_array_equal(step_logits(again_cfg, again, tokens), step_logits(cfg, params, tokens))
  assert (tmp_path / "generation_config.json").exists()


def test_exporting_the_default_architecture_gives_a_llama_folder(tmp_path):
  cfg = model_lib.ModelConfig(
    vocab_size=20, num_layers=1, d_model=16, num_heads=2, mlp_dim=32, max_pauses=1, scan_layers=True
  )
  params = model_lib.init_params(cfg, jax.random.key(0))
  pretrained.save(tmp_path, cfg, params)
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
  again_cfg, again = pretrained.load(tmp_path, scan_layers=True, dk_bias_init=cfg.dk_bias_init)
  assert again_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_sharded_load_places_every_leaf_by_its_sharding():
  cfg, params = _load("llama3_gqa")
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  shardings = sharding.logical_shardings(model_lib.param_logical_axes(cfg), mesh, sharding.DEFAULT_LOGICAL_RULES)
  loaded = pretrained.load_params(FIXTURES / "llama3_gqa", cfg, shardings=shardings)
  for leaf, want, expected in zip(jax.tree.leaves(loaded), jax.tree.leaves(shardings), jax.tree.leaves(params)):
    assert isinstance(leaf, jax.Array) and leaf.sharding == want
    np.testing.assert_array_equal(leaf, expected)


_EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from cyb_jax import model as model_lib, pretrained, sharding
    path = sys.argv[1]
    cfg = pretrained.model_config(path, max_pauses=2, scan_layers=True)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    shardings = sharding.logical_shardings(
        model_lib.param_logical_axes(cfg), mesh, sharding.DEFAULT_LOGICAL_RULES)
    sharded = pretrained.load_params(path, cfg, shardings=shardings)
    whole = pretrained.load_params(path, cfg)
    report = {}
    for (key, leaf), want, full in zip(jax.tree_util.tree_flatten_with_path(sharded)[0],
                                       jax.tree.leaves(shardings), jax.tree.leaves(whole)):
      error = max(float(np.abs(s.data - np.asarray(full)[s.index]).max(initial=0.0))
                  for s in leaf.addressable_shards)
      report[jax.tree_util.keystr(key)] = [leaf.sharding == want, error,
                                           list(leaf.addressable_shards[0].data.shape)]
    print(json.dumps(report))
""")


def test_sharded_load_on_eight_devices_gives_each_device_its_block():
  env = harness.subprocess_env(8)  # 8 CPU devices; this checkout on PYTHONPATH
  result = subprocess.run(
    [sys.executable, "-c", _EIGHT_DEVICE_SCRIPT, str(FIXTURES / "llama3_gqa")],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert len(report) == 15 and all(placed for placed, _, _ in report.values())
  # Checkpoint tensors arrive exactly; the fresh pause embedding (a mean over the sharded token
  # embedding) to float rounding.
  assert all(error == 0.0 for key, (_, error, _) in report.items() if "pause" not in key)
  assert report["['pause_embed']"][1] <= 1e-6
  # q kernel [L, D, H, E] = [2, 32, 4, 12]: D split over fsdp = 4, H over tensor = 2.
  assert report["['decoder']['layers']['attention']['q_kernel']"][2] == [2, 8, 2, 12]


HF_BASE = dict(
  vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(model_type="bert"), "model_type='bert' is not supported"),
    (dict(model_type="llama", rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling type 'yarn'"),
    (dict(model_type="llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling type 'dynamic'"),
    (dict(model_type="llama", hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(model_type="llama", mlp_bias=True), "mlp_bias=True"),
    (dict(model_type="gemma3_text", attn_logit_softcapping=50.0), "attn_logit_softcapping=50.0"),
    (dict(model_type="gemma3", text_config={}), "model_type='gemma3' is the multimodal"),
  ],
)
def test_unsupported_configs_are_refused_naming_the_value(changes, message):
  with pytest.raises(ValueError, match=message):
    pretrained.model_config_from_hf(HF_BASE | changes, max_pauses=1)


def test_hub_style_configs_map_to_the_documented_fields():
  """Configs written as the Hub's Llama 3.2 1B, Gemma 3 1B, Mistral and Qwen2.5 ones are."""
  llama = pretrained.model_config_from_hf(
    HF_BASE
    | dict(
      model_type="llama",
      rope_theta=500000.0,
      tie_word_embeddings=True,
      rope_scaling=dict(
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
        rope_type="llama3",
      ),
    ),
    max_pauses=1,
  )
  assert (llama.rope_base, llama.rope_scaling, llama.rope_scaling_factor) == (5e5, "llama3", 32.0)
  assert (llama.rope_original_max_positions, llama.tie_embeddings) == (8192, True)
  gemma = pretrained.model_config_from_hf(
    HF_BASE
    | dict(
      model_type="gemma3_text",
      num_hidden_layers=7,
      head_dim=16,
      query_pre_attn_scalar=256,
      rope_theta=1000000.0,
      rope_local_base_freq=10000.0,
      sliding_window=512,
      sliding_window_pattern=6,
      rope_scaling=None,
      final_logit_softcapping=None,
      attn_logit_softcapping=None,
    ),
    max_pauses=1,
  )
  assert gemma.layer_types == ("sliding",) * 5 + ("full", "sliding")
  assert (gemma.rope_base, gemma.rope_local_base, gemma.sliding_window) == (1e6, 1e4, 512)
  assert gemma.tie_embeddings and gemma.attention_scale == 256**-0.5
  mistral = pretrained.model_config_from_hf(HF_BASE | dict(model_type="mistral", sliding_window=16), max_pauses=1)
  assert mistral.layer_types == ("sliding", "sliding") and mistral.rope_local_base is None
  qwen = pretrained.model_config_from_hf(
    HF_BASE | dict(model_type="qwen2", sliding_window=32, use_sliding_window=False), max_pauses=1
  )
  assert (qwen.qkv_bias, qwen.out_bias, qwen.sliding_window) == (True, False, None)


def test_pretrained_tokenizer_json_matches_transformers_and_adds_eos():
  tok = tokenizer_lib.load_pretrained_tokenizer(FIXTURES / "smollm2_tied")
  reference = json.loads((FIXTURES / "smollm2_tied" / "tokenizer_reference.json").read_text())
  assert isinstance(tok, tokenizer_lib.HFTokenizer) and tok.vocab_size <= V
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, 0, 0)  # add_bos_token: false
  ids = tok.encode_documents([reference["text"]])[0]
  assert ids.dtype == np.int32 and list(ids) == reference["input_ids"] + [0]
  assert tok.decode(ids) == reference["text"] and tok.piece(0) == "<|endoftext|>"
  via_pipeline = tokenizer_lib.load_or_train(  # data.tokenizer may name a pretrained folder
    tokenizer_path=str(FIXTURES / "smollm2_tied"),
    workdir="/nonexistent",
    vocab_size=0,
    model_type="bpe",
    training_lines=list,
    process_index=0,
  )
  assert list(via_pipeline.encode_documents([reference["text"]])[0]) == list(ids)


def test_tokenizer_json_whose_post_processor_adds_bos_gets_exactly_one(tmp_path):
  words = ["<s>", "</s>", "a", "b", "\n"]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="</s>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("\n", behavior="isolated")
  tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
  loaded = tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (0, 1, 1)
  ids = loaded.encode_documents(["a\nb", "b"], add_eos=False)
  assert [list(x) for x in ids] == [[0, 2, 4, 3], [0, 3]]
  assert loaded.piece(4) == "\\n"


def test_sentencepiece_folder_loads_with_add_bos_token(tmp_path):
  lines = ["the cat sat on the mat", "a dog ran in the park"] * 10
  proto = tokenizer_lib.train_sentencepiece(lines, vocab_size=300, model_type="bpe")
  (tmp_path / "tokenizer.model").write_bytes(proto)
  with_bos = tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  assert isinstance(with_bos, tokenizer_lib.Tokenizer) and with_bos.bos_id == 2
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
  without = tokenizer_lib.load_pretrained_tokenizer(tmp_path)
  a, b = with_bos.encode_documents(["the cat"])[0], without.encode_documents(["the cat"])[0]
  assert a[0] == 2 and list(a[1:]) == list(b) and b[-1] == 3
  with pytest.raises(ValueError, match="has neither tokenizer.json nor tokenizer.model"):
    tokenizer_lib.load_pretrained_tokenizer(tmp_path / "missing")


def test_byte_range_reader_equals_safetensors_slices(tmp_path):
  """The reader used for non-local files (gs://) against safe_open, bfloat16 and scalars too."""
  import ml_dtypes
  import safetensors.numpy

  from cyb_jax.pretrained import hf_weights

  rng = np.random.default_rng(0)
  tensors = {
    "a": rng.normal(size=(6, 4, 3)).astype(ml_dtypes.bfloat16),
    "b": rng.normal(size=(5,)).astype(np.float32),
    "c": np.array([2.5], np.float32),
  }
  (tmp_path / "model.safetensors").write_bytes(safetensors.numpy.save(tensors))
  ranged = hf_weights.SafetensorsFolder(tmp_path, memory_map=False)
  mapped = hf_weights.SafetensorsFolder(tmp_path)
  assert ranged.names() == mapped.names() == {"a", "b", "c"} and ranged.shape("a") == (6, 4, 3)
  for name, index in [("a", (slice(1, 4), slice(2, 4))), ("a", ()), ("b", (slice(3, 5),)), ("c", ())]:
    got, want = ranged.read(name, index), mapped.read(name, index)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
  folder = FIXTURES / "llama3_gqa"
  ranged, mapped = (hf_weights.SafetensorsFolder(folder, memory_map=m) for m in (False, True))
  index = (slice(12, 36), slice(8, 16))
  np.testing.assert_array_equal(
    ranged.read("model.layers.1.self_attn.q_proj.weight", index),
    mapped.read("model.layers.1.self_attn.q_proj.weight", index),
  )


def test_checkpoints_that_do_not_fit_the_config_are_refused_naming_the_tensor(tmp_path):
  import safetensors.numpy

  source = FIXTURES / "smollm2_tied"
  hf = json.loads((source / "config.json").read_text())
  tensors = safetensors.numpy.load((source / "model.safetensors").read_bytes())
  (tmp_path / "config.json").write_text(json.dumps(hf | {"num_key_value_heads": 4}))
  (tmp_path / "model.safetensors").write_bytes(safetensors.numpy.save(tensors))
  with pytest.raises(
    ValueError,
    match=r"'model.layers.0.self_attn.k_proj.weight' has shape "
    r"\(16, 32\), the config needs \(32, 32\)",
  ):
    pretrained.load(tmp_path, max_pauses=1)
  (tmp_path / "config.json").write_text(json.dumps(hf))
  extra = tensors | {"model.layers.0.mlp.up_proj.bias": np.zeros(64, np.float32)}
  (tmp_path / "model.safetensors").write_bytes(safetensors.numpy.save(extra))
  with pytest.raises(
    ValueError,
    match="1 checkpoint tensors are not used by the config, e.g. "
    r"\['model.layers.0.mlp.up_proj.bias'\]",
  ):
    pretrained.load(tmp_path, max_pauses=1)
  del tensors["model.norm.weight"]
  (tmp_path / "model.safetensors").write_bytes(safetensors.numpy.save(tensors))
  with pytest.raises(ValueError, match="tensor 'model.norm.weight' .* is missing"):
    pretrained.load(tmp_path, max_pauses=1)
  with pytest.raises(ValueError, match="is a base model .* pass max_pauses"):
    pretrained.load(source)
