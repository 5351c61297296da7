r"""The accelerator acceptance check (issue 20): GPU tests, default job, throughput, loop efficiency.

One command that says whether cyb_jax works and how fast it runs on the accelerator it is run
on, within 8 minutes on one GPU, compiles included, and prints one summary:

1. ``tests``: pytest on the GPU-relevant tests (the attention kernels, the model's
   equivalences, MFU accounting, and every test marked ``gpu``): passed, failed and skipped
   counts, the failing tests' names and messages.
2. ``default_job``: the embedded default training job (``launch/train.py`` in a fresh
   workdir, persistent compilation cache off): seconds from launch to its first step, total
   seconds, its last logged tokens/s, final eval loss (``eval/nll_mix``), whether it logged
   ``train/mfu``.
3. ``loop``: the trainer's loop efficiency, as ``benchmarks/train_loop.py`` table 1
   measures it (that script, run with its other tables skipped): bare step time / the
   trainer's time per step, same model and batch shape.
4. ``throughput``: the train step (loss, gradient, AdamW; the trainer's own program from
   :func:`cyb_jax.training.programs.make_programs`) of a ~135M-parameter bf16 model (12 x 768, SwiGLU
   2048, V 32768, N 1024, B 16; layers scanned to compile faster), for K = 0, 1, 3 with
   ``xla`` and ``dot_product`` attention: ms/step, tokens/s, MFU against the bf16 matmul
   peak measured here and against the advertised one, r(K), compile seconds and peak memory.

Before the stages, ``setup``: where ``--wheelhouse`` names a folder of wheels (``make
wheelhouse``; on a lent machine, carried with the tree), what this Python lacks of the
project's requirements is installed from it, offline, JAX never touched
(``benchmarks/wheelhouse.py``); then a probe imports JAX and the modules the stages need. The
summary says which JAX and jaxlib the check ran with, the backend and devices, and whether
that JAX is the lock's or another (a device image's own: jaxlib and the CUDA plugin are too
large to carry). The stages import cyb_jax from the tree (``PYTHONPATH``).

Every stage runs in its own subprocess with its own time budget (``--budget``): one that
fails, hangs or runs out of time is reported as such, and the next stage still runs. On one
GPU: tests 150 s, default_job 70 s, loop 60 s, and throughput, last, 180 s plus the time the
others left unused, within ``--total_s`` 470, the setup's seconds included. This parent
process never imports JAX (it holds no accelerator memory and survives any import failure of
a stage); it writes ``setup.log``, ``<stage>.log`` per stage and, after the setup and every
stage, ``summary.md`` and ``summary.json`` into ``--out`` (default ``$OUT``, else a new
temporary folder), so a run cut short still leaves its results. It prints the summary at the
end and exits 1 unless every stage is ``ok``.

``--cpu`` runs a small version on the CPU (CI: ``tests/test_accel_check.py``): one test
file, a 40-step default job, a 2 x 64 model at N 64 with K = 0, 1, train_loop's ``--quick``.

  make accel-check OUT=/tmp/accel      # python benchmarks/accel_check.py --out=/tmp/accel
  python3 benchmarks/accel_check.py --wheelhouse=.wheelhouse   # a bare device image
  make accel-check-cpu                 # python benchmarks/accel_check.py --cpu
  python benchmarks/accel_check.py --stages=throughput --budget=throughput=300
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import accel_stages  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Output folder (default: $OUT if set, else a new temporary folder).")
_CPU = flags.DEFINE_bool("cpu", False, "Run the small CPU version (CI) on the CPU backend.")
_STAGES = flags.DEFINE_list(
  "stages", list(accel_stages.STAGES), f"Stages to run, in this order: some of {', '.join(accel_stages.STAGES)}."
)
_BUDGET = flags.DEFINE_list(
  "budget", [], "Per-stage seconds overriding the defaults, e.g. tests=60,accel_stages.throughput=240."
)
_TOTAL = flags.DEFINE_integer("total_s", None, "Seconds for the setup and all stages together (default 470).")
_INJECT = flags.DEFINE_bool("inject_failures", False, "Run a stage that raises and one that hangs first (tests).")
_TEST_PATHS = flags.DEFINE_list("test_paths", None, "pytest paths or node ids of the tests stage.")
_TEST_MARKER = flags.DEFINE_string("test_marker", "gpu", "Also run the tests with this marker ('' = none).")
_TEST_WORKERS = flags.DEFINE_integer("test_workers", None, "pytest-xdist workers (0 = none; GPU 4, CPU 0).")
_TEST_TIMEOUT = flags.DEFINE_integer("test_timeout_s", 120, "Per-test limit where pytest-timeout is installed.")
_JOB_STEPS = flags.DEFINE_integer("job_steps", None, "Steps of the default job (0 = its config's 800; CPU 40).")
_JOB_FLAG = flags.DEFINE_multi_string("job_flag", [], "Extra flag of launch/train.py, e.g. --config.seed=1.")
_LOOP_ARGS = flags.DEFINE_list("loop_args", None, "Flags of benchmarks/train_loop.py for its loop table.")
_TP_LAYERS = flags.DEFINE_integer("tp_layers", None, "Throughput model: layers (12).")
_TP_D_MODEL = flags.DEFINE_integer("tp_d_model", None, "Throughput model: D (768).")
_TP_HEADS = flags.DEFINE_integer("tp_heads", None, "Throughput model: heads (12).")
_TP_MLP_DIM = flags.DEFINE_integer("tp_mlp_dim", None, "Throughput model: SwiGLU width (2048).")
_TP_VOCAB = flags.DEFINE_integer("tp_vocab", None, "Throughput model: V (32768).")
_TP_LENGTH = flags.DEFINE_integer("tp_length", None, "Throughput: N (1024).")
_TP_BATCH = flags.DEFINE_integer("tp_batch", None, "Throughput: B (16).")
_TP_PAUSES = flags.DEFINE_list("tp_pauses", None, "Throughput: K values, 0 first (0,1,3).")
_TP_IMPLS = flags.DEFINE_list("tp_impls", ["xla", "dot_product"], "Throughput: model.attention_impl values.")
_TP_DTYPE = flags.DEFINE_string("tp_dtype", None, "Throughput: model.dtype (bfloat16; CPU float32).")
_TP_SCAN = flags.DEFINE_bool("tp_scan_layers", True, "Throughput: model.scan_layers (compiles faster).")
_TP_STEPS = flags.DEFINE_integer("tp_steps", None, "Throughput: back-to-back steps per timing (5).")
_TP_REPEATS = flags.DEFINE_integer("tp_repeats", None, "Throughput: round-robin timings per program, fastest kept.")
_COMPILE_THREADS = flags.DEFINE_integer("compile_threads", None, "Throughput: programs compiled at once (2; CPU 1).")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", None, "P of the [P, P] @ [P, P] matmul peak (8192; CPU 512).")
_WHEELHOUSE = flags.DEFINE_string(
  "wheelhouse",
  None,
  "Folder of wheels (make wheelhouse) to install what this Python lacks from, offline, before the stages "
  "('' = none; default: .wheelhouse where it holds wheels, except with --cpu).",
)
_INSTALL_TARGET = flags.DEFINE_string(
  "install_target", "", "pip --target folder for those installs, put on the stages' PYTHONPATH ('' = this Python's)."
)
_PROBE_TIMEOUT = flags.DEFINE_integer("probe_timeout_s", 120, "Seconds for the setup's probe of JAX and the imports.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run this one stage in this process.")
_WORKER_BUDGET = flags.DEFINE_float("worker_budget_s", 0.0, "Internal: the worker's seconds.")
_SCRATCH = flags.DEFINE_string("scratch", None, "Internal: the run's scratch folder (stage records).")

# --------------------------------------------------------------------------------------
# Main: the parent runs the stages; a worker (--worker=NAME) runs one.
# --------------------------------------------------------------------------------------


def _mode_value(flag: flags.FlagHolder) -> Any:
  """A flag's value, or the mode's default where it was left at None."""
  return flag.value if flag.value is not None else accel_stages.MODE_DEFAULTS[flag.name][int(_CPU.value)]


def _stage_env() -> dict[str, str]:
  """The stages' environment: cyb_jax from the tree (and the install target) on PYTHONPATH."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  paths = [accel_stages.ROOT, *([os.path.abspath(_INSTALL_TARGET.value)] if _INSTALL_TARGET.value else [])]
  env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  if _CPU.value:
    env["JAX_PLATFORMS"] = "cpu"
  return env


def _wheelhouse_dir() -> str | None:
  """The --wheelhouse folder; by default .wheelhouse where it holds wheels (not with --cpu)."""
  if _WHEELHOUSE.value is not None:
    return _WHEELHOUSE.value or None
  default = os.path.join(accel_stages.ROOT, ".wheelhouse")
  has_wheels = os.path.isdir(default) and any(f.endswith(".whl") for f in os.listdir(default))
  return default if has_wheels and not _CPU.value else None


def worker(name: str, budget_s: float, out: str, scratch: str) -> None:
  """Runs stage ``name`` in this process and writes its record to ``<scratch>/<name>.json``."""
  signal.signal(signal.SIGTERM, accel_stages.terminate_children)
  deadline = time.perf_counter() + budget_s - min(10.0, 0.1 * budget_s)  # time to write the record
  path, log = os.path.join(scratch, f"{name}.json"), os.path.join(out, f"{name}.log")
  save = lambda record: accel_stages.write_json(path, record)
  env = _stage_env()
  if name == "raises":
    raise RuntimeError("a stage that fails on purpose (--inject_failures)")
  if name == "hangs":
    time.sleep(10 * budget_s + 60)
  if name == "tests":
    record = accel_stages.run_tests(
      _mode_value(_TEST_PATHS), _TEST_MARKER.value, _mode_value(_TEST_WORKERS), _TEST_TIMEOUT.value, deadline, log, env
    )
  elif name == "default_job":
    extra = accel_stages.job_step_flags(_mode_value(_JOB_STEPS)) + list(_JOB_FLAG.value)
    record = accel_stages.default_job(extra, deadline, log, env)
  elif name == "loop":
    record = accel_stages.loop(_mode_value(_LOOP_ARGS), deadline, log, scratch, env)
  elif name == "throughput":
    sizes = dict(
      layers=_mode_value(_TP_LAYERS),
      d_model=_mode_value(_TP_D_MODEL),
      heads=_mode_value(_TP_HEADS),
      mlp_dim=_mode_value(_TP_MLP_DIM),
      vocab=_mode_value(_TP_VOCAB),
      length=_mode_value(_TP_LENGTH),
      batch=_mode_value(_TP_BATCH),
      dtype=_mode_value(_TP_DTYPE),
      scan_layers=_TP_SCAN.value,
    )
    with tempfile.TemporaryDirectory(prefix="accel_tp_") as workdir:
      record = accel_stages.throughput(
        sizes,
        [int(k) for k in _mode_value(_TP_PAUSES)],
        _TP_IMPLS.value,
        steps=_mode_value(_TP_STEPS),
        repeats=_mode_value(_TP_REPEATS),
        compile_threads=_mode_value(_COMPILE_THREADS),
        peak_size=_mode_value(_PEAK_SIZE),
        deadline=deadline,
        save=save,
        workdir=workdir,
      )
  else:
    raise app.UsageError(f"--worker={name!r}: no such stage")
  save(record)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out = _OUT.value or os.environ.get("OUT") or tempfile.mkdtemp(prefix="accel_check_")
  os.makedirs(out, exist_ok=True)
  if _WORKER.value:
    try:
      worker(_WORKER.value, _WORKER_BUDGET.value, out, _SCRATCH.value)
      code = 0
    except BaseException as e:  # the record says why; the parent reads it
      traceback.print_exc()
      accel_stages.write_json(
        os.path.join(_SCRATCH.value, f"{_WORKER.value}.json"), dict(status="error", error=f"{e!r}"[:500])
      )
      code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # leave compile threads behind without joining them

  unknown = sorted(set(_STAGES.value) - set(accel_stages.STAGES))
  if unknown:
    raise app.UsageError(f"--stages: {unknown} not among {', '.join(accel_stages.STAGES)}")
  stages = [*(accel_stages.INJECTED if _INJECT.value else ()), *_STAGES.value]
  budgets = accel_stages.stage_budgets(_BUDGET.value, _CPU.value)
  total_s = _mode_value(_TOTAL)
  command = shlex.join(["python", os.path.relpath(sys.argv[0], accel_stages.ROOT), *sys.argv[1:]])
  passed = [a for a in sys.argv[1:] if not a.startswith(("--out=", "--worker", "--scratch"))]
  signal.signal(signal.SIGTERM, accel_stages.terminate_children)
  with tempfile.TemporaryDirectory(prefix="accel_scratch_") as scratch:
    worker_argv = lambda name, budget: [
      sys.executable,
      os.path.abspath(__file__),
      *passed,
      f"--out={out}",
      f"--scratch={scratch}",
      f"--worker={name}",
      f"--worker_budget_s={budget}",
    ]
    summary = dict(
      command=command,
      mode="cpu" if _CPU.value else "accelerator",
      out=out,
      total_s=total_s,
      budgets={n: budgets[n] for n in stages},
      seconds=0.0,
      stages=[],
    )
    env = _stage_env()
    probe_env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # it holds no memory the stages need
    environment = accel_stages.setup(
      _wheelhouse_dir(),
      os.path.abspath(_INSTALL_TARGET.value) if _INSTALL_TARGET.value else None,
      accel_stages.PROBE_IMPORTS,
      _PROBE_TIMEOUT.value,
      os.path.join(out, "setup.log"),
      env=probe_env,
    )
    summary.update(environment=environment, jax=environment.get("jax"), device=environment.get("device_kind"))
    summary["seconds"] = environment.get("seconds", 0.0)
    accel_stages.write_summary(out, summary)  # a run cut short in its first stage still says which JAX
    summary = accel_stages.run_all(
      stages, budgets, total_s, worker_argv, out, scratch, summary, env=env, spent_s=summary["seconds"]
    )
  print("\n" + accel_stages.summary_markdown(summary), flush=True)
  sys.exit(0 if all(s["status"] == "ok" for s in summary["stages"]) else 1)


if __name__ == "__main__":
  app.run(main)
