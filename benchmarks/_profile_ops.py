"""Where the time of one compiled program goes: a jax.profiler trace aggregated by HLO op.

Used by ``train_loop.py --profile``. Each profiled XLA CPU thunk event is mapped to its
HLO instruction, which says whether it runs inside a ``while`` loop (the pause-step scan or
its transpose) and carries the JAX op it came from (``metadata={op_name=...}``).
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?\s([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONTAINERS = ("while", "call", "conditional")  # their events span their bodies' events


def _instructions(hlo_text: str) -> dict[str, dict[str, Any]]:
  """instruction name -> opcode, computation, jax op_name; plus while-loop membership."""
  out, calls, computation, bodies = {}, collections.defaultdict(set), None, set()
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line) if line[:1] not in (" ", "\t") else None
    if m:
      computation = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m or computation is None:
      continue
    name, opcode, rest = m.groups()
    op_name = _OP_NAME.search(rest)
    out[name] = dict(opcode=opcode, computation=computation,
                     op_name=op_name.group(1) if op_name else "")
    calls[computation].update(_CALLS.findall(rest))
    if opcode == "while":
      bodies.update(re.findall(r"body=%?([\w.\-]+)", rest))
  in_loop, stack = set(), list(bodies)
  while stack:
    c = stack.pop()
    if c not in in_loop:
      in_loop.add(c)
      stack.extend(calls[c])
  for info in out.values():
    info["in_loop"] = info["computation"] in in_loop
  return out


def _kind(info: dict[str, Any]) -> str:
  """A coarse label: the innermost Flax method of the op_name and the JAX primitive."""
  parts = info["op_name"].split("/") if info["op_name"] else [info["opcode"]]
  modules = [p for p in parts if re.match(r"^[A-Z]\w*(\.\w+)?$", p)]
  primitive = re.sub(r"\[.*$", "", parts[-1]) or info["opcode"]
  return f"{modules[-1]}/{primitive}" if modules else primitive


def profile_ops(compiled: jax.stages.Compiled, run: Callable[[], Any], repeats: int = 1
                ) -> dict[tuple[bool, str], float]:
  """Thread-seconds of ``run()`` per (inside a while loop, JAX primitive), one run's worth."""
  info = _instructions(compiled.as_text())
  jax.block_until_ready(run())
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    for _ in range(repeats):
      jax.block_until_ready(run())
    jax.profiler.stop_trace()
    path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
  totals = collections.defaultdict(float)
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in info and info[event.name]["opcode"] not in _CONTAINERS:
          i = info[event.name]
          totals[(i["in_loop"], _kind(i))] += event.duration_ns * 1e-9 / repeats
  return dict(totals)
