"""Tests of the text-file source: documents, the held-out split, SentencePiece training and reuse."""

import glob
import json
import os

import numpy as np
import pytest

from cyb_jax.data import make_data
from cyb_jax.data import packing
from cyb_jax.data import text
from cyb_jax.data import tokenizer as tokenizer_lib
from tests import tiny

_WORDS = (
  "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
  "jovial zebras and big sphinx of quartz judge my vow"
).split()


def write_corpus(folder, num_files=2, lines_per_file=120, seed=0):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for f in range(num_files):
    lines = []
    for i in range(lines_per_file):
      lines.append(" ".join(rng.choice(_WORDS, rng.integers(3, 25))).capitalize() + ".")
      if i % 5 == 4:
        lines.append("")  # paragraph break
    (folder / f"part{f}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(folder / "*.txt")


def text_config(pattern, **overrides):
  return tiny.data_config(
    **{
      "source": f"text:{pattern}",
      "seq_len": 32,
      "batch_size": 4,
      "eval_batches": 2,
      "eval_fraction": 0.1,
      "spm_vocab_size": 320,
      "spm_max_sentences": 500,
      **overrides,
    }
  )


def test_documents_per_line_paragraph_and_file():
  body = "a b\n\n  \nc d\ne f\n\n\ng\n\n"
  assert text.split_into_documents(body, "line") == ["a b", "c d", "e f", "g"]
  assert text.split_into_documents(body, "paragraph") == ["a b", "c d\ne f", "g"]
  assert text.split_into_documents(body, "file") == ["a b\n\n  \nc d\ne f\n\n\ng"]
  assert text.split_into_documents(" \n\n", "file") == []


def test_train_eval_split_is_fixed_disjoint_and_complete():
  train, held = text.split_train_eval(200, 0.1)
  train2, held2 = text.split_train_eval(200, 0.1)
  np.testing.assert_array_equal(held, held2)
  assert len(held) == 20 and len(np.intersect1d(train, held)) == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(200))
  with pytest.raises(ValueError, match="of 1 document\\(s\\) leaves none to train on"):
    text.split_train_eval(1, 0.1)


def test_tokenizer_is_trained_saved_and_reused(tmp_path):
  pattern = write_corpus(tmp_path / "corpus")
  workdir = tmp_path / "run"
  first = make_data(text_config(pattern), seed=0, workdir=str(workdir))
  model_file = workdir / tokenizer_lib.TOKENIZER_FILENAME
  assert first.info.tokenizer_path == str(model_file)
  assert sorted(os.listdir(workdir)) == [tokenizer_lib.TOKENIZER_FILENAME]  # nothing else is written
  saved = model_file.read_bytes()
  stamp = model_file.stat().st_mtime_ns

  resumed = make_data(text_config(pattern), seed=0, workdir=str(workdir))
  assert model_file.stat().st_mtime_ns == stamp and model_file.read_bytes() == saved  # reused, not retrained
  tiny.assert_equal_batches(next(first.train), next(resumed.train))

  info = first.info
  assert 280 < info.vocab_size <= 320 and info.pad_id == 0 and (info.bos_id, info.eos_id) == (2, 3)
  doc = "The quick fox.\n  Seven wizards judge\n\nmy vow."
  ids = info.encode(doc)
  assert ids[0] == info.bos_id and info.eos_id not in ids
  assert info.decode(ids) == doc  # lossless, line breaks and spaces included
  assert info.piece(4) == "\\n" and all(isinstance(info.piece(i), str) for i in range(info.vocab_size))


def test_given_tokenizer_is_used_and_nothing_is_written(tmp_path):
  pattern = write_corpus(tmp_path / "corpus")
  trained = make_data(text_config(pattern), seed=0, workdir=str(tmp_path / "first"))
  workdir = tmp_path / "second"
  given = make_data(text_config(pattern, tokenizer=trained.info.tokenizer_path), seed=0, workdir=str(workdir))
  assert given.info.tokenizer_path == trained.info.tokenizer_path
  assert not workdir.exists()
  tiny.assert_equal_batches(next(given.train), next(trained.train))


def test_workdir_tokenizer_with_other_settings_is_refused(tmp_path):
  pattern = write_corpus(tmp_path / "corpus")
  make_data(text_config(pattern), seed=0, workdir=str(tmp_path / "run"))
  with pytest.raises(ValueError, match="model_type='unigram', but the config asks for .*'bpe'"):
    make_data(text_config(pattern, spm_model_type="bpe"), seed=0, workdir=str(tmp_path / "run"))


def test_text_batches_hold_every_training_document(tmp_path):
  pattern = write_corpus(tmp_path / "corpus", num_files=1, lines_per_file=40)
  cfg = text_config(pattern, doc_per="paragraph", seq_len=16)
  bundle = make_data(cfg, seed=3, workdir=str(tmp_path / "run"))
  docs = text.read_documents(text.find_text_files(pattern), "paragraph")
  train_idx, _ = text.split_train_eval(len(docs), cfg.eval_fraction)
  # The targets of one document are its pieces and EOS: as many as encode() gives (BOS + pieces).
  epoch_targets = sum(len(bundle.info.encode(docs[i])) for i in train_idx)
  targets = []
  while len(targets) < epoch_targets:
    batch = next(bundle.train)
    targets.extend(batch["targets"][batch["weights"] > 0].tolist())  # row-major = stream order
  epoch = np.array(targets[:epoch_targets])
  assert epoch[-1] == bundle.info.eos_id
  ends = np.flatnonzero(epoch == bundle.info.eos_id)
  texts = [bundle.info.decode(piece) for piece in np.split(epoch, ends[:-1] + 1)]
  # One epoch of the stream is every training paragraph once, whole (in the seed's order).
  assert sorted(texts) == sorted(docs[i] for i in train_idx)
  assert texts != [docs[i] for i in train_idx]


def test_text_eval_set_is_fixed_and_process_slices_tile(tmp_path):
  pattern = write_corpus(tmp_path / "corpus")
  cfg = text_config(pattern)
  workdir = str(tmp_path / "run")
  whole = make_data(cfg, seed=0, workdir=workdir)
  other_seed = make_data(cfg, seed=1, workdir=workdir)
  parts = [make_data(cfg, seed=0, workdir=workdir, process_index=p, process_count=2) for p in range(2)]
  assert len(whole.eval_batches) == 2
  for j in range(2):
    tiny.assert_equal_batches(whole.eval_batches[j], other_seed.eval_batches[j])
    tiny.assert_equal_batches(packing.concat_batches([p.eval_batches[j] for p in parts]), whole.eval_batches[j])
  assert whole.eval_batches[0]["weights"].sum() > 0
  for _ in range(3):
    tiny.assert_equal_batches(packing.concat_batches([next(p.train) for p in parts]), next(whole.train))
  assert not np.array_equal(next(whole.train)["inputs"], next(other_seed.train)["inputs"])


def test_text_resume(tmp_path):
  pattern = write_corpus(tmp_path / "corpus")
  cfg = text_config(pattern)
  run = make_data(cfg, seed=4, workdir=str(tmp_path / "run")).train
  for _ in range(5):
    next(run)
  state = json.loads(json.dumps(run.get_state()))
  expected = [next(run) for _ in range(3)]
  resumed = make_data(cfg, seed=4, workdir=str(tmp_path / "run")).train
  resumed.set_state(state)
  for want in expected:
    tiny.assert_equal_batches(next(resumed), want)


def test_bad_text_configs_fail_fast_and_write_nothing(tmp_path):
  workdir = tmp_path / "run"
  missing = str(tmp_path / "nothing" / "*.txt")
  with pytest.raises(ValueError, match="matches no files"):
    make_data(text_config(missing), seed=0, workdir=str(workdir))
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "a.txt").write_text("\n  \n\n")
  (empty / "b.txt").write_text("")
  with pytest.raises(ValueError, match="hold no documents \\(all blank\\): .*a.txt.*b.txt"):
    make_data(text_config(str(empty / "*.txt")), seed=0, workdir=str(workdir))
  pattern = write_corpus(tmp_path / "corpus")
  with pytest.raises(ValueError, match="data.tokenizer='/no/such.model' is not a file"):
    make_data(text_config(pattern, tokenizer="/no/such.model"), seed=0, workdir=str(workdir))
  with pytest.raises(ValueError, match="data.spm_vocab_size=100 is out of range"):
    make_data(text_config(pattern, spm_vocab_size=100), seed=0, workdir=str(workdir))
  with pytest.raises(ValueError, match="eval_fraction=0.0 holds out no documents"):
    make_data(text_config(pattern, eval_fraction=0.0), seed=0, workdir=str(workdir))
  one_file = write_corpus(tmp_path / "single", num_files=1)
  with pytest.raises(ValueError, match="leaves none to train on"):
    make_data(text_config(one_file, doc_per="file"), seed=0, workdir=str(workdir))
  assert not workdir.exists()


# Files and folders whose names start with "." are hidden from wildcards, as in `glob`.
GLOB_TREE = (
  "a.txt",
  "b.md",
  ".hidden.txt",
  "sub/c.txt",
  "sub/deep/d.txt",
  "sub/deep/e.md",
  ".cache/f.txt",
  "sub/.git/g.txt",
  "other/h.txt",
  "other/[x].txt",
)
GLOB_PATTERNS = (
  "*.txt",
  "*",
  "sub/*.txt",
  "**/*.txt",
  "**",
  "sub/**/*.txt",
  "*/deep/*",
  "**/deep/*.md",
  "[ab].*",
  "?.txt",
  ".*",
  "sub/deep/d.txt",
  "other/[[]x].txt",
  "no/*.txt",
)


def write_glob_tree(root) -> None:
  """GLOB_TREE under `root`, each file holding its own relative path."""
  for rel in GLOB_TREE:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rel + "\n")


def test_find_text_files_follows_glob(tmp_path):
  write_glob_tree(tmp_path)
  for pattern in GLOB_PATTERNS:
    full = f"{tmp_path}/{pattern}"
    want = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
    if not want:
      with pytest.raises(ValueError, match="matches no files"):
        text.find_text_files(full)
    else:
      assert text.find_text_files(full) == want, pattern
  # A folder is every file under it, hidden ones excepted; a plain file path is that file.
  assert text.find_text_files(str(tmp_path)) == sorted(
    str(tmp_path / rel) for rel in GLOB_TREE if not any(part.startswith(".") for part in rel.split("/"))
  )
  assert text.find_text_files(str(tmp_path / ".hidden.txt")) == [str(tmp_path / ".hidden.txt")]


def test_find_text_files_relative_and_home_paths(tmp_path, monkeypatch):
  write_glob_tree(tmp_path)
  monkeypatch.chdir(tmp_path)
  assert text.find_text_files("*.txt") == ["a.txt"]
  assert text.find_text_files("sub/**/*.txt") == ["sub/c.txt", "sub/deep/d.txt"]
  assert text.find_text_files("**/*.md") == ["b.md", "sub/deep/e.md"]
  monkeypatch.setenv("HOME", str(tmp_path))
  assert text.find_text_files("~/sub/*.txt") == [str(tmp_path / "sub" / "c.txt")]
