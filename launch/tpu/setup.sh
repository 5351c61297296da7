#!/usr/bin/env bash
# Copies this repository to every host, installs it into a Python >= 3.12 environment, and
# mounts $BUCKET.
#   launch/tpu/setup.sh [--dry-run]          (after create.sh; re-run after changing the code)
# On every host of every slice:
#   1. unpacks the tracked files (HEAD plus uncommitted changes to them) into ~/REPO_DIR;
#   2. installs uv if missing (from PyPI with `pip install --user uv`, else with astral's
#      installer; both into ~/.local/bin), a uv-managed
#      CPython PYTHON_VERSION (the images' python3 is 3.10) and the venv ~/VENV with it;
#   3. installs the package, once: `uv pip install -c requirements.lock -e '.[train,tpu,gcp]'`
#      (the tested versions, plus the `tpu` extra's libtpu and the `gcp` extra's gcsfs);
#   4. prints each host's Python, process index and local chips;
#   5. with BUCKET set, mounts it at MOUNT with gcsfuse (installed if missing).
set -euo pipefail
USAGE="launch/tpu/setup.sh [--dry-run]"
source "$(dirname "$0")/env.sh"
parse_common_args "$@"
if [[ ${#REST[@]} -gt 0 ]]; then usage_error "unexpected arguments: ${REST[*]}"; fi
require PROJECT ZONE TPU_NAME
cd "${REPO_ROOT}"

archive="${TMPDIR:-/tmp}/cyb_jax-$$.tar.gz"
if [[ "${DRY_RUN}" == 1 ]]; then
  note "local: git ls-files -z | tar --null -czf ${archive} -T -"
else
  trap 'rm -f "${archive}"' EXIT
  git ls-files -z | tar --null -czf "${archive}" -T -
fi
for node in $(nodes); do
  run_cmd gcloud compute tpus tpu-vm scp "${archive}" "${node}:~/cyb_jax.tar.gz" \
    --project="${PROJECT}" --zone="${ZONE}" --worker=all
done

on_all_hosts "set -euo pipefail
rm -rf ~/${REPO_DIR} && mkdir -p ~/${REPO_DIR} && tar -xzf ~/cyb_jax.tar.gz -C ~/${REPO_DIR}
export PATH=\"\$HOME/.local/bin:\$PATH\"
command -v uv >/dev/null || python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh
uv python install ${PYTHON_VERSION}
if ! ~/${VENV}/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
  rm -rf ~/${VENV}
  uv venv --seed --python ${PYTHON_VERSION} --python-preference only-managed ~/${VENV}
fi
cd ~/${REPO_DIR}
uv pip install --python ~/${VENV}/bin/python --quiet -c requirements.lock -e '.[train,tpu,gcp]'
~/${VENV}/bin/python -c 'import sys, jax; print(jax.process_index(), sys.version.split()[0], jax.local_device_count(), jax.devices()[0].device_kind)'"

if [[ -n "${BUCKET}" ]]; then
  # gcsfuse gives every host the same POSIX view of the bucket: orbax writes each host's
  # shards there, and process 0 writes metrics.jsonl, config.json and report.md.
  on_all_hosts "set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p ${MOUNT} && sudo chown \$USER ${MOUNT}
mountpoint -q ${MOUNT} || gcsfuse --implicit-dirs --rename-dir-limit=1000000 ${BUCKET#gs://} ${MOUNT}"
else
  note "BUCKET is not set: no bucket mounted (train.sh needs it)"
fi
if [[ "${DRY_RUN}" != 1 ]]; then echo "Set up: $(nodes | tr '\n' ' ')"; fi
