#!/usr/bin/env bash
# Deletes the TPU slice(s) of launch/tpu/env.sh (the bucket and its runs are kept).
#   launch/tpu/delete.sh
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ "${NUM_SLICES}" -eq 1 ]]; then
  gcloud compute tpus tpu-vm delete "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" --quiet
else
  gcloud compute tpus queued-resources delete "${TPU_NAME}" --project="${PROJECT}" \
    --zone="${ZONE}" --force --quiet
fi
