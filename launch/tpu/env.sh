# Settings shared by the launch/tpu scripts (sourced, not run). Override any of them in the
# environment, e.g.  TPU_NAME=my-v4 ACCELERATOR=v4-32 RUNTIME_VERSION=tpu-ubuntu2204-base ...
#
#   ACCELERATOR / RUNTIME_VERSION pairs:  v5litepod-16 / v2-alpha-tpuv5-lite,
#   v4-32 / tpu-ubuntu2204-base,  v5p-32 / v2-alpha-tpuv5,  v6e-16 / v2-alpha-tpuv6e.

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${ZONE:=us-west4-a}"                      # a zone with quota for $ACCELERATOR
: "${TPU_NAME:=cyb-jax}"                      # the slice (or, with NUM_SLICES > 1, the node prefix)
: "${ACCELERATOR:=v5litepod-16}"              # 16 v5e chips on 4 hosts
: "${RUNTIME_VERSION:=v2-alpha-tpuv5-lite}"
: "${NUM_SLICES:=1}"                          # > 1: a multi-slice job from a queued resource
: "${BUCKET:=}"                               # gs://BUCKET for runs (checkpoints, metrics), mounted by setup.sh
: "${MOUNT:=/mnt/gcs}"                        # where every host mounts $BUCKET (same path on all)
: "${REPO_DIR:=cyb_jax}"                      # the repository on every host, relative to ~
: "${VENV:=venv-cyb}"                         # its virtual environment, relative to ~

if [[ -z "${PROJECT}" ]]; then
  echo "Set PROJECT (or run: gcloud config set project YOUR_PROJECT)." >&2
  return 1 2>/dev/null || exit 1  # sourced from a shell: do not close it
fi

# The TPU VM nodes of the job: one per slice.
nodes() {
  if [[ "${NUM_SLICES}" -eq 1 ]]; then
    echo "${TPU_NAME}"
  else
    for ((i = 0; i < NUM_SLICES; i++)); do echo "${TPU_NAME}-${i}"; done
  fi
}

# on_all_hosts 'COMMAND': runs COMMAND on every host of every slice (in parallel) and fails
# if any host fails.
on_all_hosts() {
  local pids=() node status=0
  for node in $(nodes); do
    gcloud compute tpus tpu-vm ssh "${node}" --project="${PROJECT}" --zone="${ZONE}" \
      --worker=all --command="$1" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "${pid}" || status=1; done
  return "${status}"
}
