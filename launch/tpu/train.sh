#!/usr/bin/env bash
# Starts launch/train.py on every host of the job, in the background.
#   launch/tpu/train.sh RUN_NAME --config=configs/tfds_lm.py [--config.FIELD=VALUE ...]
# Every host runs the same command; `--multihost` makes each call
# jax.distributed.initialize(), which reads the slice (or multi-slice) layout from the TPU
# runtime. The workdir is $MOUNT/runs/RUN_NAME, shared by all hosts; running the same
# RUN_NAME again resumes from its newest checkpoint, on the same or another mesh.
# Logs: ~/logs/RUN_NAME.log on each host (launch/tpu/logs.sh RUN_NAME shows process 0's).
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ $# -lt 2 ]]; then
  echo "usage: $0 RUN_NAME --config=configs/X.py [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
run="$1"; shift
if [[ -z "${BUCKET}" ]]; then
  echo "Set BUCKET=gs://... (and run setup.sh): all hosts must share the workdir." >&2
  exit 1
fi
args="$(printf '%q ' "$@")"
on_all_hosts "set -e
  mkdir -p ~/logs
  cd ~/${REPO_DIR}
  nohup ~/${VENV}/bin/python launch/train.py --multihost --workdir=${MOUNT}/runs/${run} ${args} \
    > ~/logs/${run}.log 2>&1 < /dev/null &
  echo \$! > ~/logs/${run}.pid
  echo \"\$(hostname): started ${run}, pid \$(cat ~/logs/${run}.pid)\""
