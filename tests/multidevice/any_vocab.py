r"""The default task (vocabulary 15, 2 heads) on meshes whose tensor axis does not divide it.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multidevice.any_vocab \
      --out=/tmp/any_vocab.json --workdir=/tmp/any_vocab

Runs ``harness.NUM_STEPS`` steps of ``tests.tiny.tiny_config`` (no vocabulary override: the
synthetic task's 15 ids, padded by ``components.vocab_pad_multiple`` to a multiple of the
tensor size) on one device and on each mesh of ``MESHES``, and writes
``{mesh name: [losses], ...: "padded": padded vocabulary size}``.
"""

from __future__ import annotations

import argparse
import json

import jax

from tests import tiny
from tests.multidevice import harness

MESHES = ((1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  out = {}
  for shape in MESHES:
    config = tiny.tiny_config(
      **{
        "num_train_steps": harness.NUM_STEPS,
        "data.batch_size": 8,
        "data.eval_batches": 0,
        "optimizer.warmup_steps": 1,
        "mesh.data": shape[0],
        "mesh.fsdp": shape[1],
        "mesh.tensor": shape[2],
      }
    )
    devices = jax.devices()[: shape[0] * shape[1] * shape[2]]
    run = harness.build(config, workdir=args.workdir, devices=devices)
    _, losses = run.run(harness.initial_state(run), 0, harness.NUM_STEPS)
    name = "x".join(map(str, shape))
    out[name] = losses
    out[f"{name} padded"] = run.model_cfg.padded_vocab_size
  with open(args.out, "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main()
