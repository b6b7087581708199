#!/usr/bin/env bash
# Fill launch/gke/jobset.yaml from the environment and apply it (or print it).
#
#   JOB_NAME=seg1 IMAGE=us-docker.pkg.dev/p/r/jaxseg:latest CONFIG=configs/swinunetr_3d.py \
#   WORKDIR=gs://bucket/seg1 TPU_ACCELERATOR=tpu-v5p-slice TPU_TOPOLOGY=2x2x2 NUM_HOSTS=2 \
#   CHIPS_PER_HOST=4 launch/gke/render.sh apply
#
# Required: JOB_NAME IMAGE CONFIG WORKDIR TPU_ACCELERATOR TPU_TOPOLOGY NUM_HOSTS CHIPS_PER_HOST.
# Optional: MAX_RESTARTS (default 3). `render.sh print` prints the manifest; `apply` and
# `delete` need kubectl. DRY_RUN=1 prints the kubectl command instead of running it.
set -euo pipefail
action=${1:-print}
here=$(cd "$(dirname "$0")" && pwd)
export MAX_RESTARTS=${MAX_RESTARTS:-3}
missing=()
for var in JOB_NAME IMAGE CONFIG WORKDIR TPU_ACCELERATOR TPU_TOPOLOGY NUM_HOSTS CHIPS_PER_HOST; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "launch/gke/render.sh: set ${missing[*]} (see the header of this script)" >&2
  exit 2
fi
manifest=$(python3 - "$here/jobset.yaml" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
print(re.sub(r"\$\{(\w+)\}", lambda m: os.environ[m.group(1)], text), end="")
PY
)
case "$action" in
  print) echo "$manifest" ;;
  apply|delete)
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
      echo "kubectl $action -f -"
      echo "$manifest"
      exit 0
    fi
    command -v kubectl >/dev/null 2>&1 || {
      echo "launch/gke/render.sh: kubectl is not installed or not on PATH; install it, or use" \
           "'print' / DRY_RUN=1 to see the manifest" >&2
      exit 127
    }
    echo "$manifest" | kubectl "$action" -f -
    ;;
  *) echo "usage: launch/gke/render.sh print|apply|delete" >&2; exit 2 ;;
esac
