#!/usr/bin/env bash
# Run one jaxseg command as N cooperating processes on this machine (127.0.0.1).
#
#   launch/local.sh N python -m jaxseg.train --config configs/demo.py --workdir runs/x
#
# Each process gets JAXSEG_COORDINATOR, JAXSEG_NUM_PROCESSES and JAXSEG_PROCESS_ID, and
# (unless set) JAX_PLATFORMS=cpu with JAXSEG_LOCAL_DEVICES fake CPU devices (default 2).
# Output of process i goes to stdout prefixed "[i]". The script exits with the first
# non-zero status, after stopping the other processes.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: launch/local.sh N COMMAND [ARGS...]   (N >= 1 processes)" >&2
  exit 2
fi
n=$1
shift
port=${JAXSEG_PORT:-$((20000 + RANDOM % 20000))}
devices=${JAXSEG_LOCAL_DEVICES:-2}
export JAXSEG_COORDINATOR="127.0.0.1:${port}"
export JAXSEG_NUM_PROCESSES="$n"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  for ((i = 0; i < n; i++)); do
    echo "JAXSEG_COORDINATOR=$JAXSEG_COORDINATOR JAXSEG_NUM_PROCESSES=$n JAXSEG_PROCESS_ID=$i JAX_PLATFORMS=$JAX_PLATFORMS XLA_FLAGS='${flags# }' $*"
  done
  exit 0
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 0; i < n; i++)); do
  JAXSEG_PROCESS_ID=$i XLA_FLAGS="${flags# }" "$@" > >(sed "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { status=$?; break; }
done
if [[ $status -ne 0 ]]; then
  cleanup
fi
wait 2>/dev/null || true
trap - EXIT
exit "$status"
