"""launch/tpu/*.sh under --dry-run: the exact gcloud commands, and clear errors; and
benchmarks/tpu_compile.py, the script compile_check.sh runs, where libtpu is installed.

Every run puts a fake ``gcloud`` first on PATH that records any call; a dry run must
leave no record (it prints commands, it runs none). The printed commands ("+ " lines,
continued over the lines of a multi-line ``--command``) are read back with shlex, so
the assertions compare argument vectors, and the remote bash scripts are checked for
syntax with ``bash -n``.
"""

import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import textwrap

import pytest

from cyb_jax import model as model_lib
from cyb_jax.model import flops

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TPU = os.path.join(_REPO, "launch", "tpu")
_SETTINGS = {
  "PROJECT": "proj",
  "ZONE": "us-west4-a",
  "ACCELERATOR": "v5litepod-16",
  "RUNTIME_VERSION": "v2-alpha-tpuv5-lite",
  "BUCKET": "gs://bkt",
}
_CLEARED = (
  "PROJECT",
  "ZONE",
  "TPU_NAME",
  "ACCELERATOR",
  "RUNTIME_VERSION",
  "NUM_SLICES",
  "BUCKET",
  "MOUNT",
  "REPO_DIR",
  "VENV",
  "PYTHON_VERSION",
  "DRY_RUN",
  "CAPACITY",
  "VALID_UNTIL",
  "WORKER",
  "SLICE",
  "TPU_COMPILE_VENV",
  "PYTHON",
  "UV",
)
_WHERE = ["--project=proj", "--zone=us-west4-a"]
_SCRIPTS = ("compile_check.sh", "create.sh", "delete.sh", "logs.sh", "setup.sh", "status.sh", "stop.sh", "train.sh")


def _executable(path, text: str) -> str:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return str(path)


@pytest.fixture
def run(tmp_path):
  """run(script, *args, **env) -> CompletedProcess, with a recording fake gcloud on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  record = tmp_path / "gcloud_calls"
  _executable(bin_dir / "gcloud", f'#!/bin/sh\necho "$@" >> {shlex.quote(str(record))}\nexit 1\n')

  def _run(script, *args, unset=(), **overrides):
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(_SETTINGS)
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    env["TPU_COMPILE_VENV"] = str(tmp_path / "no-venv-yet")
    env.update(overrides)
    for name in unset:
      env.pop(name, None)
    proc = subprocess.run(
      [os.path.join(_TPU, script), *args],
      capture_output=True,
      text=True,
      env=env,
      cwd=str(tmp_path),
      timeout=60,
      check=False,
    )
    assert not record.exists(), f"a dry run called gcloud: {record.read_text()}"
    return proc

  return _run


def _commands(stdout: str) -> list[list[str]]:
  """The "+ " commands of a dry run, each as its argument vector."""
  blocks = []
  for line in stdout.splitlines(keepends=True):
    if line.startswith("+ "):
      blocks.append(line[2:])
    elif line.startswith("# ") and (not blocks or _complete(blocks[-1])):
      continue  # a remark
    else:
      assert blocks, f"output before the first command: {line!r}"
      blocks[-1] += line
  return [shlex.split(b) for b in blocks]


def _complete(text: str) -> bool:
  try:
    shlex.split(text)
    return True
  except ValueError:
    return False


def _ok(proc) -> list[list[str]]:
  assert proc.returncode == 0, proc.stderr
  return _commands(proc.stdout)


def _remote(argv: list[str]) -> str:
  """The --command script of a `gcloud compute tpus tpu-vm ssh` argv (syntax-checked)."""
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  (script,) = [a[len("--command=") :] for a in argv if a.startswith("--command=")]
  check = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, check=False)
  assert check.returncode == 0, (check.stderr, script)
  return script


def _ssh(node: str, worker: str, script: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *_WHERE, f"--worker={worker}", f"--command={script}"]


# ------------------------------------------------------------------------------------------
# create.sh: queued resources, Spot / reserved, multislice.
# ------------------------------------------------------------------------------------------

_CREATE = [
  "gcloud",
  "compute",
  "tpus",
  "queued-resources",
  "create",
  "cyb-jax",
  *_WHERE,
  "--accelerator-type=v5litepod-16",
  "--runtime-version=v2-alpha-tpuv5-lite",
]
_DESCRIBE = [
  "gcloud",
  "compute",
  "tpus",
  "queued-resources",
  "describe",
  "cyb-jax",
  *_WHERE,
  "--format=value(state.state)",
]


@pytest.mark.parametrize(
  "args,env,capacity",
  [
    ((), {}, []),
    (("--spot",), {}, ["--spot"]),
    (("--reserved",), {}, ["--reserved"]),
    ((), {"CAPACITY": "spot"}, ["--spot"]),
    (("--reserved",), {"CAPACITY": "spot"}, ["--reserved"]),  # the flag wins
  ],
  ids=["on-demand", "spot", "reserved", "CAPACITY=spot", "flag-over-env"],
)
def test_create_one_slice_is_a_queued_resource_with_one_node(run, args, env, capacity):
  commands = _ok(run("create.sh", "--dry-run", *args, **env))
  assert commands == [_CREATE + ["--node-id=cyb-jax"] + capacity, _DESCRIBE]


def test_create_multislice_asks_for_node_count_nodes_with_a_prefix(run):
  commands = _ok(run("create.sh", "--dry-run", "--spot", "--no-wait", NUM_SLICES="4", TPU_NAME="exp", VALID_UNTIL="6h"))
  assert commands == [
    [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "create",
      "exp",
      *_WHERE,
      "--accelerator-type=v5litepod-16",
      "--runtime-version=v2-alpha-tpuv5-lite",
      "--node-count=4",
      "--node-prefix=exp",
      "--spot",
      "--valid-until-duration=6h",
    ]
  ]


@pytest.mark.parametrize(
  "args,env,message",
  [
    (("--spot", "--reserved"), {}, "--spot and --reserved exclude each other"),
    (("--preemptible",), {}, "unknown argument '--preemptible'"),
    ((), {"CAPACITY": "cheap"}, "CAPACITY=cheap is unknown; allowed: spot, reserved, on-demand"),
    ((), {"NUM_SLICES": "0"}, "NUM_SLICES=0 must be a positive integer"),
  ],
)
def test_create_rejects_bad_options(run, args, env, message):
  proc = run("create.sh", "--dry-run", *args, **env)
  assert proc.returncode in (1, 2) and proc.stdout == ""
  assert message in proc.stderr


# ------------------------------------------------------------------------------------------
# Required settings.
# ------------------------------------------------------------------------------------------

_REQUIRED = {
  "create.sh": ((), ("PROJECT", "ZONE", "ACCELERATOR", "RUNTIME_VERSION")),
  "delete.sh": ((), ("PROJECT", "ZONE")),
  "status.sh": ((), ("PROJECT", "ZONE")),
  "setup.sh": ((), ("PROJECT", "ZONE")),
  "train.sh": (("r1", "--config=configs/default.py"), ("PROJECT", "ZONE", "BUCKET")),
  "stop.sh": (("r1",), ("PROJECT", "ZONE")),
  "logs.sh": (("r1",), ("PROJECT", "ZONE")),
}


@pytest.mark.parametrize("script,name", [(s, n) for s, (_, names) in _REQUIRED.items() for n in names])
def test_a_missing_setting_fails_with_its_name(run, script, name):
  args, _ = _REQUIRED[script]
  proc = run(script, "--dry-run", *args, unset=(name,))
  assert proc.returncode == 1
  assert proc.stdout == ""
  assert proc.stderr.startswith(f"launch/tpu/{script}: set {name}: "), proc.stderr


def test_bucket_must_be_a_gs_url(run):
  proc = run("train.sh", "--dry-run", "r1", "--config=x.py", BUCKET="/mnt/data")
  assert proc.returncode == 1 and "BUCKET=/mnt/data must be a gs:// URL" in proc.stderr


# ------------------------------------------------------------------------------------------
# setup.sh: Python >= 3.12 from uv, one install command, on every host.
# ------------------------------------------------------------------------------------------


def test_setup_copies_installs_and_mounts_on_every_host_of_every_slice(run):
  commands = _ok(run("setup.sh", "--dry-run", NUM_SLICES="2"))
  assert len(commands) == 6
  scp, ssh = commands[:2], commands[2:]
  for node, argv in zip(("cyb-jax-0", "cyb-jax-1"), scp):
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert argv[6:] == [f"{node}:~/cyb_jax.tar.gz", *_WHERE, "--worker=all"]
  install, mount = [_remote(a) for a in ssh[:2]], [_remote(a) for a in ssh[2:]]
  for node, argv, script in zip(("cyb-jax-0", "cyb-jax-1"), ssh[:2], install):
    assert argv == _ssh(node, "all", script)
  for node, argv, script in zip(("cyb-jax-0", "cyb-jax-1"), ssh[2:], mount):
    assert argv == _ssh(node, "all", script)
    assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 bkt /mnt/gcs" in script
  assert install[0] == install[1]
  lines = [line.strip() for line in install[0].splitlines()]
  assert "uv python install 3.12" in lines
  assert "uv venv --seed --python 3.12 --python-preference only-managed ~/venv-cyb" in lines
  # The one command that installs the project: the lock's versions, the tpu and gcp extras.
  assert [line for line in lines if "pip install" in line] == [
    "command -v uv >/dev/null || python3 -m pip install --user --quiet uv "  # uv itself
    "|| curl -LsSf https://astral.sh/uv/install.sh | sh",
    "uv pip install --python ~/venv-cyb/bin/python --quiet -c requirements.lock -e '.[train,tpu,gcp]'",
  ]
  assert "jax[tpu]" not in install[0]
  assert "python3 -m venv" not in install[0]  # the image's python3 is 3.10


def test_setup_without_bucket_mounts_nothing(run):
  proc = run("setup.sh", "--dry-run", BUCKET="")
  commands = _ok(proc)
  assert [c[4] for c in commands] == ["scp", "ssh"]
  assert "# BUCKET is not set" in proc.stdout


def test_setup_script_source_has_one_install_path():
  with open(os.path.join(_TPU, "setup.sh"), encoding="utf-8") as f:
    text = f.read()
  assert text.count("-e '.[train,tpu,gcp]'") == 2  # the command and its description
  assert "jax[tpu]" not in text


# ------------------------------------------------------------------------------------------
# train.sh, stop.sh, logs.sh, delete.sh, status.sh.
# ------------------------------------------------------------------------------------------


def test_train_starts_the_same_command_on_every_host(run):
  commands = _ok(
    run(
      "train.sh",
      "--dry-run",
      "lm1b",
      "--config=configs/tfds_lm.py",
      "--config.mesh.fsdp=-1",
      "--config.data.source=text:/d/*.txt",
      "--config.name=a b",
      NUM_SLICES="2",
    )
  )
  assert len(commands) == 2
  scripts = [_remote(c) for c in commands]
  assert commands == [_ssh("cyb-jax-0", "all", scripts[0]), _ssh("cyb-jax-1", "all", scripts[1])]
  assert scripts[0] == scripts[1]
  (line,) = [l for l in scripts[0].splitlines() if l.startswith("nohup ")]
  argv = shlex.split(line.split(" > ")[0])
  assert argv == [
    "nohup",
    "~/venv-cyb/bin/python",
    "launch/train.py",
    "--multihost",
    "--workdir=/mnt/gcs/runs/lm1b",
    "--config=configs/tfds_lm.py",
    "--config.mesh.fsdp=-1",
    "--config.data.source=text:/d/*.txt",
    "--config.name=a b",
  ]
  assert line.endswith("> ~/logs/lm1b.log 2>&1 < /dev/null &")


@pytest.mark.parametrize(
  "args,message",
  [
    (("r1",), "give RUN_NAME and at least --config"),
    (("../r1", "--config=x.py"), "RUN_NAME='../r1' must be"),
    (("--spot", "r1", "--config=x.py"), "unknown option '--spot'"),
  ],
)
def test_train_usage_errors(run, args, message):
  proc = run("train.sh", "--dry-run", *args)
  assert proc.returncode == 2 and message in proc.stderr and "usage: " in proc.stderr


def test_stop_sends_sigterm_on_every_host(run):
  commands = _ok(run("stop.sh", "--dry-run", "lm1b", NUM_SLICES="2"))
  scripts = [_remote(c) for c in commands]
  assert commands == [_ssh("cyb-jax-0", "all", scripts[0]), _ssh("cyb-jax-1", "all", scripts[1])]
  assert "kill -TERM $(cat ~/logs/lm1b.pid)" in scripts[0]


def test_no_script_or_doc_claims_that_multihost_sigterm_hangs():
  """Multi-host SIGTERM is handled (train._Preemption); the old warnings must be gone."""
  hangs = re.compile(r"\bhang(s|ing)?\b", re.I)
  for path in [os.path.join(_TPU, n) for n in _SCRIPTS + ("env.sh",)] + [os.path.join(_REPO, "docs", "tpu_pods.md")]:
    with open(path, encoding="utf-8") as f:
      assert not hangs.search(f.read()), path


def test_logs_follows_one_worker(run):
  assert _ok(run("logs.sh", "--dry-run", "lm1b")) == [_ssh("cyb-jax", "0", "tail -n 100 -f ~/logs/lm1b.log")]
  assert _ok(run("logs.sh", "--dry-run", "lm1b", NUM_SLICES="3", SLICE="2", WORKER="1")) == [
    _ssh("cyb-jax-2", "1", "tail -n 100 -f ~/logs/lm1b.log")
  ]
  proc = run("logs.sh", "--dry-run", "lm1b", SLICE="1")
  assert proc.returncode == 1 and "SLICE=1 must be an integer in [0, NUM_SLICES=1)" in proc.stderr


def test_delete_and_status(run):
  assert _ok(run("delete.sh", "--dry-run")) == [
    ["gcloud", "compute", "tpus", "queued-resources", "delete", "cyb-jax", *_WHERE, "--force", "--quiet"]
  ]
  fmt = "--format=value(name,acceleratorType,state,health)"
  assert _ok(run("status.sh", "--dry-run", NUM_SLICES="2")) == [_DESCRIBE] + [
    ["gcloud", "compute", "tpus", "tpu-vm", "describe", f"cyb-jax-{i}", *_WHERE, fmt] for i in range(2)
  ]


def test_dry_run_from_the_environment(run):
  assert _ok(run("delete.sh", DRY_RUN="1"))[0][4] == "delete"


# ------------------------------------------------------------------------------------------
# compile_check.sh: a Python >= 3.12 venv, one install command.
# ------------------------------------------------------------------------------------------


def test_compile_check_with_a_recent_python(run, tmp_path):
  venv = str(tmp_path / "no-venv-yet")
  commands = _ok(run("compile_check.sh", "--dry-run", "--topology=v5e-16", "--mesh=1,-1,1", PYTHON=sys.executable))
  assert commands == [
    [sys.executable, "-m", "venv", venv],
    [f"{venv}/bin/python", "-m", "pip", "install", "-q", "-c", "requirements.lock", "-e", ".[train,tpu]"],
    [
      "env",
      f"PYTHONPATH={_REPO}",
      f"{venv}/bin/python",
      "benchmarks/tpu_compile.py",
      "--topology=v5e-16",
      "--mesh=1,-1,1",
    ],
  ]


def test_compile_check_with_an_old_python_uses_uv(run, tmp_path):
  old = _executable(tmp_path / "python3.10", "#!/bin/sh\nexit 1\n")
  uv = _executable(tmp_path / "uv", "#!/bin/sh\nexit 1\n")
  commands = _ok(run("compile_check.sh", "--dry-run", PYTHON=old, UV=uv))
  assert commands[0] == [uv, "venv", "--seed", "--python", "3.12", str(tmp_path / "no-venv-yet")]
  proc = run("compile_check.sh", "--dry-run", PYTHON=old, UV=str(tmp_path / "missing-uv"))
  assert proc.returncode == 1 and "needs Python >= 3.12" in proc.stderr


def _libtpu_python() -> tuple[str, str] | None:
  """A Python that loads libtpu and the PYTHONPATH it needs: this one with `make test`'s libtpu
  folder (``CYB_LIBTPU_PATH``), this one if libtpu is installed, or compile_check.sh's
  (``TPU_COMPILE_VENV``); None if there is none."""
  folder = os.environ.get("CYB_LIBTPU_PATH", "")
  if folder and os.path.isdir(os.path.join(folder, "libtpu")):
    return sys.executable, os.pathsep.join([_REPO, folder])
  if importlib.util.find_spec("libtpu") is not None:
    return sys.executable, _REPO
  python = os.path.join(os.environ.get("TPU_COMPILE_VENV", "/tmp/cyb-tpu-venv"), "bin", "python")
  return (python, _REPO) if os.access(python, os.X_OK) else None


def test_tpu_compile_runs_the_trainers_start_up_accounting_against_a_tpu_topology(tmp_path):
  """Compiled for a v5e-8 by libtpu on this CPU: the model FLOPs (a lowered program has no cost
  analysis through libtpu), the peak of the chips' device_kind, the memory; none fails.
  `make test` installs libtpu for it (into .cache/libtpu), so CI runs it."""
  found = _libtpu_python()
  if found is None:
    pytest.skip("no libtpu: `make test` installs it into .cache/libtpu (CYB_LIBTPU_PATH)")
  python, pythonpath = found
  out = tmp_path / "rows.json"
  flags = ["--preset=tiny", "--topology=v5e-8", "--batch_size=8", "--seq_len=16", "--max_pauses=1"]
  flags += ["--vocab_chunk=0", "--remat_policy=none", f"--out={out}"]
  proc = subprocess.run(
    [python, "benchmarks/tpu_compile.py", *flags],
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=pythonpath),
    cwd=_REPO,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "left out of this run" not in proc.stderr and "no peak known" not in proc.stderr
  [row] = json.loads(out.read_text())
  assert row["compiled"] and row["device_kind"] == "TPU v5 lite" and row["chips"] == 8
  assert row["peak_flops_per_device"] == 197e12  # the table's, for chips this host only compiles for
  tiny = model_lib.ModelConfig(vocab_size=256, num_layers=2, d_model=256, num_heads=8, mlp_dim=512, max_pauses=1)
  assert row["flops_per_device"] == flops.train_step_flops(tiny, 8, 16) / 8  # tpu_compile's preset "tiny"
  assert 0 < row["argument"] <= row["peak"] and row["fits"]


# ------------------------------------------------------------------------------------------
# Every script.
# ------------------------------------------------------------------------------------------


def test_every_script_is_tested_here():
  assert sorted(n for n in os.listdir(_TPU) if n.endswith(".sh") and n != "env.sh") == list(_SCRIPTS)


@pytest.mark.parametrize("script", _SCRIPTS)
def test_every_script_has_a_usage_line_and_strict_mode(run, script):
  path = os.path.join(_TPU, script)
  assert os.access(path, os.X_OK)
  check = subprocess.run(["bash", "-n", path], capture_output=True, text=True, check=False)
  assert check.returncode == 0, check.stderr
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert "set -euo pipefail" in text and "--dry-run" in text
  proc = run(script, "--help")
  assert proc.returncode == 0 and proc.stdout.startswith(f"usage: launch/tpu/{script} [--dry-run]")


def test_without_dry_run_the_commands_run_and_project_comes_from_gcloud_config(tmp_path):
  """A real run of delete.sh against a fake gcloud: the same argv, PROJECT from the config."""
  record = tmp_path / "calls"
  fake = tmp_path / "bin"
  fake.mkdir()
  _executable(
    fake / "gcloud",
    textwrap.dedent(f"""\
      #!/bin/sh
      printf '%s\\n' "$*" >> {shlex.quote(str(record))}
      if [ "$1 $2 $3" = "config get-value project" ]; then echo configured-proj; fi
      """),
  )
  env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
  env.update(ZONE="us-west4-a", PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
  proc = subprocess.run(
    [os.path.join(_TPU, "delete.sh")], capture_output=True, text=True, env=env, timeout=60, check=False
  )
  assert proc.returncode == 0, proc.stderr
  assert record.read_text().splitlines() == [
    "config get-value project",
    "compute tpus queued-resources delete cyb-jax --project=configured-proj --zone=us-west4-a --force --quiet",
  ]
