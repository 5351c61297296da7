#!/usr/bin/env bash
# Stops a run cleanly: SIGTERM to the trainer on every host.
#   launch/tpu/stop.sh [--dry-run] RUN_NAME
# One host: the trainer's SIGTERM handler finishes the step, saves and exits. Several hosts:
# JAX's preemption service takes the signal and picks one step at which every process stops
# (multihost_utils.reached_preemption_sync_point); all save one checkpoint there and exit.
# A Spot preemption or maintenance event sends the same SIGTERM. train.sh with the same
# RUN_NAME resumes from the checkpoint.
set -euo pipefail
USAGE="launch/tpu/stop.sh [--dry-run] RUN_NAME"
source "$(dirname "$0")/env.sh"
parse_common_args "$@"
if [[ ${#REST[@]} -ne 1 ]]; then usage_error "give exactly one RUN_NAME."; fi
run="${REST[0]}"
check_run_name "${run}"
require PROJECT ZONE TPU_NAME
on_all_hosts "if test -f ~/logs/${run}.pid && kill -0 \$(cat ~/logs/${run}.pid) 2>/dev/null; then
  kill -TERM \$(cat ~/logs/${run}.pid) && echo \"\$(hostname): SIGTERM sent to ${run}\"
else
  echo \"\$(hostname): ${run} is not running\"
fi"
