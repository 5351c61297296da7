"""The stages of the accelerator acceptance check (`benchmarks/accel_check.py`), flag-free.

Each stage is a function of explicit arguments that returns a JSON-able record: `run_tests`
(pytest on the GPU-relevant tests), `default_job` (the embedded default training job),
`loop` (the trainer's loop efficiency, by `benchmarks/train_loop.py`), `throughput` (the
table of a ~125M bf16 model at K = 0, 1, 3 with both attention kernels); `run_stage` and
`run_all` run each in a subprocess with its own deadline; `setup` installs what the
project's requirements lack from a wheelhouse (`benchmarks/wheelhouse.py`) and probes the JAX
the stages will run with; `summary_markdown` renders the summary. `accel_check.py` holds the
flags and the thin main.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from absl import app

from benchmarks import wheelhouse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("tests", "default_job", "loop", "throughput")  # the order they run in
INJECTED = ("raises", "hangs")  # --inject_failures: stages that fail on purpose
# Seconds per stage on one H200 (the total stays under 8 minutes; first compiles there take
# about a minute per unscanned 12-layer program) and on --cpu (2 shared cores).
GPU_BUDGETS = dict(tests=150, default_job=70, loop=60, throughput=180, raises=60, hangs=5)
CPU_BUDGETS = dict(tests=90, default_job=120, loop=120, throughput=120, raises=60, hangs=5)
# Defaults of the flags that differ between the modes, (on one GPU, on --cpu): a flag left at
# None takes its mode's.
MODE_DEFAULTS: Mapping[str, tuple[Any, Any]] = {
  "total_s": (470, 470),
  "test_paths": (
    ["tests/test_attention_kernels.py", "tests/test_model.py", "tests/test_mfu.py"],
    ["tests/test_mfu.py"],
  ),
  "test_workers": (4, 0),
  "job_steps": (0, 40),
  "loop_args": (["--loop_length=1024", "--loop_batch=16", "--loop_steps=20", "--loop_rounds=1"], ["--quick"]),
  "tp_layers": (12, 2),
  "tp_d_model": (768, 64),
  "tp_heads": (12, 2),
  "tp_mlp_dim": (2048, 128),
  "tp_vocab": (32768, 256),
  "tp_length": (1024, 64),
  "tp_batch": (16, 2),
  "tp_pauses": (["0", "1", "3"], ["0", "1"]),
  "tp_dtype": ("bfloat16", "float32"),
  "tp_steps": (5, 2),
  "tp_repeats": (2, 1),
  "compile_threads": (2, 1),
  "peak_size": (8192, 512),
}
THROUGHPUT_COLUMNS = (
  "impl",
  "K",
  "ms/step",
  "tokens/s",
  "MFU (measured peak)",
  "MFU (advertised peak)",
  "r(K)",
  "compile s",
  "peak MiB",
  "status",
)
_MIB = 2.0**20


# --------------------------------------------------------------------------------------
# Running commands and stages with a time limit.
# --------------------------------------------------------------------------------------


def _kill_group(proc: subprocess.Popen) -> None:
  """SIGTERM, then SIGKILL after 5 s, to the process group ``proc`` leads (it was started in a
  new session)."""
  for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
    try:
      os.killpg(proc.pid, sig)
    except ProcessLookupError:
      return
    try:
      proc.wait(timeout=wait)
      return
    except subprocess.TimeoutExpired:
      continue


@dataclasses.dataclass(frozen=True)
class Finished:
  """How a command ended: exit status (None when it was killed at its limit), wall seconds."""

  rc: int | None
  seconds: float
  timed_out: bool


def run_command(
  argv: Sequence[str],
  log_path: str,
  timeout_s: float,
  *,
  env: Mapping[str, str] | None = None,
  on_output: Callable[[str], None] | None = None,
) -> Finished:
  """Runs ``argv`` in the repository root, its stdout and stderr appended to ``log_path`` as
  they come (and passed to ``on_output``); kills its whole process group after ``timeout_s``."""
  start = time.perf_counter()
  with open(log_path, "ab") as log:
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
      list(argv),
      cwd=ROOT,
      env=dict(env) if env is not None else None,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      stdin=subprocess.DEVNULL,
      start_new_session=True,
    )

    def pump() -> None:
      for chunk in iter(lambda: proc.stdout.read1(65536), b""):
        log.write(chunk)
        log.flush()
        if on_output is not None:
          on_output(chunk.decode(errors="replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    _CHILDREN.add(proc)
    try:
      rc, timed_out = proc.wait(timeout=max(timeout_s, 0.0)), False
    except subprocess.TimeoutExpired:
      _kill_group(proc)
      rc, timed_out = None, True
    finally:
      _CHILDREN.discard(proc)
    reader.join(timeout=5.0)
  return Finished(rc=rc, seconds=time.perf_counter() - start, timed_out=timed_out)


_CHILDREN: set[subprocess.Popen] = set()  # a worker's running commands, killed on SIGTERM


def terminate_children(signum, frame) -> None:
  for proc in list(_CHILDREN):
    _kill_group(proc)
  os._exit(128 + signum)


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, record: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, default=str)
  os.replace(tmp, path)


def _last_line(path: str, pattern: str = r"\S") -> str:
  """The last line of a log matching ``pattern`` (a traceback's last line, say), or ''."""
  try:
    with open(path, errors="replace") as f:
      lines = re.split(r"[\r\n]+", f.read()[-20000:])
  except OSError:
    return ""
  return next((line.strip() for line in reversed(lines) if re.search(pattern, line)), "")


def run_stage(name: str, argv: Sequence[str], budget_s: float, out: str, scratch: str, env=None) -> dict:
  """Runs one stage's worker ``argv`` with ``budget_s`` seconds; its record.

  The worker writes ``<scratch>/<name>.json`` (as it goes, where a stage can): the record
  read back here, whatever became of the worker. Status: the worker's own (``ok``,
  ``partial``, ``failed``), ``timeout`` when it ran out of time, ``error`` when it ended
  otherwise without a verdict (an exception: the log's last line says which).
  """
  log, path = os.path.join(out, f"{name}.log"), os.path.join(scratch, f"{name}.json")
  if os.path.exists(path):
    os.remove(path)
  done = run_command(argv, log, budget_s, env=env)
  record = _read_json(path) or {}
  record.update(name=name, seconds=round(done.seconds, 1), budget_s=round(budget_s), log=os.path.basename(log))
  if done.timed_out:
    record["status"] = "timeout"
    record.setdefault("error", f"ran out of its {budget_s:.0f} s")
  elif done.rc != 0 and record.get("status") not in ("failed", "partial", "error"):
    record["status"] = "error"
    record["error"] = record.get("error") or _last_line(log, r"Error|Exception|error") or f"exit status {done.rc}"
  elif record.get("status") not in ("ok", "partial", "failed", "error"):
    record.update(status="error", error=f"exit status {done.rc} and no verdict")
  return record


# --------------------------------------------------------------------------------------
# Setup: the wheelhouse, and the JAX the stages run with.
# --------------------------------------------------------------------------------------

# Modules the probe imports after JAX: what the stages need that a device image may lack.
PROBE_IMPORTS = (
  "cyb_jax.model.attention.kernels",
  "cyb_jax.training.train",
  "tokamax",
  "ml_collections",
  "tensorflow_datasets",
  "tensorboardX",
)
_PROBE_MARK = "ACCEL_PROBE "
# Run as `python -c _PROBE MODULE...`: one line of JSON after _PROBE_MARK (never raises).
_PROBE = f"""
import importlib, importlib.metadata, json, os, sys, time
r = dict(python=sys.version.split()[0], executable=sys.executable, prefix=sys.prefix, imports={{}})
try:
  import jax
  r.update(jax=jax.__version__, jax_path=os.path.dirname(jax.__file__))
  import jaxlib
  r["jaxlib"] = getattr(jaxlib, "__version__", None) or importlib.metadata.version("jaxlib")
  r["plugins"] = sorted({{d.metadata["Name"] + " " + d.version for d in importlib.metadata.distributions()
    if (d.metadata["Name"] or "").lower().replace("_", "-").startswith(("jax-cuda", "jax-rocm", "libtpu"))}})
  devices = jax.devices()
  r.update(backend=jax.default_backend(), device_count=len(devices), device_kind=devices[0].device_kind)
except Exception as e:
  r["error"] = (type(e).__name__ + ": " + str(e))[:500]
for name in sys.argv[1:]:
  start = time.perf_counter()
  try:
    importlib.import_module(name)
    r["imports"][name] = "ok"
    if name.startswith("cyb_jax"):
      r["cyb_jax_path"] = os.path.dirname(sys.modules["cyb_jax"].__file__)
  except BaseException as e:
    r["imports"][name] = (type(e).__name__ + ": " + str(e))[:300]
  print(name, "imported in", round(time.perf_counter() - start, 1), "s:", r["imports"][name], flush=True)
print({_PROBE_MARK!r} + json.dumps(r), flush=True)
"""


def probe(imports: Sequence[str], timeout_s: float, log_path: str, env=None) -> dict:
  """The JAX and jaxlib that ``sys.executable`` imports in ``env``, its plugins, backend and
  devices, and whether ``imports`` import; ``error`` where the probe failed."""
  lines: list[str] = []
  done = run_command([sys.executable, "-c", _PROBE, *imports], log_path, timeout_s, env=env, on_output=lines.append)
  text = "".join(lines)
  found = [line[len(_PROBE_MARK) :] for line in text.splitlines() if line.startswith(_PROBE_MARK)]
  try:
    record = json.loads(found[-1]) if found else {}
  except ValueError:
    record = {}
  if not found:
    why = "ran out of time" if done.timed_out else f"exit status {done.rc}"
    record["error"] = f"the probe {why}: {_last_line(log_path, r'Error|Exception') or 'no record'}"[:500]
  record["probe_s"] = round(done.seconds, 1)
  return record


def jax_origin(environment: Mapping[str, Any]) -> str:
  """Whether the JAX the check ran with is the lock's, in words."""
  lock = environment.get("lock") or {}
  pins = f"jax {lock.get('jax') or '?'}, jaxlib {lock.get('jaxlib') or '?'}"
  if not environment.get("jax"):
    return f"no JAX imported (the lock pins {pins})"
  if environment.get("jax_is_lock"):
    return f"the lock's ({pins})"
  where = environment.get("prefix") or "?"
  return f"not the lock's: this Python's own ({where}); the lock pins {pins}"


def setup(
  wheelhouse_dir: str | None,
  install_target: str | None,
  imports: Sequence[str],
  probe_timeout_s: float,
  log_path: str,
  env=None,
) -> dict:
  """Before the stages: installs from ``wheelhouse_dir`` (if any) what the requirements lack
  (:func:`benchmarks.wheelhouse.prepare`), then probes the JAX the stages will run with.

  The record: the probe's fields (``jax``, ``jaxlib``, ``plugins``, ``backend``,
  ``device_kind``, ``device_count``, ``imports``, ``prefix``, ...), ``lock`` (the lock's jax and
  jaxlib pins), ``jax_is_lock``, ``jax_origin`` (in words), ``wheelhouse`` (what was
  installed), ``seconds``. Never raises: bookkeeping does not stop the check.
  """
  start = time.perf_counter()
  record: dict[str, Any] = {}
  try:
    if wheelhouse_dir:
      print(f"[accel_check] setup: installing what is missing from {wheelhouse_dir} ...", flush=True)
      record["wheelhouse"] = wheelhouse.prepare(wheelhouse_dir, target=install_target or None, log_path=log_path)
      print(f"[accel_check] setup: {wheelhouse.describe(record['wheelhouse'])}", flush=True)
    record.update(probe(imports, probe_timeout_s, log_path, env=env))
    pins = wheelhouse.lock_pins()
    record["lock"] = lock = dict(jax=pins.get("jax"), jaxlib=pins.get("jaxlib"))
    ran = dict(jax=record.get("jax"), jaxlib=record.get("jaxlib"))
    record["jax_is_lock"] = bool(ran["jax"]) and ran == lock
    record["jax_origin"] = jax_origin(record)
  except Exception as e:  # the stages still run
    traceback.print_exc()
    record["error"] = f"setup failed: {type(e).__name__}: {e}"[:500]
  record["seconds"] = round(time.perf_counter() - start, 1)
  print(f"[accel_check] setup: {describe_environment(record)}", flush=True)
  return record


def describe_environment(e: Mapping[str, Any]) -> str:
  """One line on the JAX of a ``setup`` record: versions, plugins, backend, devices, origin."""
  if not e.get("jax"):
    return f"no JAX: {e.get('error') or 'not probed'}"
  text = f"jax {e['jax']}, jaxlib {e.get('jaxlib') or '?'}"
  text += "".join(f", {p}" for p in e.get("plugins") or ())
  if e.get("backend"):
    text += f"; backend {e['backend']}, {e.get('device_count', '?')} x {e.get('device_kind', '?')}"
  text += f"; Python {e.get('python', '?')}; {e.get('jax_origin') or jax_origin(e)}"
  return text + (f"; {e['error']}" if e.get("error") else "")


# --------------------------------------------------------------------------------------
# Stage 1: tests.
# --------------------------------------------------------------------------------------

_OUTCOME = "PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS"
_RESULT_AFTER = re.compile(rf"^(\S+::\S+)\s+({_OUTCOME})\b")  # pytest -v
_RESULT_BEFORE = re.compile(rf"\b({_OUTCOME})\s+(\S+::\S+|\S+\.py)(?:\s+-\s+(.*))?$")  # -n N -v, -r lines
_TOTALS = re.compile(r"^=+ (.*\d+ (?:passed|failed|skipped|error|errors|deselected).*) in [\d.]+s")


class PytestLog:
  """Test outcomes read from pytest ``-v -rfE`` output as it streams (xdist or not)."""

  def __init__(self):
    self.outcomes: dict[str, str] = {}
    self.reasons: dict[str, str] = {}
    self.running: str | None = None
    self.totals: list[str] = []
    self._partial = ""

  def feed(self, text: str) -> None:
    lines = (self._partial + text).split("\n")
    self._partial = lines.pop()
    for line in lines:
      self._line(line.rstrip("\r"))
    m = re.match(r"^(\S+::\S+)\s*$", self._partial)  # a -v line whose test is still running
    self.running = m.group(1) if m else self.running

  def _line(self, line: str) -> None:
    line = line.strip()
    if m := _RESULT_AFTER.match(line):
      self._record(m.group(1), m.group(2))
    elif m := _RESULT_BEFORE.search(line):
      self._record(m.group(2), m.group(1), m.group(3))
    elif m := _TOTALS.match(line):
      self.totals.append(m.group(1))

  def _record(self, test: str, outcome: str, reason: str | None = None) -> None:
    if self.outcomes.get(test) not in ("FAILED", "ERROR"):  # a teardown error after a pass
      self.outcomes[test] = outcome
    if reason:
      self.reasons[test] = reason.strip()
    self.running = None

  def counts(self) -> dict[str, int]:
    counts = dict(passed=0, failed=0, skipped=0)
    for outcome in self.outcomes.values():
      key = {"PASSED": "passed", "XPASS": "passed", "SKIPPED": "skipped", "XFAIL": "skipped"}.get(outcome, "failed")
      counts[key] += 1
    return counts

  def failed(self) -> list[str]:
    return [t for t, o in self.outcomes.items() if o in ("FAILED", "ERROR")]


def marked_test_files(marker: str, exclude: Sequence[str] = ()) -> list[str]:
  """Test files that use ``pytest.mark.<marker>`` (read as text: nothing is imported)."""
  found = []
  for path in sorted(glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)):
    rel = os.path.relpath(path, ROOT)
    with open(path, errors="replace") as f:
      if rel not in exclude and re.search(rf"mark\.{re.escape(marker)}\b", f.read()):
        found.append(rel)
  return found


def run_tests(
  paths: Sequence[str], marker: str, workers: int, per_test_s: int, deadline: float, log_path: str, env=None
) -> dict:
  """Stage ``tests``: pytest on ``paths``, then on the tests marked ``marker`` elsewhere.

  Each pytest runs until ``deadline`` (then it is killed and the outcomes so far count);
  ``workers`` > 0 uses pytest-xdist (each process then allocates GPU memory as it goes),
  ``per_test_s`` limits each test where pytest-timeout is installed.
  """
  selections = [list(paths)]
  files = {p.split("::")[0] for p in paths}
  if marker and (marked := marked_test_files(marker, exclude=sorted(files))):
    selections.append(["-m", marker, *marked])
  parsed, runs, timed_out = PytestLog(), [], False
  env = dict(env or os.environ)
  if workers and importlib.util.find_spec("xdist") is None:
    workers = 0
  if workers:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  for selection in selections:
    argv = [sys.executable, "-m", "pytest", "-v", "-rfE", "--tb=short", "-p", "no:cacheprovider"]
    argv += ["-n", str(workers)] if workers else []
    argv += [f"--timeout={per_test_s}"] if importlib.util.find_spec("pytest_timeout") else []
    done = run_command(argv + selection, log_path, deadline - time.perf_counter(), env=env, on_output=parsed.feed)
    runs.append(dict(selection=selection, rc=done.rc, seconds=round(done.seconds, 1), timed_out=done.timed_out))
    if done.timed_out:
      timed_out = True
      break
  counts = parsed.counts()
  status = "partial" if timed_out else ("ok" if counts["failed"] == 0 and counts["passed"] > 0 else "failed")
  if not timed_out and any(r["rc"] not in (0, 1) for r in runs) and counts["failed"] == 0:
    status = "failed"  # collection error, no tests, internal error
  return dict(
    status=status,
    counts=counts,
    failed=parsed.failed(),
    reasons=parsed.reasons,
    running=parsed.running if timed_out else None,
    totals=parsed.totals,
    runs=runs,
    timed_out=timed_out,
    workers=workers,
  )


def describe_tests(r: Mapping[str, Any]) -> str:
  c = r.get("counts")
  if not c:
    return r.get("error", "")
  text = f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
  if r.get("timed_out") or r.get("status") == "timeout":
    text += "; cut short" + (f" in {r['running']}" if r.get("running") else "")
  if r.get("failed"):
    text += "; failed: " + ", ".join(t.split("::")[-1] for t in r["failed"])
  return text


# --------------------------------------------------------------------------------------
# Stage 2: the default job.
# --------------------------------------------------------------------------------------

_BAR = re.compile(r"\|\s*(\d+)/(\d+) \[")  # tqdm: " 1/800 ["


def job_step_flags(steps: int) -> list[str]:
  """Flags that shorten the default job to ``steps`` (0: none) with the same proportions."""
  if steps <= 0:
    return []
  return [
    f"--config.num_train_steps={steps}",
    f"--config.log_every_steps={max(1, steps // 4)}",
    f"--config.eval_every_steps={max(1, steps // 2)}",
    f"--config.checkpoint_every_steps={steps}",
    f"--config.optimizer.warmup_steps={max(1, steps // 8)}",
    f"--config.loss.pause_warmup_steps={steps // 2}",
  ]


def _metrics_rows(workdir: str) -> list[dict]:
  """The rows of ``<workdir>/metrics.jsonl`` (a torn last line left out)."""
  rows = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except ValueError:
          pass
  except OSError:
    pass
  return rows


def default_job(extra_flags: Sequence[str], deadline: float, log_path: str, env=None) -> dict:
  """Stage ``default_job``: ``launch/train.py --workdir=<fresh temp dir>`` (cache off).

  Measured: wall seconds from launch to the progress bar's first step (start-up, data,
  compile and one step) and in all; from its ``metrics.jsonl``: the last ``train/tokens_per_sec``,
  the last ``eval/nll_mix``, whether ``train/mfu`` was logged. Its ``metrics.jsonl`` is
  appended to the stage's log.
  """
  start, first = time.perf_counter(), {}

  def watch(text: str) -> None:
    if "step" not in first and any(int(m.group(1)) >= 1 for m in _BAR.finditer(text)):
      first["step"] = time.perf_counter() - start

  with tempfile.TemporaryDirectory(prefix="accel_job_") as workdir:
    argv = [sys.executable, "launch/train.py", f"--workdir={workdir}", "--compilation_cache=", *extra_flags]
    done = run_command(argv, log_path, deadline - time.perf_counter(), env=env, on_output=watch)
    rows = _metrics_rows(workdir)
    with open(log_path, "a") as log:
      log.write("\n# metrics.jsonl\n" + "".join(json.dumps(r) + "\n" for r in rows))
  train_rows = [r for r in rows if "train/tokens_per_sec" in r]
  eval_rows = [r for r in rows if "eval/nll_mix" in r]
  mfus = [r["train/mfu"] for r in train_rows if "train/mfu" in r]
  record = dict(
    argv=argv[1:],
    rc=done.rc,
    seconds_total=round(done.seconds, 1),
    first_step_s=round(first["step"], 1) if "step" in first else None,
    steps=max((r.get("step", 0) for r in rows), default=0),
    tokens_per_s=train_rows[-1]["train/tokens_per_sec"] if train_rows else None,
    eval_loss=eval_rows[-1]["eval/nll_mix"] if eval_rows else None,
    mfu_logged=bool(mfus),
    mfu=mfus[-1] if mfus else None,
  )
  if done.timed_out:
    record.update(status="partial", error="the job ran out of time")
  elif done.rc != 0:
    record.update(status="failed", error=_last_line(log_path, r"Error|Exception") or f"exit status {done.rc}")
  else:
    record["status"] = "ok"
  return record


def describe_default_job(r: Mapping[str, Any]) -> str:
  if "steps" not in r:
    return r.get("error", "")
  parts = []
  if r.get("first_step_s") is not None:
    parts.append(f"first step {r['first_step_s']:.1f} s after launch")
  parts.append(f"{r['steps']} steps in {r['seconds_total']:.0f} s")
  if r.get("tokens_per_s"):
    parts.append(f"{r['tokens_per_s']:,.0f} tokens/s")
  if r.get("eval_loss") is not None:
    parts.append(f"eval nll_mix {r['eval_loss']:.3f}")
  parts.append(f"train/mfu {r['mfu']:.1%}" if r.get("mfu_logged") else "no train/mfu logged")
  if r.get("error"):
    parts.append(r["error"])
  return ", ".join(parts)


# --------------------------------------------------------------------------------------
# Stage 3: the trainer's loop efficiency.
# --------------------------------------------------------------------------------------


def loop(loop_args: Sequence[str], deadline: float, log_path: str, scratch: str, env=None) -> dict:
  """Stage ``loop``: ``benchmarks/train_loop.py`` table 1 alone (its other tables skipped).

  Loop efficiency = the bare compiled step's time / the trainer's time per step over its log
  interval of steps S+1..2S (the first S warm up), the same model and batch shape; see that
  script's docstring.
  """
  raw = os.path.join(scratch, "loop_train_loop.json")
  argv = [
    sys.executable,
    "benchmarks/train_loop.py",
    "--skip=steps,memory,profile,growth",
    f"--out={raw}",
    *loop_args,
  ]
  done = run_command(argv, log_path, deadline - time.perf_counter(), env=env)
  measured = (_read_json(raw) or {}).get("loop")
  if done.timed_out or measured is None:
    error = "train_loop.py ran out of time" if done.timed_out else _last_line(log_path, r"Error|Exception")
    return dict(status="failed", argv=argv[1:], rc=done.rc, error=error or f"exit status {done.rc}")
  return dict(status="ok", argv=argv[1:], **measured)


def describe_loop(r: Mapping[str, Any]) -> str:
  if "efficiency" not in r:
    return r.get("error", "")
  return (
    f"efficiency {r['efficiency']:.3f} (bare {1e3 * min(r['bare']):.1f} ms, trainer "
    f"{1e3 * min(r['trainer']):.1f} ms per step; {r['num_params'] / 1e6:.1f}M params, "
    f"B {r['batch']}, N {r['length']}, K {r['pauses']}, {r['steps']} steps)"
  )


# --------------------------------------------------------------------------------------
# Stage 4: throughput.
# --------------------------------------------------------------------------------------


def throughput_config(sizes: Mapping[str, Any], pauses: int, impl: str):
  """The default run config with the throughput model: ``ce`` at K = 0, ``cyb_ap`` above (as
  benchmarks/train_loop.py's r(K)), no pause warm-up, synthetic data of ``[B, N]``."""
  from cyb_jax.configs import default as default_config  # pylint: disable=g-import-not-at-top

  c = default_config.get_config()
  c.model.update(
    num_layers=sizes["layers"],
    d_model=sizes["d_model"],
    num_heads=sizes["heads"],
    mlp_dim=sizes["mlp_dim"],
    vocab_size=sizes["vocab"],
    dtype=sizes["dtype"],
    scan_layers=sizes["scan_layers"],
    attention_impl=impl,
    max_pauses=pauses,
  )
  c.loss.name = "ce" if pauses == 0 else "cyb_ap"
  c.loss.pause_warmup_steps = 0
  c.data.update(seq_len=sizes["length"], batch_size=sizes["batch"], eval_batches=1)
  c.update(progress_bar=False, write_report=False)
  return c


def throughput(
  sizes: Mapping[str, Any],
  pauses: Sequence[int],
  impls: Sequence[str],
  *,
  steps: int,
  repeats: int,
  compile_threads: int,
  peak_size: int,
  deadline: float,
  save: Callable[[dict], None],
  workdir: str,
) -> dict:
  """Stage ``throughput``: the trainer's train step for every (K, impl), on one device.

  Measured, in this order, each phase stopping at ``deadline`` (a program it leaves out is a
  ``skipped`` row, and ``save`` is called with the record after each phase):

  1. the matmul peak: the fastest ``[P, P] @ [P, P]`` of a 1 s loop (:func:`cyb_jax.training.mfu.
     measured_matmul_peak`), in ``sizes["dtype"]`` (bf16 on accelerators);
  2. each program traced and lowered here (against the abstract state: nothing runs), then
     compiled by ``compile_threads`` threads at once, as are the state initialisers; compile
     seconds = trace + lower + XLA compile, the last under that contention;
  3. model FLOPs per step of each K: :func:`cyb_jax.training.programs.model_flops_per_device` (the
     trainer's ``train/mfu`` count); if it fails, the ``dot_general`` FLOPs of the K's
     ``xla`` program's jaxpr (:func:`cyb_jax.model.flops.traced_matmul_flops`);
  4. step time: one untimed step, then ``repeats`` round-robin rounds of ``steps``
     back-to-back steps per program, the fastest round's mean; tokens/s = B N / step time;
     MFU = FLOPs / (step time x peak); r(K) = t(K) / ((K + 1) t(0)) per impl; peak memory
     is XLA's buffer assignment of the compiled step (:func:`cyb_jax.training.mfu.compiled_bytes`).
  """
  import concurrent.futures  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from cyb_jax import sharding  # pylint: disable=g-import-not-at-top
  from cyb_jax.data.packing import BATCH_KEYS  # pylint: disable=g-import-not-at-top
  from cyb_jax.model import flops as model_flops  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import components  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import mfu  # pylint: disable=g-import-not-at-top
  from cyb_jax.training import programs as programs_lib  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  record: dict[str, Any] = dict(
    device=device.device_kind,
    platform=device.platform,
    device_count=jax.device_count(),
    jax=jax.__version__,
    sizes=dict(sizes),
    steps=steps,
    repeats=repeats,
    compile_threads=compile_threads,
    rows=[],
    notes=[],
  )
  save(record)
  left = lambda: deadline - time.perf_counter()
  record.update(peak_size=peak_size, advertised_peak=mfu.table_peak(device.device_kind), measured_peak=None)
  try:
    record["measured_peak"] = mfu.measured_matmul_peak(peak_size, sizes["dtype"])
    print(f"{device.device_kind}: {sizes['dtype']} matmul peak {record['measured_peak']:.3g} FLOP/s", flush=True)
  except Exception as e:  # the MFU column is left out, nothing else
    record["notes"].append(f"measuring the matmul peak failed: {type(e).__name__}: {e}"[:300])
  save(record)

  keys = [(k, impl) for k in pauses for impl in impls]  # the largest K last: skipped first
  rows = {key: dict(impl=key[1], pauses=key[0], status="skipped") for key in keys}
  record["rows"] = list(rows.values())
  built, rng = {}, jax.random.key(0)
  config0 = throughput_config(sizes, pauses[0], impls[0])
  data = components.make_run_data(config0, workdir)
  mesh = sharding.make_mesh(config0.mesh, devices=jax.devices()[:1])
  rules = sharding.rules_from_config(config0.logical_axis_rules)
  local = next(data.train)
  batch = sharding.global_batch({k: local[k] for k in BATCH_KEYS}, mesh)
  pool = concurrent.futures.ThreadPoolExecutor(max(compile_threads, 1))

  def compile_timed(lowered):
    start = time.perf_counter()
    return lowered.compile(), time.perf_counter() - start

  lower_s = 0.0  # of the last program: a program needs about that again and more to compile
  for key in keys:  # phase 2: trace and lower here, compile in the pool
    row = rows[key]
    if left() < 3.0 * len(built) + 2.0 * lower_s + 2.0:
      row["error"] = "no time left to build it"
      continue
    try:
      start = time.perf_counter()
      config = throughput_config(sizes, *key)
      model_cfg = components.model_config(config, data.info.vocab_size)
      progs = programs_lib.make_programs(config, model_cfg, mesh, rules)
      with sharding.mesh_context(mesh, rules):
        abstract = progs.abstract_state(rng)
        traced = progs.train_step.trace(abstract, batch)
        lowered = traced.lower()
        init_lowered = progs.init.lower(rng)
      row["lower_s"] = lower_s = time.perf_counter() - start
      row["num_params"] = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
      jaxpr_flops = mfu.or_warn("the traced step's matmul FLOPs", model_flops.traced_matmul_flops, traced.jaxpr)
      if jaxpr_flops is not None:
        row["jaxpr_flops"] = jaxpr_flops
      built[key] = dict(
        config=config,
        model_cfg=model_cfg,
        progs=progs,
        step=pool.submit(compile_timed, lowered),
        init=pool.submit(compile_timed, init_lowered),
      )
      row["status"] = "compiling"
      print(f"K={key[0]} {key[1]}: traced and lowered in {row['lower_s']:.1f} s", flush=True)
    except Exception as e:  # a row that cannot be built (e.g. no kernel for its shapes)
      traceback.print_exc()
      row.update(status="failed", error=f"{type(e).__name__}: {e}"[:300])
  save(record)

  flops = {}  # phase 3, while the pool compiles
  for k in pauses:
    key = next(((k, i) for i in ("xla", *impls) if (k, i) in built), None)
    if key is None or left() < 1:
      continue
    b = built[key]
    try:
      flops[k] = (
        programs_lib.model_flops_per_device(b["model_cfg"], batch),
        "model_flops_per_device",
      )
    except Exception as e:  # MFU accounting must never stop the check
      record["notes"].append(f"model_flops_per_device failed at K={k}: {type(e).__name__}: {e}"[:300])
      source = (k, "xla") if (k, "xla") in rows and "jaxpr_flops" in rows[(k, "xla")] else key
      if "jaxpr_flops" in rows[source]:  # else no MFU at this K
        flops[k] = (rows[source]["jaxpr_flops"], f"dot_general FLOPs of the {source[1]} program's jaxpr")

  runners, reserve = {}, 3.0 * len(built)  # seconds kept to time the programs
  for key, b in built.items():
    row = rows[key]
    try:
      concurrent.futures.wait([b["step"], b["init"]], timeout=max(left() - reserve, 0))
      if not (b["step"].done() and b["init"].done()):
        row.update(status="skipped", error="its compile did not finish in time")
        continue
      compiled, seconds = b["step"].result()
      init, _ = b["init"].result()
      row.update(compile_s=round(row["lower_s"] + seconds, 1), status="compiled")
      print(f"K={key[0]} {key[1]}: compiled in {seconds:.1f} s", flush=True)
      try:
        row["peak_bytes"] = mfu.compiled_bytes(compiled)["peak"]
      except Exception as e:
        record["notes"].append(f"memory_analysis failed: {type(e).__name__}: {e}"[:200])
      runners[key] = [compiled, init(rng)]
    except Exception as e:
      traceback.print_exc()
      row.update(status="failed", error=f"{type(e).__name__}: {e}"[:300])
  pool.shutdown(wait=False, cancel_futures=True)
  save(record)

  def run(key):
    compiled, state = runners[key]
    state, metrics = compiled(state, batch)
    runners[key][1] = state
    return metrics

  def seconds_per_step(key) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      metrics = run(key)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps

  best = {}
  for key in list(runners):  # phase 4: one untimed step each
    if left() < 2:
      break
    try:
      jax.block_until_ready(run(key))
      best[key] = math.inf
    except Exception as e:  # e.g. out of memory: this row fails, the others go on
      traceback.print_exc()
      rows[key].update(status="failed", error=f"{type(e).__name__}: {e}"[:300])
  for r in range(repeats):
    order = list(best)
    for key in order[r % max(len(order), 1) :] + order[: r % max(len(order), 1)]:
      if left() < 1 or key not in best:
        continue
      try:
        best[key] = min(best[key], seconds_per_step(key))
      except Exception as e:
        traceback.print_exc()
        rows[key].update(status="failed", error=f"{type(e).__name__}: {e}"[:300])
        del best[key]
  tokens = sizes["batch"] * sizes["length"]
  for key, t in best.items():
    if math.isfinite(t):
      row = rows[key]
      row.update(status="ok", step_s=t, tokens_per_s=tokens / t)
      print(f"K={key[0]} {key[1]}: {1e3 * t:.1f} ms per step", flush=True)
      if key[0] in flops:
        f, source = flops[key[0]]
        row.update(flops=f, flops_source=source)
        for name, peak in (("mfu_measured", record["measured_peak"]), ("mfu_advertised", record["advertised_peak"])):
          if peak:
            row[name] = mfu.mfu(f, 1, t, peak)
  for (k, impl), row in rows.items():
    base = rows.get((0, impl), {}).get("step_s")
    if "step_s" in row and base:
      row["r"] = row["step_s"] / ((k + 1) * base)
    if row["status"] == "compiled":
      row.update(status="skipped", error="compiled, but no time was left to time it")
  record["status"] = "ok" if all(r["status"] == "ok" for r in rows.values()) else "partial"
  if not any(r["status"] == "ok" for r in rows.values()):
    record["status"] = "failed"
  return record


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
  return "-" if value is None else format(value * scale, spec)


def throughput_table(r: Mapping[str, Any]) -> str:
  """The markdown table of a (possibly partial) throughput record."""
  if not r.get("rows"):
    return ""
  s = r["sizes"]
  params = next((row["num_params"] for row in r["rows"] if "num_params" in row), None)
  measured, advertised = r.get("measured_peak"), r.get("advertised_peak")
  title = (
    f"### Throughput: train step of the {_fmt(params, '.1f', 1e-6)}M-parameter model ({s['layers']} x {s['d_model']}, "
    f"{s['heads']} heads, SwiGLU {s['mlp_dim']}, V {s['vocab']}), {s['dtype']}, B {s['batch']}, "
    f"N {s['length']}, scan_layers={s['scan_layers']}; {r.get('device', '?')}\n\n"
    f"Fastest of {r['repeats']} rounds of {r['steps']} back-to-back steps; peaks: {s['dtype']} "
    f"{r.get('peak_size', '?')}^3 matmul measured {_fmt(measured, '.1f', 1e-12)} TFLOP/s, advertised "
    f"{_fmt(advertised, '.0f', 1e-12)} TFLOP/s ('-': none); r(K) = t(K) / ((K+1) t(0)) per impl; compile s = "
    f"trace + lower + XLA compile ({r['compile_threads']} at once); peak = XLA's buffer assignment\n\n"
  )
  lines = ["| " + " | ".join(THROUGHPUT_COLUMNS) + " |", "|" + "|".join("---" for _ in THROUGHPUT_COLUMNS) + "|"]
  for row in r["rows"]:
    status = row["status"] + (f": {row['error']}" if row.get("error") else "")
    cells = [
      row["impl"],
      str(row["pauses"]),
      _fmt(row.get("step_s"), ".1f", 1e3),
      _fmt(row.get("tokens_per_s"), ",.0f"),
      _fmt(row.get("mfu_measured"), ".1%"),
      _fmt(row.get("mfu_advertised"), ".1%"),
      _fmt(row.get("r"), ".3f"),
      _fmt(row.get("compile_s"), ".1f"),
      _fmt(row.get("peak_bytes"), ",.0f", 1 / _MIB),
      status.replace("|", "/"),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  sources = sorted({row["flops_source"] for row in r["rows"] if "flops_source" in row})
  notes = [f"model FLOPs: {', '.join(sources)}"] if sources else []
  return title + "\n".join(lines) + "".join(f"\n\n{n}" for n in notes + list(r.get("notes", [])))


def describe_throughput(r: Mapping[str, Any]) -> str:
  rows = r.get("rows") or []
  if not rows:
    return r.get("error", "")
  ok = [row for row in rows if row["status"] == "ok"]
  text = f"{len(ok)}/{len(rows)} programs timed (table below)"
  if ok:
    best = max(ok, key=lambda row: row["tokens_per_s"])
    text += f"; fastest {best['impl']} K={best['pauses']}: {best['tokens_per_s']:,.0f} tokens/s"
  return text + (f"; {r['error']}" if r.get("error") else "")


# --------------------------------------------------------------------------------------
# The summary.
# --------------------------------------------------------------------------------------

DESCRIBE: Mapping[str, Callable[[Mapping[str, Any]], str]] = dict(
  tests=describe_tests, default_job=describe_default_job, loop=describe_loop, throughput=describe_throughput
)


def summary_markdown(summary: Mapping[str, Any]) -> str:
  """The one summary: a row per stage, then the throughput table and the failing tests."""
  lines = [
    f"# Accelerator check ({summary['mode']}): {summary.get('device') or 'device unknown'}, "
    f"jax {summary.get('jax') or '?'}",
    "",
    f"`{summary['command']}`: {summary['seconds']:.0f} s of {summary['total_s']} s; files in {summary['out']}",
    "",
  ]
  if (environment := summary.get("environment")) is not None:
    lines += [f"- JAX: {describe_environment(environment)}"]
    if "wheelhouse" in environment:
      lines += [f"- Wheelhouse: {wheelhouse.describe(environment['wheelhouse'])}"]
    failed = {m: why for m, why in (environment.get("imports") or {}).items() if why != "ok"}
    lines += [f"- Import failed: `{m}`: {why}" for m, why in failed.items()]
    lines += [""]
  lines += [
    "| stage | status | seconds | budget s | result |",
    "|---|---|---|---|---|",
  ]
  for s in summary["stages"]:
    describe = DESCRIBE.get(s["name"], lambda r: r.get("error", ""))
    text = describe(s)
    if s["status"] in ("error", "timeout") and s.get("error") and s["error"] not in text:
      text = f"{text}; {s['error']}" if text else s["error"]
    text = text.replace("|", "/").replace("\n", " ")
    lines.append(f"| {s['name']} | {s['status']} | {s.get('seconds', 0):.0f} | {s.get('budget_s', 0)} | {text} |")
  for s in summary["stages"]:
    if s["name"] == "throughput" and (table := throughput_table(s)):
      lines += ["", table]
    if s["name"] == "tests" and s.get("failed"):
      lines += ["", "### Failing tests", ""]
      lines += [f"- `{t}`" + (f": {s['reasons'][t]}" if t in s.get("reasons", {}) else "") for t in s["failed"]]
  return "\n".join(lines) + "\n"


def stage_budgets(overrides: Sequence[str], cpu: bool) -> dict[str, float]:
  """Per-stage seconds: the mode's defaults, then ``name=seconds`` overrides."""
  budgets = dict(CPU_BUDGETS if cpu else GPU_BUDGETS)
  for item in overrides:
    name, _, seconds = item.partition("=")
    if name not in budgets or not seconds:
      raise app.UsageError(f"--budget: {item!r} is not NAME=SECONDS with NAME one of {sorted(budgets)}")
    budgets[name] = float(seconds)
  return budgets


def run_all(
  stages: Sequence[str],
  budgets: Mapping[str, float],
  total_s: float,
  worker_argv: Callable[[str, float], list[str]],
  out: str,
  scratch: str,
  summary: dict,
  env=None,
  spent_s: float = 0.0,
) -> dict:
  """Runs ``stages`` in order and writes the summary after each.

  Each stage has its own budget, cut where the later stages' own budgets would not fit in
  ``total_s`` (of which ``spent_s`` went before, on the setup) any more; the last stage also
  has the time the others left unused.
  """
  start, unused = time.perf_counter() - spent_s, 0.0
  for i, name in enumerate(stages):
    later = sum(budgets[n] for n in stages[i + 1 :])
    left = total_s - (time.perf_counter() - start)
    budget = min(budgets[name], left - later) if i + 1 < len(stages) else min(budgets[name] + unused, left)
    if budget < 1:
      record = dict(name=name, status="skipped", seconds=0.0, budget_s=0, error="no time left")
    else:
      print(f"[accel_check] {name}: up to {budget:.0f} s ...", flush=True)
      record = run_stage(name, worker_argv(name, budget), budget, out, scratch, env=env)
      unused += max(budget - record["seconds"], 0.0)
    for key in ("device", "jax"):
      summary[key] = summary.get(key) or record.get(key)
    summary["stages"].append(record)
    summary["seconds"] = time.perf_counter() - start
    text = DESCRIBE.get(name, lambda r: r.get("error", ""))(record) or record.get("error", "")
    print(f"[accel_check] {name}: {record['status']} in {record['seconds']:.0f} s: {text}", flush=True)
    write_summary(out, summary)
  return summary


def write_summary(out: str, summary: Mapping[str, Any]) -> None:
  """``summary.json`` and ``summary.md`` in ``out``."""
  write_json(os.path.join(out, "summary.json"), summary)
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(summary_markdown(summary))
