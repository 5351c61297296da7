"""Meshes, logical rules and sharded training (cyb_jax.sharding, docs/design.md section 7).

The fast tests run in this process. The `multidevice` tests start subprocesses with
fake CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N` is set only in
the child's environment) and compare them with a 1-device run made here:

* 8 devices, meshes (data, fsdp, tensor) = (8,1,1), (2,4,1), (2,2,2), (1,4,2): the first
  steps' losses equal the 1-device losses, the state is really sharded, and a checkpoint
  saved on one mesh restores onto another and continues with the same loss;
* 2 processes x 4 devices joined by `jax.distributed.initialize` (gloo collectives over
  localhost) running the whole trainer: the same losses, one metrics file, one
  checkpoint that restores onto 1 device.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cyb_jax import metrics_writer
from cyb_jax import model as model_lib
from cyb_jax import sharding
from cyb_jax.training import checkpoint as ckpt_lib
from cyb_jax.training import components
from cyb_jax.training import train
from tests.multidevice import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_TIMEOUT_S = 420
LOSS_RTOL = 1e-5


# ------------------------------------------------------------------------------------
# Mesh construction and rules (this process, whatever its device count).
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "sizes, devices, expected",
  [
    ({"data": -1, "fsdp": 1, "tensor": 1}, 8, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, 8, (2, 2, 2)),
    ({"data": 1, "fsdp": 4, "tensor": -1}, 8, (1, 4, 2)),
    ({"data": 2, "fsdp": 4, "tensor": 1}, 8, (2, 4, 1)),
    ({"data": -1, "fsdp": 16, "tensor": 1}, 64, (4, 16, 1)),
  ],
)
def test_mesh_shape_fills_in_the_minus_one_axis(sizes, devices, expected):
  assert sharding.mesh_shape(sizes, devices) == expected


@pytest.mark.parametrize(
  "sizes, devices, message",
  [
    ({"data": -1, "fsdp": -1, "tensor": 1}, 8, "at most one mesh axis may be -1"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, 8, "8 is not divisible by 3"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, 8, "has 4 devices, but 8 are in use"),
    ({"data": 0, "fsdp": 1, "tensor": 1}, 8, "mesh.data=0 must be a positive size or -1"),
    ({"data": 1, "fsdp": -2, "tensor": 1}, 8, "mesh.fsdp=-2 must be a positive size or -1"),
  ],
)
def test_mesh_shape_rejects_sizes_that_cannot_cover_the_devices(sizes, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(sizes, devices)


def test_make_mesh_has_the_three_axes_with_auto_types():
  mesh = sharding.make_mesh(sharding.default_mesh_config())
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert mesh.shape == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  one = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  assert one.devices.size == 1


@pytest.mark.parametrize(
  "config, message",
  [
    ({"data": -1, "fsdp": 1, "tensor": 1, "pipeline": 1}, r"unknown mesh axes \['pipeline'\]"),
    ({"data": -1, "fsdp": 1, "tensor": 1, "dcn_data": 0}, "mesh.dcn_data=0 must be >= 1"),
  ],
)
def test_make_mesh_rejects_bad_configs(config, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(config)


def test_rules_survive_a_json_round_trip_of_the_config():
  config = ml_collections.ConfigDict({"rules": sharding.DEFAULT_LOGICAL_RULES})
  loaded = ml_collections.ConfigDict(json.loads(config.to_json()))
  assert sharding.rules_from_config(loaded.rules) == sharding.DEFAULT_LOGICAL_RULES


def test_parameters_map_to_fsdp_and_tensor_by_the_default_rules():
  """Matrices shard `embed` over fsdp and heads/MLP/vocabulary over tensor; norms replicate."""
  cfg = model_lib.ModelConfig(vocab_size=32, num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_pauses=2)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  specs = jax.tree.map(
    lambda s: s.spec,
    sharding.logical_shardings(model_lib.param_logical_axes(cfg), mesh, sharding.DEFAULT_LOGICAL_RULES),
  )
  layer = specs["decoder"]["layer_0"]
  assert specs["token_embed"] == P("tensor", "fsdp")
  assert specs["vocab_head"]["kernel"] == P("fsdp", "tensor")
  assert specs["pause_embed"] == P(None, "fsdp")
  assert layer["attention"]["q_kernel"] == P("fsdp", "tensor", None)
  assert layer["attention"]["out_kernel"] == P("tensor", None, "fsdp")
  assert layer["mlp"]["up_kernel"] == P("fsdp", "tensor")
  assert layer["mlp"]["down_kernel"] == P("tensor", "fsdp")
  assert specs["final_norm"]["scale"] == P(None)


def test_global_batch_places_the_rows_over_data_and_fsdp():
  mesh = sharding.make_mesh(sharding.default_mesh_config())
  rows = 2 * jax.device_count()
  local = {"inputs": np.arange(rows * 3, dtype=np.int32).reshape(rows, 3), "weights": np.ones((rows, 3), np.float32)}
  batch = sharding.global_batch(local, mesh)
  assert batch["inputs"].sharding == sharding.batch_sharding(mesh)
  assert batch["inputs"].sharding.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(np.asarray(batch["inputs"]), local["inputs"])
  assert sum(sharding.bytes_per_device(batch).values()) == sum(v.nbytes for v in local.values())
  with pytest.raises(ValueError, match=r"batch\['step'\] is a scalar"):
    sharding.global_batch({"step": np.int32(3)}, mesh)


def test_check_batch_divisible_names_the_sizes():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  sharding.check_batch_divisible(3, mesh)

  mesh_2x4x1 = jax.sharding.AbstractMesh((2, 4, 1), sharding.MESH_AXES)
  sharding.check_batch_divisible(16, mesh_2x4x1)
  with pytest.raises(ValueError, match=r"data.batch_size=12 .* mesh.data \* mesh.fsdp = 8"):
    sharding.check_batch_divisible(12, mesh_2x4x1)
  # The trainer's programs check the micro-batch that each step actually shards.
  config = harness.tiny_config(**{"data.batch_size": 16, "optimizer.grad_accum_steps": 4})
  with pytest.raises(ValueError, match=r"data.batch_size / grad_accum_steps 4=4 .* = 8"):
    train.make_programs(
      config, components.model_config(config, 32), mesh_2x4x1, sharding.rules_from_config(config.logical_axis_rules)
    )


# ------------------------------------------------------------------------------------
# Multi-device runs in subprocesses.
# ------------------------------------------------------------------------------------


@functools.cache
def _one_device_reference() -> tuple[list[float], dict[str, np.ndarray]]:
  """Losses of steps 1..NUM_STEPS and the final parameters of the tiny run on 1 device."""
  config = harness.tiny_config(**{"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1})
  run = harness.build(config, workdir=tempfile.gettempdir(), devices=jax.devices()[:1])
  state, losses = run.run(harness.initial_state(run), 0, harness.NUM_STEPS)
  return losses, harness.host_params(state)


def _spawn(module: str, args: list[str], num_devices: int, log_path: str, *, cache: bool = True) -> subprocess.Popen:
  """``python -m module args`` on ``num_devices`` CPU devices, logging to ``log_path``; without the
  persistent compilation cache unless ``cache``."""
  env = harness.subprocess_env(num_devices)
  if not cache:
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  return subprocess.Popen(
    [sys.executable, "-m", module, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
  )


def _wait(processes: list[subprocess.Popen], logs: list[str]) -> None:
  """Waits for every process; on a failure or timeout kills the rest and shows the log."""
  try:
    for proc in processes:
      proc.wait(timeout=SUBPROCESS_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    pass
  finally:
    for proc in processes:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for proc, log in zip(processes, logs):
    if proc.returncode != 0:
      with open(log) as f:
        tail = f.read()[-4000:]
      pytest.fail(f"{' '.join(proc.args[2:4])} exited with {proc.returncode}:\n{tail}")


def _spawn_two_processes(tmp_path, workdir: str, *args: str) -> tuple[list[subprocess.Popen], list[str]]:
  """Two `distributed_worker` processes x 4 CPU devices on mesh (2,2,2); their logs.

  Without the persistent compilation cache: with jax 0.12.1 a multi-process CPU program loaded
  from it deadlocks in its first collective (cyb_jax.cli.train turns the cache off there too).
  """
  coordinator = f"127.0.0.1:{_free_port()}"
  logs = [str(tmp_path / f"process_{i}.log") for i in range(2)]
  procs = [
    _spawn(
      "tests.multidevice.distributed_worker",
      [
        f"--coordinator={coordinator}",
        "--num_processes=2",
        f"--process_id={i}",
        f"--workdir={workdir}",
        "--mesh=2,2,2",
        *args,
      ],
      4,
      logs[i],
      cache=False,
    )
    for i in range(2)
  ]
  return procs, logs


def _worker_summary(log: str) -> dict:
  """The JSON summary a `distributed_worker` prints last."""
  with open(log) as f:
    return json.loads([line for line in f if line.startswith("{")][-1])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _expected_shard(path: str, fsdp: int, tensor: int) -> list[int] | None:
  """Per-device shard shape of a few representative state arrays of the tiny model."""
  for suffix, shape in (
    ("['token_embed']", [32 // tensor, 32 // fsdp]),
    ("['vocab_head']['kernel']", [32 // fsdp, 32 // tensor]),
    ("['pause_embed']", [2, 32 // fsdp]),
    ("['attention']['q_kernel']", [32 // fsdp, 2 // tensor, 16]),
    ("['mlp']['down_kernel']", [64 // tensor, 32 // fsdp]),
    ("['final_norm']['scale']", [32]),
  ):
    if path.endswith(suffix):
      return shape
  return None


@pytest.mark.multidevice
@pytest.mark.slow
def test_meshes_of_8_devices_match_one_device_and_checkpoints_move_between_them(tmp_path):
  out = str(tmp_path / "meshes.json")
  proc = _spawn(
    "tests.multidevice.mesh_runs", [f"--out={out}", f"--workdir={tmp_path}"], 8, str(tmp_path / "mesh_runs.log")
  )
  reference_losses, _ = _one_device_reference()  # computed while the child runs
  _wait([proc], [str(tmp_path / "mesh_runs.log")])
  with open(out) as f:
    results = json.load(f)

  total_bytes = results["8x1x1"]["state_bytes_per_device"][0]  # replicated: all of it
  for data, fsdp, tensor in harness.MESHES:
    name = f"{data}x{fsdp}x{tensor}"
    r = results[name]
    np.testing.assert_allclose(r["losses"], reference_losses, rtol=LOSS_RTOL, err_msg=f"mesh {name}")
    # The state is created sharded: parameters AND both Adam moments of each.
    checked = 0
    for path, (shape, shard) in r["shards"].items():
      expected = _expected_shard(path, fsdp, tensor)
      if expected is not None:
        assert shard == expected, f"mesh {name}: {path} {shape} has shard {shard}"
        checked += 1
    assert checked == 3 * 6, f"mesh {name}: found {checked} of the 18 arrays checked"
    # Per-device memory falls as 1 / (fsdp * tensor), up to the small replicated arrays.
    assert max(r["state_bytes_per_device"]) <= 1.05 * total_bytes / (fsdp * tensor) + 1024
    # A checkpoint of another mesh restores into this mesh's layout and continues exactly.
    assert r["restored_from"] != name
    assert r["restored_shards"] == r["shards"], f"mesh {name}: restored layout differs"
    np.testing.assert_allclose(
      r["restored_loss"],
      reference_losses[-1],
      rtol=LOSS_RTOL,
      err_msg=f"mesh {name} restored from {r['restored_from']}",
    )
  # After the pause-step scan, hidden states and loss statistics stay split by rows.
  assert results["2x2x2"]["batch_sharded"] == {
    "hidden": True,
    "log_dk": True,
    "log_answer": True,
    "log_target": True,
    "correct": True,
  }


@pytest.mark.multidevice
@pytest.mark.slow
def test_two_processes_on_localhost_match_one_process(tmp_path):
  """`jax.distributed` on CPU: 2 processes x 4 devices run the whole trainer on mesh (2,2,2)."""
  workdir = str(tmp_path / "run")
  procs, logs = _spawn_two_processes(tmp_path, workdir)
  reference_losses, reference_params = _one_device_reference()
  _wait(procs, logs)
  for i, log in enumerate(logs):
    assert _worker_summary(log) == {
      "process_index": i,
      "process_count": 2,
      "local_devices": 4,
      "devices": 8,
      "step": harness.NUM_STEPS,
      "stopped": "completed",
    }

  rows = [r for r in metrics_writer.read_metrics(workdir) if "train/loss" in r]
  assert [r["step"] for r in rows] == list(range(1, harness.NUM_STEPS + 1))  # process 0 only
  np.testing.assert_allclose([r["train/loss"] for r in rows], reference_losses, rtol=LOSS_RTOL)

  # The checkpoint both processes wrote restores onto one device with the same parameters.
  config = harness.tiny_config(**{"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1})
  run = harness.build(config, workdir=str(tmp_path), devices=jax.devices()[:1])
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=1)
  try:
    state, data_state, meta = checkpointer.restore(harness.NUM_STEPS, run.abstract_state())
  finally:
    checkpointer.close()
  assert meta["step"] == harness.NUM_STEPS
  # Each process's own data position was gathered into the checkpoint.
  assert sorted(data_state) == ["0", "1"]
  assert all(s["batch_index"] == harness.NUM_STEPS for s in data_state.values())
  assert int(state.step) == harness.NUM_STEPS
  restored = harness.host_params(state)
  assert restored.keys() == reference_params.keys()
  for key, value in reference_params.items():
    np.testing.assert_allclose(restored[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.multidevice
@pytest.mark.slow
def test_sigterm_stops_every_process_at_the_same_step(tmp_path):
  """A maintenance event (SIGTERM to every host) saves one checkpoint and exits cleanly."""
  workdir = str(tmp_path / "run")
  procs, logs = _spawn_two_processes(tmp_path, workdir, "--num_train_steps=100000")
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + SUBPROCESS_TIMEOUT_S
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.exists(metrics) and len(metrics_writer.read_metrics(workdir)) >= 2:
      break
    time.sleep(0.5)
  for proc in procs:
    proc.send_signal(signal.SIGTERM)
  _wait(procs, logs)
  steps = set()
  for log in logs:
    summary = _worker_summary(log)
    assert summary["stopped"] == "preempted"
    steps.add(summary["step"])
  assert len(steps) == 1 and os.listdir(os.path.join(workdir, "checkpoints")) == [str(*steps)]


@pytest.mark.multidevice
def test_the_default_vocabulary_trains_on_every_mesh_with_the_one_device_losses(tmp_path):
  """15 ids and 2 heads on tensor axes of 2 and 8: the vocabulary is padded (16), the heads
  stay whole on the 8-way axis, and every mesh gives the losses of one device."""
  out = str(tmp_path / "any_vocab.json")
  log = str(tmp_path / "any_vocab.log")
  _wait([_spawn("tests.multidevice.any_vocab", [f"--out={out}", f"--workdir={tmp_path}"], 8, log)], [log])
  with open(out) as f:
    results = json.load(f)
  assert (results["1x1x1 padded"], results["2x2x2 padded"], results["1x1x8 padded"]) == (15, 16, 16)
  for name in ("8x1x1", "2x2x2", "1x4x2", "1x1x8"):
    np.testing.assert_allclose(results[name], results["1x1x1"], rtol=1e-4, err_msg=f"mesh {name}")
