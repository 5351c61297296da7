r"""One process of a multi-process CPU run of the trainer, as on a multi-host pod slice.

  python -m tests.multidevice.distributed_worker --coordinator=127.0.0.1:12345 \
      --num_processes=2 --process_id=0 --workdir=/tmp/run --mesh=2,2,2

Each process calls ``jax.distributed.initialize`` with explicit arguments (on a
Cloud TPU pod ``launch/train.py --multihost`` calls it without any, and JAX reads
them from the TPU metadata), then runs ``train.train_and_evaluate`` on
``harness.tiny_config`` with the global mesh ``--mesh``: each process reads its own
rows of every batch, the global batch is assembled with
``jax.make_array_from_process_local_data``, cross-process collectives go through
gloo, and orbax writes one sharded checkpoint from all processes.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--coordinator", required=True, help="host:port of process 0.")
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--mesh", default="2,2,2", help="data,fsdp,tensor of the global mesh.")
  parser.add_argument("--num_train_steps", type=int, default=3)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top

  jax.distributed.initialize(
    coordinator_address=args.coordinator,
    num_processes=args.num_processes,
    process_id=args.process_id,
    initialization_timeout=120,
  )
  from cyb_jax.training import train  # pylint: disable=g-import-not-at-top
  from tests.multidevice import harness  # pylint: disable=g-import-not-at-top

  data, fsdp, tensor = (int(s) for s in args.mesh.split(","))
  config = harness.tiny_config(
    **{
      "mesh.data": data,
      "mesh.fsdp": fsdp,
      "mesh.tensor": tensor,
      "num_train_steps": args.num_train_steps,
      "checkpoint_every_steps": args.num_train_steps,
    }
  )
  result = train.train_and_evaluate(config, args.workdir)
  print(
    json.dumps(
      {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
        "step": result["step"],
        "stopped": result["stopped"],
      }
    ),
    flush=True,
  )
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
