r"""The wheelhouse (issue 29): the wheels a bare device image lacks, carried with the tree.

A lent accelerator machine has no network, and its Python (3.12) has JAX, the CUDA plugin and
many of the project's dependencies, but not all (ml-collections, tensorflow-datasets, tokamax
and theirs). ``make wheelhouse`` (``download``) fetches, here, the wheels of the project's
runtime requirements (the base dependencies, the ``gpu`` extra, and what the accelerator
check's tests import: ``ACCEL_TEST_PACKAGES`` of the ``test`` extra) for CPython 3.12 on
manylinux x86-64, at the lock's versions, into ``.wheelhouse/`` (ignored by git), leaving out
what cannot or need not travel (``leave_reason``):

* ``NEVER_CARRIED``: JAX, jaxlib, JAX's CUDA / ROCm plugins, NVIDIA's libraries, libtpu,
  ml_dtypes. A carry holds at most 64 MiB, and jaxlib alone is ~80 MiB: the GPU path runs on
  the device image's own JAX (0.11.2 today) as well as on the lock's (0.12.1).
* ``DEVICE_IMAGE``: the packages the device image holds (from the device tool's KINDS.md):
  numpy, scipy, tensorstore, pyarrow, matplotlib, ... Only the small ones (wheel at most
  ``DEVICE_CARRY_MAX_BYTES``) and ``DEVICE_CARRY_ANYWAY`` (flax, optax, orbax-checkpoint, ...)
  travel, in case the image's version is older than a requirement; they are installed only
  where it is.
* ``NOT_NEEDED``: dependencies that packages declare but that nothing the check runs imports
  (xprof's trace database duckdb, 24 MiB, and its gs:// clients; array_record).

Resolution is pip's (``pip download`` of the whole set, transitively, constrained by
``requirements.lock``); the excluded ones are then dropped, with the dependencies only they
brought in (a walk of the wheels' ``Requires-Dist`` from the requirements that stops at
them). The total must stay within ``--budget_mib`` (48 MiB: the tree needs the rest of the
carry). ``manifest.json`` beside the wheels lists what was kept and left, and why.

On the device (``make accel-check``, ``benchmarks/accel_check.py --wheelhouse``), ``plan``
walks the same requirements against the installed distributions and the wheelhouse: a
requirement that an installed version satisfies is left alone (its own dependencies are the
image's business); one that is missing or too old is taken from the wheelhouse, with the
dependencies of what is taken. ``install`` then runs ``pip install --no-index --no-deps
--find-links <wheelhouse>`` on exactly those ``name==version`` pins, with a constraint file
pinning JAX, jaxlib and the CUDA plugins to their installed versions: nothing is fetched,
and JAX is never touched (a JAX that does not satisfy the requirements is a problem the
plan reports, not an install). ``--no-deps`` because the plan is the resolution: pip's own
would insist on the dependencies left out on purpose.

This module needs the standard library and ``packaging`` (or pip's copy of it), not absl:
it runs before anything is installed. The cyb_jax package itself is used from the tree
(``PYTHONPATH``), never installed.

  make wheelhouse                          # python benchmarks/wheelhouse.py download
  python benchmarks/wheelhouse.py plan     # what an install would take from .wheelhouse
  python benchmarks/wheelhouse.py install  # ... and install it into this Python
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import email.parser
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(ROOT, ".wheelhouse")
MANIFEST = "manifest.json"
MIB = 2**20
DEFAULT_BUDGET_MIB = 48  # a carry holds 64 MiB with the tree (about 9 MiB in 2026-12)

# The device's Python and platform (the device tool's README: pip download for the device).
PYTHON_VERSION = "3.12"
PLATFORMS = (
  "manylinux_2_28_x86_64",
  "manylinux_2_27_x86_64",
  "manylinux_2_17_x86_64",
  "manylinux2014_x86_64",
  "manylinux1_x86_64",
)
# Markers of the device's Python, for the walk of the downloaded wheels' Requires-Dist.
TARGET_ENVIRONMENT = dict(
  implementation_name="cpython",
  platform_machine="x86_64",
  platform_python_implementation="CPython",
  platform_system="Linux",
  os_name="posix",
  sys_platform="linux",
  python_version=PYTHON_VERSION,
  python_full_version=PYTHON_VERSION + ".3",
)
# The packages of the `test` extra that the accelerator check's tests stage needs.
ACCEL_TEST_PACKAGES = ("pytest", "pytest-xdist", "hypothesis", "scipy")
# Never carried, never installed from a wheelhouse: the JAX a machine runs is its own, with
# the ml_dtypes its jaxlib was built with; pip is held to their installed versions.
NEVER_CARRIED = ("jax", "jaxlib", "jax-cuda*", "jax-rocm*", "libtpu*", "nvidia-*", "ml-dtypes")
# Dependencies that packages declare but that nothing on the accelerator check's paths
# imports, never carried nor required: tokamax imports xprof.cli.tools.get_kernel_stats_tool
# at import time, which loads xprof's profiler extension (with fire, termcolor, six, etils,
# absl, protobuf) but not the first three (34 MiB with cryptography and the google-*
# clients); array_record is read only when a TFDS dataset is.
NOT_NEEDED: Mapping[str, str] = {
  "duckdb": "xprof's trace database (24 MiB)",
  "google-cloud-storage": "xprof's gs:// profiles",
  "gcsfs": "gs:// paths (xprof's fsspec[gcs]; the project's gcp extra)",
  "array-record": "tfds.data_source's reader: the check reads no TFDS data (3.7 MiB)",
}
# Pure-Python packages that the index serves as a source distribution only: built into a
# wheel here (`pip wheel`) at the lock's version before the download.
BUILT_FROM_SOURCE = ("promise",)
# The device image's packages (nvidia-h100-x1 and nvidia-h200, image 'cuda': the device
# tool's KINDS.md, "Python packages already there", read 2026-11-17) are left to the image,
# except the small ones (wheel <= DEVICE_CARRY_MAX_BYTES: cheap insurance against an older
# version there, e.g. typing_extensions for pydantic) and DEVICE_CARRY_ANYWAY, the JAX
# libraries with floors in pyproject.toml (and flax's etils and treescope) that an image
# built for an older JAX may hold in older versions.
# Either is installed only where the image's version does not satisfy a requirement.
DEVICE_IMAGE = frozenset(
  """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
  build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
  cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
  execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
  httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
  jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
  lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
  mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
  networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
  nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
  nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
  nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
  optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
  prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
  pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
  pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
  scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
  shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
  tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
  torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
  typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
  zipp""".split()
)
DEVICE_CARRY_MAX_BYTES = 160 * 2**10
DEVICE_CARRY_ANYWAY = ("flax", "optax", "orbax-checkpoint", "chex", "etils", "treescope")


def _packaging():
  """``packaging`` (its requirements, markers and specifiers), or pip's vendored copy of it."""
  try:
    import packaging.requirements  # noqa: PLC0415

    return packaging
  except ImportError:
    from pip._vendor import packaging  # noqa: PLC0415
    from pip._vendor.packaging import requirements  # noqa: F401, PLC0415

    return packaging


def canonical(name: str) -> str:
  """PEP 503's normalised name: lower case, runs of ``-_.`` as one ``-``."""
  return re.sub(r"[-_.]+", "-", name).lower()


def never_carried(name: str) -> bool:
  return any(fnmatch.fnmatchcase(canonical(name), pattern) for pattern in NEVER_CARRIED)


# --------------------------------------------------------------------------------------
# The project's requirements, the lock, the wheels.
# --------------------------------------------------------------------------------------


def project_requirements(root: str = ROOT) -> list[str]:
  """The requirement strings of the accelerator check: pyproject's dependencies, its ``train``
  and ``gpu`` extras, and the ``test`` extra's ``ACCEL_TEST_PACKAGES``."""
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  extras = project.get("optional-dependencies", {})
  wanted = {canonical(n) for n in ACCEL_TEST_PACKAGES}
  tests = [r for r in extras.get("test", []) if canonical(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) in wanted]
  return [*project["dependencies"], *extras.get("train", []), *extras.get("gpu", []), *tests]


def lock_pins(root: str = ROOT) -> dict[str, str]:
  """``requirements.lock``'s ``name==version`` lines, by canonical name."""
  pins = {}
  try:
    with open(os.path.join(root, "requirements.lock")) as f:
      for line in f:
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if m:
          pins[canonical(m.group(1))] = m.group(2)
  except OSError:
    pass
  return pins


@dataclasses.dataclass(frozen=True)
class Wheel:
  """A wheel file: its distribution's name and version, its ``Requires-Dist``, its size."""

  path: str
  name: str
  version: str
  requires: tuple[str, ...]
  size: int

  @property
  def key(self) -> str:
    return canonical(self.name)

  @property
  def pin(self) -> str:
    return f"{self.name}=={self.version}"


def read_wheel(path: str) -> Wheel:
  """The ``METADATA`` of a wheel file."""
  with zipfile.ZipFile(path) as z:
    meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
    message = email.parser.BytesParser().parsebytes(z.read(meta))
  return Wheel(
    path=path,
    name=message["Name"],
    version=message["Version"],
    requires=tuple(message.get_all("Requires-Dist") or ()),
    size=os.path.getsize(path),
  )


def wheels_in(folder: str) -> dict[str, Wheel]:
  """The wheels of ``folder`` by canonical name; two versions of one name are an error."""
  found: dict[str, Wheel] = {}
  for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
    if entry.endswith(".whl"):
      wheel = read_wheel(os.path.join(folder, entry))
      if wheel.key in found:
        raise ValueError(f"{folder}: two wheels of {wheel.name}: {os.path.basename(found[wheel.key].path)}, {entry}")
      found[wheel.key] = wheel
  return found


def _applicable(requires: Iterable[str], extras: Iterable[str], environment: Mapping[str, str] | None) -> list:
  """The requirements of ``requires`` that apply for ``extras`` ('' = the base ones) in
  ``environment`` (None: this interpreter's)."""
  requirements = _packaging().requirements
  out = []
  for text in requires:
    req = requirements.Requirement(text)
    if req.marker is None:
      if "" in extras:
        out.append(req)
      continue
    if any(req.marker.evaluate(dict(environment or {}, extra=extra)) for extra in extras):
      out.append(req)
  return out


def _satisfies(version: str, req) -> bool:
  try:
    return req.specifier.contains(version, prereleases=True)
  except Exception:  # a version packaging cannot parse satisfies nothing
    return False


# --------------------------------------------------------------------------------------
# Download (make wheelhouse): resolve with pip, keep what travels.
# --------------------------------------------------------------------------------------


def leave_reason(name: str, size: int, device_max_bytes: int = DEVICE_CARRY_MAX_BYTES) -> str | None:
  """Why a resolved wheel stays out of the wheelhouse, or None when it travels."""
  if never_carried(name):
    return "never carried: the machine's own JAX, plugins and NVIDIA libraries"
  key = canonical(name)
  if key in DEVICE_IMAGE and key not in DEVICE_CARRY_ANYWAY and size > device_max_bytes:
    return f"on the device image ({size / MIB:.1f} MiB)"
  return None


@dataclasses.dataclass
class Selection:
  """What ``select`` keeps of the resolved wheels, what it leaves (why), the edges it skips."""

  kept: dict[str, Wheel]
  left: dict[str, str]
  skipped: list[str]


def select(
  resolved: Mapping[str, Wheel],
  requirements: Sequence[str],
  *,
  environment: Mapping[str, str] | None = None,
  device_max_bytes: int = DEVICE_CARRY_MAX_BYTES,
) -> Selection:
  """The wheels that travel: the walk from ``requirements`` through the resolved wheels'
  ``Requires-Dist``, stopping at what ``leave_reason`` leaves out and at ``NOT_NEEDED`` edges
  (so the dependencies that only those brought in stay out too)."""
  environment = dict(TARGET_ENVIRONMENT if environment is None else environment)
  kept: dict[str, Wheel] = {}
  left: dict[str, str] = {}
  skipped: list[str] = []
  done: dict[str, set[str]] = {}
  queue = [(req, None) for req in _applicable(requirements, [""], environment)]
  while queue:
    req, parent = queue.pop(0)
    key = canonical(req.name)
    if key in NOT_NEEDED:
      skipped.append(f"{key} ({parent or 'the project'})")
      continue
    if key in left:
      continue
    if key not in kept:
      wheel = resolved.get(key)
      if wheel is None:
        left[key] = "not resolved by pip (a marker that does not apply there?)"
        continue
      reason = leave_reason(key, wheel.size, device_max_bytes)
      if reason:
        left[key] = reason
        continue
      kept[key] = wheel
    new = ({""} | set(req.extras)) - done.setdefault(key, set())
    done[key] |= new
    queue += [(r, key) for r in _applicable(kept[key].requires, new, environment)] if new else []
  return Selection(kept=kept, left=left, skipped=sorted(set(skipped)))


def _pip(python: str) -> list[str]:
  return [python, "-m", "pip", "--disable-pip-version-check"]


def download(
  dest: str = DEFAULT_DIR,
  budget_mib: float = DEFAULT_BUDGET_MIB,
  *,
  python: str = sys.executable,
  root: str = ROOT,
) -> Selection:
  """``make wheelhouse``: resolves and downloads the requirements' wheels for the device's
  Python into a staging folder, keeps what travels in ``dest`` (its old wheels removed) with
  ``manifest.json``, prints the list and the total, and raises SystemExit past the budget."""
  requirements = project_requirements(root)
  lock = os.path.join(root, "requirements.lock")
  pins = lock_pins(root)
  target = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
  for platform in PLATFORMS:
    target += ["--platform", platform]
  if sys.version_info[:2] != tuple(int(x) for x in PYTHON_VERSION.split(".")):
    print(f"wheelhouse: note: run by Python {sys.version.split()[0]}; markers are evaluated for {PYTHON_VERSION}")
  with tempfile.TemporaryDirectory(prefix="wheelhouse_") as staging:
    built, resolved_dir = os.path.join(staging, "built"), os.path.join(staging, "resolved")
    sources = [f"{name}=={pins[name]}" if name in pins else name for name in BUILT_FROM_SOURCE]
    subprocess.run([*_pip(python), "wheel", "-q", "--no-deps", "-c", lock, "-w", built, *sources], check=True)
    argv = [*_pip(python), "download", "-q", "-d", resolved_dir, "--find-links", built, *target, "-c", lock]
    subprocess.run([*argv, *requirements], check=True)
    resolved = wheels_in(resolved_dir)
    selection = select(resolved, requirements)
    os.makedirs(dest, exist_ok=True)
    for entry in os.listdir(dest):
      if entry.endswith(".whl") or entry == MANIFEST:
        os.remove(os.path.join(dest, entry))
    for wheel in selection.kept.values():
      shutil.copy2(wheel.path, dest)
  total = sum(w.size for w in selection.kept.values())
  manifest = dict(
    python=PYTHON_VERSION,
    platforms=list(PLATFORMS),
    requirements=requirements,
    lock={name: pins.get(name) for name in ("jax", "jaxlib")},
    total_bytes=total,
    budget_mib=budget_mib,
    wheels={k: dict(version=w.version, file=os.path.basename(w.path), bytes=w.size) for k, w in selection.kept.items()},
    left=selection.left,
    skipped=selection.skipped,
  )
  with open(os.path.join(dest, MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  for wheel in sorted(selection.kept.values(), key=lambda w: -w.size):
    print(f"  {wheel.size / MIB:7.2f} MiB  {wheel.pin}")
  print("left out: " + ", ".join(f"{k} ({why})" for k, why in sorted(selection.left.items())))
  print("not needed: " + ", ".join(selection.skipped))
  print(f"wheelhouse {os.path.relpath(dest)}: {len(selection.kept)} wheels, {total / MIB:.1f} MiB", end="")
  print(f" (budget {budget_mib} MiB)")
  if total > budget_mib * MIB:
    raise SystemExit(
      f"wheelhouse: {total / MIB:.1f} MiB is over the budget of {budget_mib} MiB: a device call carries at most "
      "64 MiB, the tree included. Leave more out (NOT_NEEDED, DEVICE_IMAGE in benchmarks/wheelhouse.py) "
      "or raise WHEELHOUSE_BUDGET_MIB if the tree leaves room."
    )
  return selection


# --------------------------------------------------------------------------------------
# Plan and install (on the device).
# --------------------------------------------------------------------------------------


def installed(path: Sequence[str] | None = None) -> dict[str, importlib.metadata.Distribution]:
  """The installed distributions by canonical name, the first on ``path`` (default
  ``sys.path``) winning, as imports would."""
  found = {}
  for dist in importlib.metadata.distributions(path=list(path) if path is not None else sys.path):
    try:
      name = dist.metadata["Name"]
    except Exception:  # a broken dist-info
      continue
    if name and canonical(name) not in found:
      found[canonical(name)] = dist
  return found


@dataclasses.dataclass
class Plan:
  """What to install from a wheelhouse: its wheels (``install``), the installed versions that
  do (``satisfied``), and what neither can satisfy (``problems``)."""

  install: list[Wheel]
  satisfied: dict[str, str]
  problems: list[str]

  @property
  def pins(self) -> list[str]:
    return [w.pin for w in self.install]


def plan(
  wheelhouse: str,
  requirements: Sequence[str],
  *,
  path: Sequence[str] | None = None,
  environment: Mapping[str, str] | None = None,
) -> Plan:
  """The walk from ``requirements``: an installed version (on ``path``) that satisfies a
  requirement is kept and its base dependencies are not walked (extras requested of it
  are); otherwise the wheelhouse's version is taken, if it satisfies, and its dependencies
  walked. ``NEVER_CARRIED`` names (JAX) are never taken. ``NOT_NEEDED`` edges are skipped."""
  wheels = wheels_in(wheelhouse)
  dists = installed(path)
  chosen: dict[str, Wheel] = {}
  problems: list[str] = []
  demands: dict[str, list[tuple[Any, str]]] = {}
  done: dict[str, set[str]] = {}
  queue = [(req, "the project") for req in _applicable(requirements, [""], environment)]
  while queue:
    req, parent = queue.pop(0)
    key = canonical(req.name)
    if key in NOT_NEEDED:
      continue
    dist, wheel = dists.get(key), wheels.get(key)
    have = dist.version if dist is not None else None
    if key not in chosen and not (have is not None and _satisfies(have, req)):
      where = f"installed {have}" if have else "not installed"
      if never_carried(key):
        problems.append(f"{req} (for {parent}): {where}, and {key} is never installed from a wheelhouse")
        continue
      if wheel is None or not _satisfies(wheel.version, req):
        offer = f"the wheelhouse has {wheel.version}" if wheel else "not in the wheelhouse"
        problems.append(f"{req} (for {parent}): {where}, {offer}")
        continue
      chosen[key] = wheel
    demands.setdefault(key, []).append((req, parent))  # accepted: checked again at the end
    new = ({""} | set(req.extras)) - done.setdefault(key, set())
    if key not in chosen:
      new.discard("")  # an installed dist's own dependencies are its installer's business
    done[key] |= new
    if new:
      requires = chosen[key].requires if key in chosen else (dists[key].requires or ())
      queue += [(r, key) for r in _applicable(requires, new, environment)]
  for key, reqs in demands.items():  # a choice made after an installed version was accepted
    version = chosen[key].version if key in chosen else (dists[key].version if key in dists else None)
    for req, parent in reqs:
      if version is not None and not _satisfies(version, req):
        problems.append(f"{req} (for {parent}): {key} {version} does not satisfy it")
  satisfied = {k: dists[k].version for k in demands if k in dists and k not in chosen}
  return Plan(install=list(chosen.values()), satisfied=satisfied, problems=sorted(set(problems)))


def held_constraints(dists: Mapping[str, importlib.metadata.Distribution]) -> list[str]:
  """``name==version`` of the installed JAX, jaxlib and their plugins: pip may not change them."""
  return sorted(f"{d.metadata['Name']}=={d.version}" for k, d in dists.items() if never_carried(k))


def install(
  the_plan: Plan,
  wheelhouse: str,
  *,
  target: str | None = None,
  python: str = sys.executable,
  log_path: str | None = None,
  timeout_s: float = 600.0,
) -> subprocess.CompletedProcess:
  """``pip install --no-index --no-deps --find-links <wheelhouse>`` of the plan's pins, into
  ``python``'s environment or ``target`` (``--target``: the folder then goes on PYTHONPATH),
  with JAX and its plugins pinned to their installed versions by a constraint file."""
  path = [target, *sys.path] if target else None
  with tempfile.NamedTemporaryFile("w", prefix="held_", suffix=".txt", delete=False) as f:
    f.write("\n".join(held_constraints(installed(path))) + "\n")
    constraints = f.name
  argv = [*_pip(python), "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--find-links"]
  argv += [wheelhouse, "-c", constraints, "--root-user-action=ignore"]
  argv += ["--target", target, "--upgrade"] if target else []
  try:
    with open(log_path or os.devnull, "a") as log:
      log.write(f"$ {' '.join(argv + the_plan.pins)}\n")
      log.flush()
      return subprocess.run(
        argv + the_plan.pins, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout_s
      )
  finally:
    os.remove(constraints)


def prepare(
  wheelhouse: str,
  *,
  target: str | None = None,
  log_path: str | None = None,
  root: str = ROOT,
) -> dict[str, Any]:
  """Plans and installs what the requirements lack from ``wheelhouse``; a JSON-able record.

  Never raises: an error is recorded (``error``) and the check goes on with what is there.
  """
  start = time.perf_counter()
  record: dict[str, Any] = dict(wheelhouse=os.path.relpath(wheelhouse, root), target=target)
  try:
    with open(os.path.join(wheelhouse, MANIFEST)) as f:
      record["built_for"] = json.load(f).get("lock")
  except (OSError, ValueError):
    pass
  try:
    requirements = project_requirements(root)
    path = [target, *sys.path] if target else None
    first = plan(wheelhouse, requirements, path=path)
    record.update(planned=first.pins, satisfied=len(first.satisfied), problems=first.problems)
    if first.install:
      if target:
        os.makedirs(target, exist_ok=True)
      done = install(first, wheelhouse, target=target, log_path=log_path)
      record["pip_rc"] = done.returncode
      if done.returncode != 0:
        record["error"] = f"pip install exited {done.returncode} (setup.log)"
      importlib.invalidate_caches()
      after = plan(wheelhouse, requirements, path=path)
      record["still_missing"] = after.pins  # its problems are the first plan's, or fewer: it walks less
  except Exception as e:  # bookkeeping never stops the check
    record["error"] = f"{type(e).__name__}: {e}"[:500]
  record["seconds"] = round(time.perf_counter() - start, 1)
  if log_path:
    with open(log_path, "a") as log:
      log.write("# wheelhouse\n" + json.dumps(record, indent=1) + "\n")
  return record


def describe(record: Mapping[str, Any] | None) -> str:
  """One line on what a ``prepare`` record did."""
  if not record:
    return "no wheelhouse used"
  where = record["wheelhouse"] + (f" into {record['target']}" if record.get("target") else "")
  planned = record.get("planned")
  if planned is None:
    text = f"{where}: not used"
  elif not planned:
    text = f"{where}: nothing missing"
  else:
    text = f"{where}: installed {len(planned)} in {record.get('seconds', 0):.0f} s ({', '.join(planned)})"
  if record.get("still_missing"):
    text += f"; still missing: {', '.join(record['still_missing'])}"
  if record.get("problems"):
    text += f"; unsatisfied: {'; '.join(record['problems'])}"
  if record.get("error"):
    text += f"; {record['error']}"
  return text


# --------------------------------------------------------------------------------------
# Wheels built here (tests): a minimal wheel from a name, a version and files.
# --------------------------------------------------------------------------------------


def write_wheel(
  folder: str, name: str, version: str, requires: Sequence[str] = (), files: Mapping[str, str] | None = None
) -> str:
  """Writes a pure-Python wheel of ``name`` ``version`` with ``Requires-Dist`` ``requires``
  (``"x; extra == 'e'"`` declares extra ``e``) and ``files`` (default: an empty package
  ``<name>/__init__.py``) into ``folder``; its path."""
  stem = f"{re.sub(r'[-.]+', '_', name)}-{version}"
  info = f"{stem}.dist-info"
  extras = sorted(set(re.findall(r"extra\s*==\s*['\"]([^'\"]+)", "\n".join(requires))))
  metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
  metadata += "".join(f"Provides-Extra: {e}\n" for e in extras) + "".join(f"Requires-Dist: {r}\n" for r in requires)
  contents = dict(files if files is not None else {f"{re.sub(r'[-.]+', '_', name)}/__init__.py": ""})
  contents[f"{info}/METADATA"] = metadata
  contents[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: cyb_jax\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
  record = []
  for arcname, text in contents.items():
    digest = hashlib.sha256(text.encode()).digest()
    record.append(f"{arcname},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(text.encode())}")
  contents[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
  path = os.path.join(folder, f"{stem}-py3-none-any.whl")
  os.makedirs(folder, exist_ok=True)
  with zipfile.ZipFile(path, "w") as z:
    for arcname, text in contents.items():
      z.writestr(arcname, text)
  return path


# --------------------------------------------------------------------------------------
# Command line (argparse: it runs before absl-py may be installed).
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  down = sub.add_parser("download", help="make wheelhouse: download the wheels that travel")
  down.add_argument("--dest", default=DEFAULT_DIR, help="the wheelhouse folder (default .wheelhouse)")
  down.add_argument("--budget_mib", type=float, default=DEFAULT_BUDGET_MIB, help="fail above this many MiB")
  for name, text in (("plan", "print what an install would take"), ("install", "install what is missing")):
    p = sub.add_parser(name, help=text)
    p.add_argument("--wheelhouse", default=DEFAULT_DIR, help="the wheelhouse folder (default .wheelhouse)")
    p.add_argument("--target", default=None, help="pip --target folder (default: this Python's environment)")
  args = parser.parse_args(argv)
  if args.command == "download":
    download(args.dest, args.budget_mib)
    return 0
  if args.command == "plan":
    path = [args.target, *sys.path] if args.target else None
    the_plan = plan(args.wheelhouse, project_requirements(), path=path)
    print("\n".join(the_plan.pins) or "nothing to install")
    for problem in the_plan.problems:
      print(f"unsatisfied: {problem}")
    return 0
  record = prepare(args.wheelhouse, target=args.target)
  print(describe(record))
  return 1 if record.get("error") or record.get("still_missing") else 0


if __name__ == "__main__":
  sys.exit(main())
