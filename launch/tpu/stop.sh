#!/usr/bin/env bash
# Stops a run cleanly: SIGTERM to the trainer on every host. The trainer finishes its step,
# all processes agree on the stopping step, save one checkpoint and exit; train.sh with the
# same RUN_NAME resumes from it. NOTE: on several hosts this needs the trainer to leave
# SIGTERM to JAX's preemption notifier (docs/tpu_pods.md, "Known limits"); until then the
# processes stop at different steps and hang in the save.
#   launch/tpu/stop.sh RUN_NAME
set -euo pipefail
source "$(dirname "$0")/env.sh"
run="${1:?usage: $0 RUN_NAME}"
on_all_hosts "test -f ~/logs/${run}.pid && kill -TERM \$(cat ~/logs/${run}.pid) || true"
