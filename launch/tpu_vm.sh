#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it, copy this checkout, run the same command on
# every worker, and stop or delete the slice.
#
#   launch/tpu_vm.sh create                      # create the slice ($TPU_NAME, $TPU_TYPE, ...)
#   launch/tpu_vm.sh setup                       # copy the code, make .venv with jax[tpu] on all workers
#   launch/tpu_vm.sh run -- python -m jaxseg.train --config configs/X.py --workdir gs://bucket/run
#   launch/tpu_vm.sh stop | start | delete
#
# Environment (required: TPU_NAME, TPU_ZONE, TPU_PROJECT):
#   TPU_NAME      name of the slice, e.g. jaxseg-v5p-64
#   TPU_ZONE      e.g. us-east5-a
#   TPU_PROJECT   Google Cloud project id
#   TPU_TYPE      accelerator type for create (default v5litepod-16)
#   TPU_VERSION   runtime version for create (default v2-alpha-tpuv5-lite)
#   TPU_SPOT      1 to create a Spot slice (preemptible; rerunning `run` resumes training)
#   REMOTE_DIR    where the code goes on the workers (default ~/jaxseg)
#   DRY_RUN       1 prints the gcloud commands instead of running them
#
# jax.distributed needs no flags on a TPU slice: jaxseg.train detects the workers itself.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
action=$1
shift

missing=()
for var in TPU_NAME TPU_ZONE TPU_PROJECT; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "launch/tpu_vm.sh: set ${missing[*]} (see the header of this script)" >&2
  exit 2
fi
TPU_TYPE=${TPU_TYPE:-v5litepod-16}
TPU_VERSION=${TPU_VERSION:-v2-alpha-tpuv5-lite}
REMOTE_DIR=${REMOTE_DIR:-'~/jaxseg'}
common=(--zone="$TPU_ZONE" --project="$TPU_PROJECT")

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

if [[ "${DRY_RUN:-0}" != 1 ]] && ! command -v gcloud >/dev/null 2>&1; then
  echo "launch/tpu_vm.sh: gcloud is not installed or not on PATH; install the Google Cloud" \
       "CLI (https://cloud.google.com/sdk) or use DRY_RUN=1 to print the commands" >&2
  exit 127
fi

ssh_all() { run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --worker=all --command="$1"; }

case "$action" in
  create)
    spot=()
    [[ "${TPU_SPOT:-0}" == 1 ]] && spot=(--spot)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${common[@]}" \
      --accelerator-type="$TPU_TYPE" --version="$TPU_VERSION" "${spot[@]}"
    ;;
  setup)
    here=$(cd "$(dirname "$0")/.." && pwd)
    archive=$(mktemp -u /tmp/jaxseg-XXXXXX).tar.gz
    run git -C "$here" archive --format=tar.gz -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:/tmp/jaxseg.tar.gz" "${common[@]}" --worker=all
    ssh_all "mkdir -p $REMOTE_DIR && tar -xzf /tmp/jaxseg.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
    ;;
  run)
    [[ "${1:-}" == "--" ]] && shift
    [[ $# -ge 1 ]] || { echo "launch/tpu_vm.sh run -- COMMAND ..." >&2; exit 2; }
    cmd=$(printf '%q ' "$@")
    ssh_all "cd $REMOTE_DIR && source .venv/bin/activate && $cmd"
    ;;
  stop)   run gcloud compute tpus tpu-vm stop "$TPU_NAME" "${common[@]}" ;;
  start)  run gcloud compute tpus tpu-vm start "$TPU_NAME" "${common[@]}" ;;
  delete) run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${common[@]}" --quiet ;;
  *) usage ;;
esac
