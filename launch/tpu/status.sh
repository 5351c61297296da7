#!/usr/bin/env bash
# Shows the state of the queued resource of launch/tpu/env.sh and of its nodes.
#   launch/tpu/status.sh [--dry-run]
set -euo pipefail
USAGE="launch/tpu/status.sh [--dry-run]"
source "$(dirname "$0")/env.sh"
parse_common_args "$@"
if [[ ${#REST[@]} -gt 0 ]]; then usage_error "unexpected arguments: ${REST[*]}"; fi
require PROJECT ZONE TPU_NAME
run_cmd gcloud compute tpus queued-resources describe "${TPU_NAME}" --project="${PROJECT}" \
  --zone="${ZONE}" --format='value(state.state)'
for node in $(nodes); do
  run_cmd gcloud compute tpus tpu-vm describe "${node}" --project="${PROJECT}" --zone="${ZONE}" \
    --format='value(name,acceleratorType,state,health)'
done
