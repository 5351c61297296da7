#!/usr/bin/env bash
# Deletes the queued resource of launch/tpu/env.sh and its TPU VMs (the bucket and its runs stay).
#   launch/tpu/delete.sh [--dry-run]
# Stop the runs first (stop.sh) if their last steps should be saved.
set -euo pipefail
USAGE="launch/tpu/delete.sh [--dry-run]"
source "$(dirname "$0")/env.sh"
parse_common_args "$@"
if [[ ${#REST[@]} -gt 0 ]]; then usage_error "unexpected arguments: ${REST[*]}"; fi
require PROJECT ZONE TPU_NAME
# --force also deletes the nodes of an ACTIVE queued resource.
run_cmd gcloud compute tpus queued-resources delete "${TPU_NAME}" --project="${PROJECT}" \
  --zone="${ZONE}" --force --quiet
