# Settings and helpers shared by the launch/tpu scripts (sourced by them, not run).
#
# Settings, read from the environment (export them, or prefix a command):
#   PROJECT          Google Cloud project. Default: `gcloud config get-value project`
#                    (not consulted under --dry-run, where PROJECT must be set).
#   ZONE             zone with TPU quota for ACCELERATOR, e.g. us-west4-a. Required.
#   TPU_NAME         name of the queued resource and of its node (one slice), or the node
#                    prefix (NUM_SLICES > 1: nodes TPU_NAME-0 .. TPU_NAME-<N-1>). Default cyb-jax.
#   ACCELERATOR      accelerator type of ONE slice, e.g. v5litepod-16 (create.sh). Required there.
#   RUNTIME_VERSION  TPU VM image, e.g. v2-alpha-tpuv5-lite (create.sh). Required there.
#                    Pairs: v4-* / tpu-ubuntu2204-base, v5litepod-* / v2-alpha-tpuv5-lite,
#                    v5p-* / v2-alpha-tpuv5, v6e-* / v2-alpha-tpuv6e.
#   NUM_SLICES       1 (default), or S > 1 for a multislice job of S identical slices.
#   BUCKET           gs://BUCKET for runs; setup.sh mounts it, train.sh requires it.
#   MOUNT            where every host mounts BUCKET (default /mnt/gcs).
#   REPO_DIR         the repository's copy on every host, relative to ~ (default cyb_jax).
#   VENV             its virtual environment, relative to ~ (default venv-cyb).
#   PYTHON_VERSION   Python of that environment, installed by uv (default 3.12; the TPU VM
#                    images' own python3 is 3.10, the project needs >= 3.12).
#
# Every script takes --dry-run (also DRY_RUN=1): it prints, one per "+ " line, the gcloud
# commands it would run and runs nothing (no gcloud call at all, not even to read settings).

: "${PROJECT:=}"
: "${ZONE:=}"
: "${TPU_NAME:=cyb-jax}"
: "${ACCELERATOR:=}"
: "${RUNTIME_VERSION:=}"
: "${NUM_SLICES:=1}"
: "${BUCKET:=}"
: "${MOUNT:=/mnt/gcs}"
: "${REPO_DIR:=cyb_jax}"
: "${VENV:=venv-cyb}"
: "${PYTHON_VERSION:=3.12}"
: "${DRY_RUN:=0}"

TPU_SCRIPT="launch/tpu/$(basename "$0")"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"  # the checkout of these scripts

# die MESSAGE: prints "launch/tpu/X.sh: MESSAGE" to stderr and exits with status 1.
die() {
  echo "${TPU_SCRIPT}: $*" >&2
  exit 1
}

# usage_error MESSAGE: the message and the script's USAGE line, exit status 2.
usage_error() {
  echo "${TPU_SCRIPT}: $*" >&2
  echo "usage: ${USAGE}" >&2
  exit 2
}

# What each setting is, for the message when it is missing.
describe_setting() {
  case "$1" in
    PROJECT) echo "the Google Cloud project (or run: gcloud config set project YOUR_PROJECT)" ;;
    ZONE) echo "a zone with TPU quota, e.g. ZONE=us-west4-a" ;;
    TPU_NAME) echo "the queued resource / node name, e.g. TPU_NAME=cyb-v5e" ;;
    ACCELERATOR) echo "the accelerator type of one slice, e.g. ACCELERATOR=v5litepod-16" ;;
    RUNTIME_VERSION) echo "the TPU VM image, e.g. RUNTIME_VERSION=v2-alpha-tpuv5-lite" ;;
    BUCKET) echo "gs://BUCKET shared by all hosts for the runs (then run setup.sh)" ;;
    *) echo "see launch/tpu/env.sh" ;;
  esac
}

# require NAME...: fails with a clear message naming the first unset setting.
require() {
  local name
  for name in "$@"; do
    if [[ "${name}" == PROJECT && -z "${PROJECT}" && "${DRY_RUN}" != 1 ]] \
        && command -v gcloud >/dev/null; then
      PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
    fi
    if [[ -z "${!name:-}" ]]; then
      die "set ${name}: $(describe_setting "${name}")."
    fi
  done
  if ! [[ "${NUM_SLICES}" =~ ^[1-9][0-9]*$ ]]; then
    die "NUM_SLICES=${NUM_SLICES} must be a positive integer (1 = one slice)."
  fi
  if [[ -n "${BUCKET}" && "${BUCKET}" != gs://* ]]; then
    die "BUCKET=${BUCKET} must be a gs:// URL, e.g. gs://my-bucket."
  fi
}

# parse_common_args ARG...: handles --dry-run and -h/--help; the other arguments are
# left, in order, in the array REST.
parse_common_args() {
  REST=()
  local arg
  for arg in "$@"; do
    case "${arg}" in
      --dry-run) DRY_RUN=1 ;;
      -h|--help) echo "usage: ${USAGE}"; exit 0 ;;
      *) REST+=("${arg}") ;;
    esac
  done
}

# quote_cmd ARG...: the command as one line that a shell reads back as the same words.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do
    if [[ -n "${arg}" && "${arg}" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="${arg} "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# run_cmd CMD ARG...: runs the command, or under --dry-run prints it after "+ ".
run_cmd() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '+ %s\n' "$(quote_cmd "$@")"
  else
    "$@"
  fi
}

# note TEXT: a remark in the dry-run output (lines starting with "# " are not commands).
note() {
  if [[ "${DRY_RUN}" == 1 ]]; then printf '# %s\n' "$*"; fi
}

# The TPU VM nodes of the job: one per slice.
nodes() {
  if [[ "${NUM_SLICES}" -eq 1 ]]; then
    echo "${TPU_NAME}"
  else
    local i
    for ((i = 0; i < NUM_SLICES; i++)); do echo "${TPU_NAME}-${i}"; done
  fi
}

# on_all_hosts 'COMMAND': runs COMMAND (bash) on every host (--worker=all) of every slice,
# the slices in parallel, and fails if any host fails.
on_all_hosts() {
  local node status=0 pids=()
  for node in $(nodes); do
    if [[ "${DRY_RUN}" == 1 ]]; then
      run_cmd gcloud compute tpus tpu-vm ssh "${node}" --project="${PROJECT}" --zone="${ZONE}" \
        --worker=all --command="$1"
    else
      gcloud compute tpus tpu-vm ssh "${node}" --project="${PROJECT}" --zone="${ZONE}" \
        --worker=all --command="$1" &
      pids+=($!)
    fi
  done
  for pid in "${pids[@]}"; do wait "${pid}" || status=1; done
  return "${status}"
}

# check_run_name NAME: a run name is one path component of letters, digits, ".", "_", "-".
check_run_name() {
  if ! [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    usage_error "RUN_NAME='$1' must be letters, digits, '.', '_' or '-' (it names a folder and a log)."
  fi
}
