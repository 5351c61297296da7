#!/usr/bin/env bash
# Creates the TPU slice(s) described by launch/tpu/env.sh.
#   launch/tpu/create.sh
# One slice: a TPU VM (Create Node API; fails at once if there is no capacity).
# NUM_SLICES > 1: a queued resource of NUM_SLICES nodes ${TPU_NAME}-0.. (multi-slice needs it);
# the script waits until it is ACTIVE.
set -euo pipefail
source "$(dirname "$0")/env.sh"

if [[ "${NUM_SLICES}" -eq 1 ]]; then
  gcloud compute tpus tpu-vm create "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
    --accelerator-type="${ACCELERATOR}" --version="${RUNTIME_VERSION}"
else
  gcloud compute tpus queued-resources create "${TPU_NAME}" --project="${PROJECT}" \
    --zone="${ZONE}" --node-prefix="${TPU_NAME}" --node-count="${NUM_SLICES}" \
    --accelerator-type="${ACCELERATOR}" --runtime-version="${RUNTIME_VERSION}"
  until [[ "$(gcloud compute tpus queued-resources describe "${TPU_NAME}" --project="${PROJECT}" \
            --zone="${ZONE}" --format='value(state.state)')" == "ACTIVE" ]]; do
    echo "waiting for queued resource ${TPU_NAME} to become ACTIVE..."
    sleep 60
  done
fi
echo "Created: $(nodes | tr '\n' ' ')"
