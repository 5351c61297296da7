"""The installable package: lazy imports, the wheel's contents, and the installed wheel at work.

The wheel is built from a copy of this checkout (so that no build/ or *.egg-info lands
in it), with ``--no-build-isolation`` when this interpreter has setuptools >= 77 (the
``test`` extra installs it; no network needed), else with build isolation (pip fetches
setuptools from PyPI). It is installed into a fresh virtual environment whose only
extra path is this environment's site-packages (a ``.pth`` line, so the dependencies
are shared but this environment's own cyb_jax, e.g. an editable install, is not
visible), and run from a temporary folder outside the checkout.
"""

import email.parser
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile

import pytest

from cyb_jax import cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(_REPO, "pyproject.toml"), "rb") as _f:
  _PYPROJECT = tomllib.load(_f)
_VERSION = _PYPROJECT["project"]["version"]
_SCRIPTS = {
  "cyb-train": "cyb_jax.cli:cyb_train",
  "cyb-experiment": "cyb_jax.cli:cyb_experiment",
  "cyb-analyze": "cyb_jax.cli:cyb_analyze",
  "cyb-generate": "cyb_jax.cli:cyb_generate",
  "cyb-prepare-data": "cyb_jax.cli:cyb_prepare_data",
  "cyb-export": "cyb_jax.cli:cyb_export",
}
_HEAVY = ("flax", "orbax", "tensorflow_datasets", "tensorflow")


def _python(
  code: str,
  *,
  python: str = sys.executable,
  cwd: str | None = None,
  pythonpath: str | None = None,
  timeout: float = 120,
) -> str:
  """Runs ``code`` in a fresh interpreter; returns its stdout (fails the test on an error)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  if pythonpath is not None:
    env["PYTHONPATH"] = pythonpath
  proc = subprocess.run(
    [python, "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd,
    timeout=timeout,
    check=False,
  )
  assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
  return proc.stdout


# ------------------------------------------------------------------------------------------
# Lazy imports (the checkout).
# ------------------------------------------------------------------------------------------

_LAZY_CHECK = """
import sys
heavy = {heavy!r}
def loaded(names):
  return sorted(m for m in sys.modules if m.split(".")[0] in names)

import cyb_jax
assert loaded(("jax", "numpy") + heavy) == [], loaded(("jax", "numpy") + heavy)
assert cyb_jax.__version__ == {version!r}, cyb_jax.__version__

from cyb_jax import losses
assert losses.__name__ == "cyb_jax.losses"
assert "jax" in sys.modules
assert loaded(heavy) == [], loaded(heavy)
print(cyb_jax.__file__)

import types
for name in cyb_jax.__all__:  # every public name resolves to its submodule
  module = getattr(cyb_jax, name)
  assert isinstance(module, types.ModuleType) and module.__name__ == "cyb_jax." + name, name
assert sorted(cyb_jax.__all__) == sorted(set(cyb_jax.__all__))
try:
  cyb_jax.no_such_module
except AttributeError as e:
  assert "no_such_module" in str(e) and "losses" in str(e), e
else:
  raise AssertionError("no AttributeError")
"""


def test_import_is_lazy_and_losses_need_no_flax_orbax_or_tfds():
  out = _python(_LAZY_CHECK.format(heavy=_HEAVY, version=_VERSION), pythonpath=_REPO)
  assert out.strip() == os.path.join(_REPO, "cyb_jax", "__init__.py")


def test_the_readme_api_resolves_as_attributes_in_a_fresh_interpreter():
  """`cyb_jax.model.step_logits`, `cyb_jax.model.decode.generate`, `cyb_jax.pretrained.load` and
  the parts' submodules are reached from `import cyb_jax` alone (lazy, PEP 562)."""
  out = _python(
    """
    import cyb_jax
    names = [cyb_jax.model.step_logits, cyb_jax.model.decode.generate, cyb_jax.pretrained.load,
             cyb_jax.pretrained.save, cyb_jax.training.train.train_and_evaluate,
             cyb_jax.analysis.evaluation.eval_sums, cyb_jax.experiment.plan, cyb_jax.losses.make_loss]
    print(all(callable(n) or hasattr(n, "__file__") for n in names))
    """,
    pythonpath=_REPO,
  )
  assert out.strip() == "True"


def test_all_lists_exactly_the_public_submodules():
  """``__all__`` names every module and subpackage of cyb_jax but ``cli`` (entry points)."""
  import cyb_jax  # pylint: disable=import-outside-toplevel

  on_disk = {
    name[:-3] if name.endswith(".py") else name
    for name in os.listdir(os.path.join(_REPO, "cyb_jax"))
    if (name.endswith(".py") and not name.startswith("_"))
    or os.path.isfile(os.path.join(_REPO, "cyb_jax", name, "__init__.py"))
  }
  assert set(cyb_jax.__all__) == on_disk - {"cli"}


# ------------------------------------------------------------------------------------------
# The wheel.
# ------------------------------------------------------------------------------------------


def _has_modern_setuptools() -> bool:
  try:
    version = importlib.metadata.version("setuptools")
  except importlib.metadata.PackageNotFoundError:
    return False
  return tuple(int(p) for p in re.findall(r"\d+", version)[:1]) >= (77,)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
  """Builds the wheel from a copy of the checkout; returns its path."""
  root = tmp_path_factory.mktemp("wheel")
  src = root / "src"
  shutil.copytree(
    _REPO,
    src,
    ignore=shutil.ignore_patterns(
      ".git",
      ".venv",
      ".cache",
      ".pytest_cache",
      ".hypothesis",
      "workdirs",
      "__pycache__",
      "build",
      "dist",
      "*.egg-info",
      "tmp",
    ),
  )
  cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist")]
  if _has_modern_setuptools():
    cmd += ["--no-build-isolation", "--no-index"]
  proc = subprocess.run(cmd + [str(src)], capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
  wheels = sorted((root / "dist").glob("cyb_jax-*.whl"))
  assert [w.name for w in wheels] == [f"cyb_jax-{_VERSION}-py3-none-any.whl"]
  return str(wheels[0])


def test_wheel_holds_the_package_only_with_typing_marker_and_license(wheel):
  with zipfile.ZipFile(wheel) as zf:
    names = set(zf.namelist())
    dist_info = f"cyb_jax-{_VERSION}.dist-info"
    data = f"cyb_jax-{_VERSION}.data"
    assert {n.split("/")[0] for n in names} == {"cyb_jax", dist_info, data}  # no top-level configs/
    assert f"{data}/data/share/doc/cyb_jax/design.md" in names  # what the docstrings cite
    assert "cyb_jax/py.typed" in names
    source = {
      os.path.relpath(os.path.join(d, f), _REPO).replace(os.sep, "/")
      for d, _, files in os.walk(os.path.join(_REPO, "cyb_jax"))
      if "__pycache__" not in d
      for f in files
      if f.endswith(".py")
    }
    assert source <= names, sorted(source - names)  # every subpackage was found
    with open(os.path.join(_REPO, "LICENSE"), "rb") as f:
      assert zf.read(f"{dist_info}/licenses/LICENSE") == f.read()
    meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
    entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
  assert meta["License-Expression"] == "Apache-2.0"
  assert meta.get_all("License-File") == ["LICENSE"]
  assert meta["Requires-Python"] == ">=3.12"
  assert {"train", "gpu", "gcp", "tpu", "test"} <= set(meta.get_all("Provides-Extra"))
  assert any(r.startswith("gcsfs") and 'extra == "gcp"' in r for r in meta.get_all("Requires-Dist"))
  # The base install is the losses library: JAX and NumPy; Flax and the rest come with `train`.
  base = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0] for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
  assert base == {"jax", "numpy"}, base
  assert any(r.startswith("flax") and 'extra == "train"' in r for r in meta.get_all("Requires-Dist"))
  scripts = dict(re.findall(r"^(\S+) = (\S+)$", entry_points.split("[console_scripts]")[1], re.M))
  assert scripts == _SCRIPTS


@pytest.mark.skipif(
  not os.path.isdir(os.path.join(_REPO, "cyb_jax", "configs")),
  reason="cyb_jax/configs/ does not exist yet (configs/ moves there)",
)
def test_wheel_ships_the_configs(wheel):
  with zipfile.ZipFile(wheel) as zf:
    names = set(zf.namelist())
  assert {"cyb_jax/configs/__init__.py", "cyb_jax/configs/default.py"} <= names


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> str:
  """A fresh venv with the wheel installed; returns its python."""
  venv = tmp_path_factory.mktemp("venv")
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
  python = str(venv / "bin" / "python")
  # pip of this environment installs into the new one; --ignore-installed: this
  # environment's own cyb_jax (seen on pip's path) is neither reused nor uninstalled.
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "--python",
      python,
      "install",
      "-q",
      "--no-deps",
      "--no-index",
      "--ignore-installed",
      wheel,
    ],
    check=True,
    timeout=300,
  )
  site = _python("import sysconfig; print(sysconfig.get_path('purelib'))", python=python).strip()
  # The dependencies come from this environment, after the venv's own site-packages.
  with open(os.path.join(site, "_shared_deps.pth"), "w", encoding="utf-8") as f:
    f.write(sysconfig.get_path("purelib") + "\n")
  return python


def test_installed_wheel_imports_from_the_venv_not_the_checkout(installed, tmp_path):
  out = _python(
    """
      import importlib.util, sys, cyb_jax
      from cyb_jax import losses
      print(cyb_jax.__file__)
      print(cyb_jax.__version__)
      print(importlib.util.find_spec("configs"))
      """,
    python=installed,
    cwd=str(tmp_path),
  ).splitlines()
  venv = os.path.dirname(os.path.dirname(installed))
  assert out[0].startswith(venv + os.sep) and out[0].endswith(os.path.join("cyb_jax", "__init__.py"))
  assert out[1] == _VERSION
  assert out[2] == "None"  # no top-level `configs` package installed
  for name in _SCRIPTS:
    script = os.path.join(venv, "bin", name)
    with open(script, encoding="utf-8") as f:
      assert f.readline().strip() == f"#!{installed}", name


@pytest.mark.slow
@pytest.mark.skipif(
  not os.path.isfile(os.path.join(_REPO, "cyb_jax", "cli", "train.py")),
  reason="cyb_jax/cli/train.py does not exist yet (the launch scripts move into cyb_jax.cli)",
)
def test_installed_cyb_train_runs_outside_the_checkout(installed, tmp_path):
  venv = os.path.dirname(os.path.dirname(installed))
  default = _python(
    "import cyb_jax.configs.default as m; print(m.__file__)", python=installed, cwd=str(tmp_path)
  ).strip()
  assert default.startswith(venv + os.sep), default
  workdir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  # The compilation cache of the other trainer tests (tests/conftest.py).
  env["JAX_COMPILATION_CACHE_DIR"] = os.environ.get(
    "CYB_JAX_TEST_CACHE", os.path.join(_REPO, ".cache", "jax_test_compilation")
  )
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  proc = subprocess.run(
    [
      os.path.join(venv, "bin", "cyb-train"),
      f"--config={default}",
      f"--workdir={workdir}",
      "--config.num_train_steps=3",
      "--config.loss.pause_warmup_steps=1",
      "--config.eval_every_steps=3",
      "--config.checkpoint_every_steps=3",
      "--config.log_every_steps=1",
      "--config.write_report=False",
      "--config.progress_bar=False",
      "--config.model.num_layers=1",
      "--config.model.d_model=32",
      "--config.model.num_heads=2",
      "--config.model.mlp_dim=64",
      "--config.model.max_pauses=1",
      "--config.data.seq_len=16",
      "--config.data.batch_size=4",
      "--config.data.eval_batches=1",
    ],
    cwd=str(tmp_path),
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  assert any('"step": 3' in row and "eval/nll_mix" in row for row in rows), rows
  assert (workdir / "checkpoints" / "3").is_dir()


def test_fallback_version_matches_pyproject():
  """``__version__`` of an uninstalled checkout is the constant in cyb_jax/__init__.py."""
  with open(os.path.join(_REPO, "cyb_jax", "__init__.py"), encoding="utf-8") as f:
    (constant,) = re.findall(r'^_PYPROJECT_VERSION = "([^"]+)"', f.read(), re.M)
  assert constant == _VERSION


def test_the_losses_import_and_run_without_the_train_extra():
  """`cyb_jax.losses` with every module of the `train` extra made unimportable."""
  blocked = ", ".join(repr(m) for m in sorted(cli.TRAIN_EXTRA_MODULES))
  out = _python(
    f"""
    import sys
    for name in ({blocked},):
      sys.modules[name] = None
    import jax.numpy as jnp
    from cyb_jax import losses
    stats = losses.step_log_probs(jnp.zeros((2, 3, 2, 5)), jnp.zeros((2, 3), jnp.int32), vocab_size=4)
    print(float(losses.make_loss("cyb_dp")(stats, jnp.ones((2, 3)))[0]))
    """,
    pythonpath=_REPO,
  )
  assert float(out) > 0


def test_a_command_without_the_train_extra_says_which_extra_to_install():
  code = "import sys; sys.modules['absl'] = None; from cyb_jax import cli; cli.cyb_train()"
  env = dict(os.environ, PYTHONPATH=_REPO)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip() == "cyb-train: needs the training extra (no module 'absl'): pip install 'cyb_jax[train]'"
