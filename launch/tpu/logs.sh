#!/usr/bin/env bash
# Follows the log of process 0 (host 0 of the first slice) of a run.
#   launch/tpu/logs.sh RUN_NAME
set -euo pipefail
source "$(dirname "$0")/env.sh"
run="${1:?usage: $0 RUN_NAME}"
gcloud compute tpus tpu-vm ssh "$(nodes | head -n 1)" --project="${PROJECT}" --zone="${ZONE}" \
  --worker=0 --command="tail -n 100 -f ~/logs/${run}.log"
