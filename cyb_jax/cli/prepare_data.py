r"""Prepares a TFDS dataset as ArrayRecord files, the form training reads (runs never download).

``cyb-prepare-data`` once installed; ``python -m cyb_jax.cli.prepare_data`` wherever cyb_jax
imports (the form the "not prepared" error names, `tfds_source.PREPARE_COMMAND`):

  python -m cyb_jax.cli.prepare_data --dataset=lm1b --data_dir=gs://my-bucket/tfds
  python -m cyb_jax.cli.prepare_data --dataset=wiki40b/en:1.3.0 --data_dir=/data/tfds

then train with `--config.data.source=tfds:lm1b --config.data.tfds_data_dir=gs://my-bucket/tfds`.

`--dataset` is NAME[/CONFIG][:VERSION], as in `data.source="tfds:..."`. The dataset is built
with `tfds.builder(NAME, data_dir=...).download_and_prepare(file_format="array_record")`,
which needs no TensorFlow for builders whose own generation code does not use it. Some
do: lm1b's (TFDS 4.9.10) globs its downloaded files with `tf.io.gfile`, so preparing lm1b
needs `pip install tensorflow` on the machine that runs this command (never on the pods,
which read the ArrayRecord files without it); or build it elsewhere with
`tfds build NAME --file_format=array_record --data_dir=DIR` and upload it as below.

- A local `--data_dir` is built in place.
- A gs:// (any URI) `--data_dir` is built in a local staging folder (`--staging_dir`, by
  default a temporary folder removed afterwards) and then uploaded: the record files first,
  `features.json` and `dataset_info.json` last. TFDS counts a dataset as prepared only when
  those two exist, so an interrupted upload is never read as a dataset; running the command
  again replaces it. A `--staging_dir` that already holds the prepared ArrayRecord dataset
  is uploaded as it is (this is how to publish a dataset built elsewhere).
- A dataset already prepared in `--data_dir` is left alone.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import app
from absl import flags
from absl import logging
from etils import epath

from cyb_jax.data import config as config_lib

# Required, checked in main (not by absl: a module-level required flag would break any other
# absl program imported into the same process, such as the test suite's).
_DATASET = flags.DEFINE_string("dataset", None, "TFDS dataset NAME[/CONFIG][:VERSION], e.g. lm1b (required).")
_DATA_DIR = flags.DEFINE_string(
  "data_dir",
  "",
  'Where to prepare it, local or gs:// ("" = the TFDS default, ~/tensorflow_datasets or $TFDS_DATA_DIR).',
)
_STAGING_DIR = flags.DEFINE_string(
  "staging_dir",
  "",
  'Local folder to build in before uploading to a gs:// data_dir ("" = a temporary folder, removed afterwards).',
)
_MANUAL_DIR = flags.DEFINE_string(
  "manual_dir", "", 'Folder of manually downloaded files, for datasets that need them ("" = TFDS default).'
)

# Written last, in this order: TFDS treats a variant folder holding both as prepared.
_METADATA_LAST = ("features.json", "dataset_info.json")
_COPY_CHUNK_BYTES = 16 << 20


def _is_uri(path: str) -> bool:
  return "://" in path


def _check_array_record(builder: tfds.core.DatasetBuilder, name: str, data_dir: str) -> None:
  file_format = builder.info.file_format
  if file_format is not None and file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
      f"TFDS dataset {name!r} is already prepared in {builder.data_dir!r} as {file_format.value} "
      f"files; training reads ArrayRecord only. Remove that folder or choose another data_dir "
      f"than {data_dir!r}."
    )


def _upload_order(path: epath.Path) -> tuple[int, str]:
  """Record files (0) before features.json (1) before dataset_info.json (2)."""
  return (_METADATA_LAST.index(path.name) + 1 if path.name in _METADATA_LAST else 0, path.name)


def upload_variant(src: epath.PathLike, dst: epath.PathLike) -> None:
  """Copies the prepared dataset folder `src` (local) to `dst` (a URI), metadata last.

  Whatever `dst` already holds is removed first: it is an incomplete earlier upload.
  """
  src, dst = epath.Path(src), epath.Path(dst)
  if dst.exists():
    dst.rmtree()
  dst.mkdir(parents=True, exist_ok=True)
  for path in sorted((p for p in src.iterdir() if p.is_file()), key=_upload_order):
    with path.open("rb") as reader, (dst / path.name).open("wb") as writer:
      shutil.copyfileobj(reader, writer, _COPY_CHUNK_BYTES)


def prepare(name: str, data_dir: str = "", *, staging_dir: str = "", manual_dir: str = "") -> str:
  """Prepares TFDS dataset `name` as ArrayRecord files in `data_dir`; returns the dataset's folder there.

  See the module docstring. Raises ValueError naming the value for a bad name, or a
  dataset already prepared there in another file format.
  """
  try:
    config_lib.parse_source(config_lib.TFDS_PREFIX + name)
  except ValueError:
    raise ValueError(
      f"--dataset={name!r} is not a TFDS dataset; expected NAME[/CONFIG][:VERSION] such as lm1b or wiki40b/en:1.3.0."
    ) from None
  data_dir = config_lib.expand_path(data_dir) if data_dir else ""
  target = tfds.builder(name, data_dir=data_dir or None)
  if target.is_prepared():
    _check_array_record(target, name, data_dir)
    logging.info("TFDS dataset %s is already prepared in %s.", name, target.data_dir)
    return target.data_dir
  download_config = tfds.download.DownloadConfig(manual_dir=config_lib.expand_path(manual_dir) if manual_dir else None)
  if not _is_uri(data_dir):
    target.download_and_prepare(file_format="array_record", download_config=download_config)
    return target.data_dir
  with tempfile.TemporaryDirectory(prefix="cyb_prepare_data_") as tmp:
    local = tfds.builder(name, data_dir=config_lib.expand_path(staging_dir) if staging_dir else tmp)
    if local.is_prepared():
      _check_array_record(local, name, staging_dir)
      logging.info("Uploading the dataset prepared in %s.", local.data_dir)
    else:
      local.download_and_prepare(file_format="array_record", download_config=download_config)
    upload_variant(local.data_dir, target.data_dir)
  logging.info("TFDS dataset %s is prepared in %s.", name, target.data_dir)
  return target.data_dir


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _DATASET.value:
    raise app.UsageError("--dataset is required, e.g. --dataset=lm1b.")
  path = prepare(_DATASET.value, _DATA_DIR.value, staging_dir=_STAGING_DIR.value, manual_dir=_MANUAL_DIR.value)
  print(
    f"Prepared {_DATASET.value} in {path}; train with --config.data.source=tfds:{_DATASET.value}"
    + (f" --config.data.tfds_data_dir={_DATA_DIR.value}" if _DATA_DIR.value else "")
  )


def run() -> None:
  """The `cyb-prepare-data` entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
