#!/usr/bin/env bash
# Starts the trainer on every host of the job, in the background.
#   launch/tpu/train.sh [--dry-run] RUN_NAME --config=cyb_jax/configs/X.py [--config.FIELD=VALUE ...]
# Every host runs the same command; --multihost makes each call jax.distributed.initialize(),
# which reads the slice (or multislice) layout from the TPU runtime. The workdir is
# MOUNT/runs/RUN_NAME (BUCKET/runs/RUN_NAME), shared by all hosts; the same RUN_NAME again
# resumes from its newest checkpoint, on the same or another mesh. Output: ~/logs/RUN_NAME.log
# on each host (logs.sh RUN_NAME shows process 0's); stop.sh RUN_NAME stops it cleanly.
# Options for this script come before RUN_NAME; everything after it goes to the trainer.
set -euo pipefail
USAGE="launch/tpu/train.sh [--dry-run] RUN_NAME --config=cyb_jax/configs/X.py [--config.FIELD=VALUE ...]"
source "$(dirname "$0")/env.sh"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) echo "usage: ${USAGE}"; exit 0 ;;
    -*) usage_error "unknown option '$1' (options come before RUN_NAME)." ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then usage_error "give RUN_NAME and at least --config=..."; fi
run="$1"; shift
check_run_name "${run}"
require PROJECT ZONE TPU_NAME BUCKET
args="$(printf '%q ' "$@")"
on_all_hosts "set -euo pipefail
mkdir -p ~/logs
cd ~/${REPO_DIR}
nohup ~/${VENV}/bin/python launch/train.py --multihost --workdir=${MOUNT}/runs/${run} ${args% } > ~/logs/${run}.log 2>&1 < /dev/null &
echo \$! > ~/logs/${run}.pid
echo \"\$(hostname): started ${run}, pid \$(cat ~/logs/${run}.pid)\""
