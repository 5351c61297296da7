"""The accelerator acceptance check (benchmarks/accel_check.py): its --cpu mode end to end, and
its pieces (the stage runner, the pytest reader, the jaxpr FLOP count, the summary)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import accel_stages
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
  assert sorted(os.listdir(out)) == sorted([f"{n}.log" for n in stages] + ["summary.json", "summary.md"])


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
  text = accel_stages.summary_markdown(summary)
  assert "| tests | failed | 100 | 150 | 40 passed, 1 failed, 2 skipped; failed: test_x |" in text
  assert "| throughput | timeout | 180 | 180 | 1/3 programs timed" in text and "ran out of its 180 s" in text
  assert "| xla | 0 | 100.0 | 163,840 | 40.0% | - | 1.000 | 9.0 | - | ok |" in text
  assert "| dot_product | 1 | - |" in text and "failed: NotImplementedError: Q 1024, KV 1025 |" in text
  assert "- `tests/test_model.py::test_x`: AssertionError: not close" in text
