#!/usr/bin/env bash
# Requests the TPU slice(s) of launch/tpu/env.sh as a queued resource and waits until ACTIVE.
#   launch/tpu/create.sh [--dry-run] [--spot | --reserved] [--no-wait]
# One slice (NUM_SLICES=1): node TPU_NAME. Several (multislice): NUM_SLICES nodes
# TPU_NAME-0 .. TPU_NAME-<S-1>, each an ACCELERATOR slice, joined over the data-centre network.
#   --spot       Spot capacity: cheaper, may be preempted at any time (the trainer saves on
#                the SIGTERM that precedes it; train.sh with the same RUN_NAME resumes).
#   --reserved   use the project's reservation in ZONE (capacity you have bought).
#   (neither)    on-demand capacity.
#   --no-wait    return once the request is queued (launch/tpu/status.sh shows its state).
# Also read: CAPACITY=spot|reserved|on-demand (the flags win), VALID_UNTIL=DURATION (e.g. 6h:
# the request expires if it is not provisioned by then).
set -euo pipefail
USAGE="launch/tpu/create.sh [--dry-run] [--spot | --reserved] [--no-wait]"
source "$(dirname "$0")/env.sh"
: "${CAPACITY:=on-demand}"
: "${VALID_UNTIL:=}"

parse_common_args "$@"
wait_active=1
capacity_flags=()
for arg in "${REST[@]}"; do
  case "${arg}" in
    --spot|--reserved) capacity_flags+=("${arg#--}") ;;
    --no-wait) wait_active=0 ;;
    *) usage_error "unknown argument '${arg}'." ;;
  esac
done
if [[ ${#capacity_flags[@]} -gt 1 ]]; then
  usage_error "--spot and --reserved exclude each other (give at most one)."
elif [[ ${#capacity_flags[@]} -eq 1 ]]; then
  CAPACITY="${capacity_flags[0]}"
fi
case "${CAPACITY}" in
  spot) capacity_args=(--spot) ;;
  reserved) capacity_args=(--reserved) ;;
  on-demand) capacity_args=() ;;
  *) die "CAPACITY=${CAPACITY} is unknown; allowed: spot, reserved, on-demand." ;;
esac
require PROJECT ZONE TPU_NAME ACCELERATOR RUNTIME_VERSION

if [[ "${NUM_SLICES}" -eq 1 ]]; then
  node_args=(--node-id="${TPU_NAME}")
else
  node_args=(--node-count="${NUM_SLICES}" --node-prefix="${TPU_NAME}")
fi
valid_args=()
if [[ -n "${VALID_UNTIL}" ]]; then valid_args=(--valid-until-duration="${VALID_UNTIL}"); fi

run_cmd gcloud compute tpus queued-resources create "${TPU_NAME}" \
  --project="${PROJECT}" --zone="${ZONE}" \
  --accelerator-type="${ACCELERATOR}" --runtime-version="${RUNTIME_VERSION}" \
  "${node_args[@]}" "${capacity_args[@]}" "${valid_args[@]}"

if [[ "${wait_active}" -eq 0 ]]; then
  exit 0
fi
describe=(gcloud compute tpus queued-resources describe "${TPU_NAME}" --project="${PROJECT}"
          --zone="${ZONE}" --format='value(state.state)')
if [[ "${DRY_RUN}" == 1 ]]; then
  run_cmd "${describe[@]}"
  note "the describe command repeats every 60 s until the state is ACTIVE (FAILED or SUSPENDED: exit 1)"
  exit 0
fi
while true; do
  state="$("${describe[@]}")"
  case "${state}" in
    ACTIVE) break ;;
    FAILED|SUSPENDED)
      die "queued resource ${TPU_NAME} is ${state}; see: gcloud compute tpus queued-resources describe ${TPU_NAME} --zone=${ZONE}" ;;
  esac
  echo "queued resource ${TPU_NAME}: ${state:-unknown}; waiting..."
  sleep 60
done
echo "Active: $(nodes | tr '\n' ' ')"
