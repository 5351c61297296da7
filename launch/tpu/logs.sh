#!/usr/bin/env bash
# Follows the log of one host of a run (default: worker 0 of the first slice, i.e. process 0).
#   launch/tpu/logs.sh [--dry-run] RUN_NAME
# WORKER=N and SLICE=I pick another host; library logging is in the workdir's log.txt.
set -euo pipefail
USAGE="launch/tpu/logs.sh [--dry-run] RUN_NAME"
source "$(dirname "$0")/env.sh"
: "${WORKER:=0}"
: "${SLICE:=0}"
parse_common_args "$@"
if [[ ${#REST[@]} -ne 1 ]]; then usage_error "give exactly one RUN_NAME."; fi
run="${REST[0]}"
check_run_name "${run}"
require PROJECT ZONE TPU_NAME
if ! [[ "${SLICE}" =~ ^[0-9]+$ && "${SLICE}" -lt "${NUM_SLICES}" ]]; then
  die "SLICE=${SLICE} must be an integer in [0, NUM_SLICES=${NUM_SLICES})."
fi
node="$(nodes | sed -n "$((SLICE + 1))p")"
run_cmd gcloud compute tpus tpu-vm ssh "${node}" --project="${PROJECT}" --zone="${ZONE}" \
  --worker="${WORKER}" --command="tail -n 100 -f ~/logs/${run}.log"
