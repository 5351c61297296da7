#!/usr/bin/env bash
# Copies this repository to every host, installs it with JAX for TPU, and mounts $BUCKET.
#   launch/tpu/setup.sh            (run from the repository root, after create.sh)
# Re-run it after changing the code: it replaces the copy on every host (HEAD plus
# uncommitted changes to tracked files).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$(git rev-parse --show-toplevel)"

archive="$(mktemp /tmp/cyb_jax.XXXXXX.tar.gz)"
trap 'rm -f "${archive}"' EXIT
git ls-files -z | tar --null -czf "${archive}" -T -
for node in $(nodes); do
  gcloud compute tpus tpu-vm scp "${archive}" "${node}:~/cyb_jax.tar.gz" --project="${PROJECT}" \
    --zone="${ZONE}" --worker=all
done

# jax[tpu] pins the libtpu that matches the jax of requirements.lock.
on_all_hosts "set -e
  rm -rf ~/${REPO_DIR} && mkdir -p ~/${REPO_DIR} && tar -xzf ~/cyb_jax.tar.gz -C ~/${REPO_DIR}
  test -x ~/${VENV}/bin/python || python3 -m venv ~/${VENV}
  cd ~/${REPO_DIR}
  ~/${VENV}/bin/pip install -q --upgrade pip
  ~/${VENV}/bin/pip install -q -c requirements.lock -e . 'jax[tpu]'
  ~/${VENV}/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"

if [[ -n "${BUCKET}" ]]; then
  # gcsfuse gives every host the same POSIX view of the bucket: orbax writes each host's
  # shards there, and process 0 writes metrics.jsonl, config.json and report.md.
  on_all_hosts "set -e
    if ! command -v gcsfuse >/dev/null; then
      export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)
      echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
      curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
    fi
    sudo mkdir -p ${MOUNT} && sudo chown \$USER ${MOUNT}
    mountpoint -q ${MOUNT} || gcsfuse --implicit-dirs --rename-dir-limit=1000000 ${BUCKET#gs://} ${MOUNT}"
fi
echo "Set up: $(nodes | tr '\n' ' ')"
