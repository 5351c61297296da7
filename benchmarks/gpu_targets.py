"""NVIDIA GPUs to compile for on a host without one (``benchmarks/gpu_compile.py``, the tests).

XLA's GPU compiler needs only a description of the target (a ``GpuTargetConfig``: compute
capability, cores, shared memory, memory size, ...), not the device:
``jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)`` turns one
into a device that programs are lowered and compiled for. That needs JAX's CUDA plugin
(``jax-cuda13-plugin[with-cuda]`` at the installed jaxlib's version: ``make cuda-tools`` puts it in
``.cache/jax_cuda``) but no GPU or driver. Kernels that JAX or a library chooses by the GPU
generation (tokamax's Mosaic attention) read JAX's default device: run them inside
``jax.default_device(device)``.

The figures are NVIDIA's published ones for each card (SXM parts).
"""

from __future__ import annotations

import dataclasses
import os
import sys


@dataclasses.dataclass(frozen=True)
class GpuTarget:
  """One GPU model as XLA's GpuTargetConfig describes it (the fields XLA's compiler reads)."""

  name: str  # device_description_str
  compute_capability: tuple[int, int]
  cores: int  # streaming multiprocessors
  memory_bytes: int
  memory_bandwidth: int  # bytes/s
  l2_cache_bytes: int
  clock_ghz: float
  bf16_flops: float  # dense bf16 matmul peak, FLOP/s (for MFU and the bound's time)

  def target_config(self) -> str:
    """The GpuTargetConfig text proto of this card."""
    major, minor = self.compute_capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {self.cores}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {self.memory_bandwidth}
  l2_cache_size: {self.l2_cache_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {major} minor: {minor} }}
}}
platform_name: "CUDA"
device_description_str: "{self.name}"
"""


TARGETS = {
  "h100": GpuTarget(
    name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    cores=132,
    memory_bytes=79_645_278_208,  # what JAX reports as usable on an 80 GB card (~74 GiB)
    memory_bandwidth=3_352_320_000_000,
    l2_cache_bytes=52_428_800,
    clock_ghz=1.98,
    bf16_flops=989e12,
  ),
  "h200": GpuTarget(
    name="NVIDIA H200",
    compute_capability=(9, 0),
    cores=132,
    memory_bytes=150_323_855_360,  # 141 GB, as a lent H200 reports ~139 GiB usable
    memory_bandwidth=4_800_000_000_000,
    l2_cache_bytes=52_428_800,
    clock_ghz=1.98,
    bf16_flops=989e12,
  ),
}


def cuda_tools_path() -> str:
  """Where ``make cuda-tools`` installs JAX's CUDA plugin (``CYB_JAX_CUDA_PATH`` overrides)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.environ.get("CYB_JAX_CUDA_PATH") or os.path.join(root, ".cache", "jax_cuda")


def use_cuda_tools() -> bool:
  """Puts the CUDA plugin on this process's path, and on its children's, if it is installed,
  keeping the CPU as the default backend; returns whether it is there. Call it before JAX starts a
  backend (JAX discovers plugins then)."""
  path = cuda_tools_path()
  if not os.path.isdir(os.path.join(path, "jax_plugins")):
    return False
  if path not in sys.path:
    sys.path.insert(0, path)
  python_path = os.environ.get("PYTHONPATH", "")
  if path not in python_path.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [path, python_path]))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the GPU is only a compile target here
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver to check against
  return True


def cuda_tools_in_use() -> bool:
  """Whether `use_cuda_tools` put the plugin on this process's path."""
  return cuda_tools_path() in sys.path


def topology_device(target: str = "h100"):
  """A device of one ``target`` GPU to lower and compile for (needs the CUDA plugin).

  Raises RuntimeError naming ``make cuda-tools`` when JAX has no CUDA plugin.
  """
  import jax  # noqa: PLC0415
  from jax.experimental import topologies  # noqa: PLC0415

  if target not in TARGETS:
    raise ValueError(f"unknown GPU target {target!r}: one of {sorted(TARGETS)}")
  try:
    topology = topologies.get_topology_desc(
      platform="cuda", topology_name="", target_config=TARGETS[target].target_config(), topology="1x1x1"
    )
  except (RuntimeError, jax.errors.JaxRuntimeError, ValueError) as e:
    raise RuntimeError(
      f"cannot describe a {target} without JAX's CUDA plugin ({e}); run `make cuda-tools` "
      f"(installs it into {cuda_tools_path()})"
    ) from e
  (device,) = topology.devices
  return device
