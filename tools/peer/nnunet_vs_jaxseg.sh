#!/usr/bin/env bash
# nnU-Net v2 and jaxseg side by side on one dataset, fold 0, the same wall-clock budget each.
#
#   tools/peer/nnunet_vs_jaxseg.sh DATASET_DIR [BUDGET_MINUTES=30] [OUT=runs/peer/NAME]
#
# 1. $OUT/nnunet_venv: nnunetv2==2.8.1 in its own virtual environment (never a jaxseg
#    dependency). torch: nnunetv2 -> dynamic-network-architectures -> timm -> torchvision,
#    and PyPI's torchvision does not import beside the torch 2.13.0 CPU file on this disk
#    (`operator torchvision::nms does not exist`), so pip would upgrade torch anyway; the
#    pair torch==2.14.1 torchvision==0.29.1 lies on this disk (a CUDA build, ~6 GB in the
#    venv, runs on the CPU). NNUNET_VENV=DIR reuses a venv elsewhere.
# 2. tools/peer/to_nnunet.py (jaxseg's venv): nnU-Net raw format, jaxseg's test split in
#    imagesTs only, splits_final.json = jaxseg's folds.
# 3. nnUNetv2_plan_and_preprocess (3d_fullres for 3D data, 2d for 2D), then nnUNetv2_train
#    fold 0 -device cpu with nnUNetTrainer_jaxsegBudget (written below into the venv's
#    trainer variants: it times its first iterations and sizes its epochs to the budget),
#    under `timeout` of the budget plus a margin.
# 4. nnUNetv2_predict on the test cases, fold 0, its default mirroring TTA.
# 5. jaxseg.plan; jaxseg.train fold 0 with train.steps sized from the plan's measured step
#    time to the same budget; jaxseg.evaluate --split test (mirroring TTA by default).
# 6. tools/peer/score_predictions.py: nnU-Net's test predictions scored by jaxseg's
#    metrics; the report (tables, plans side by side, times) to stdout and $OUT/report.md.
#
# A stage whose output exists is skipped (rerun after a failure resumes); delete $OUT to
# start over. Environment: NNUNET_VENV, NNUNET_DATASET_ID (default 501), JAXSEG_PYTHON,
# nnUNet_n_proc_DA (nnU-Net's augmentation processes; its default is min(12, cores)).
set -euo pipefail

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
[ -f "$1/dataset.json" ] || { echo "error: $1/dataset.json not found" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA=$(cd "$1" && pwd)
BUDGET_MIN=${2:-30}
OUT=${3:-$REPO/runs/peer/$(basename "$DATA")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
JPY=${JAXSEG_PYTHON:-$REPO/.venv/bin/python}
VENV=${NNUNET_VENV:-$OUT/nnunet_venv}
ID=${NNUNET_DATASET_ID:-501}
TRAINER=nnUNetTrainer_jaxsegBudget
BUDGET_S=$(awk -v m="$BUDGET_MIN" 'BEGIN { printf "%d", m * 60 }')
[ "$BUDGET_S" -ge 60 ] || { echo "error: BUDGET_MINUTES=$BUDGET_MIN: give at least 1" >&2; exit 2; }
MARGIN_S=$(( BUDGET_S / 4 > 300 ? BUDGET_S / 4 : 300 ))  # a kill switch; the time used is reported
T=$OUT/timings
mkdir -p "$T"
export nnUNet_raw=$OUT/nnUNet_raw nnUNet_preprocessed=$OUT/nnUNet_preprocessed
export nnUNet_results=$OUT/nnUNet_results
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

say() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
# timed NAME CMD...: runs CMD, writes its wall-clock seconds to $T/NAME.s, logs to $OUT/NAME.log
timed() {
  local name=$1 t0 rc=0
  shift
  t0=$(now)
  "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f\n", b - a }' > "$T/$name.s"
  echo "   $name: $(cat "$T/$name.s") s (log $OUT/$name.log)"
  if [ $rc -ne 0 ]; then
    echo "error: $name failed (exit $rc); the end of $OUT/$name.log:" >&2
    tail -n 30 "$OUT/$name.log" >&2
    exit $rc
  fi
}

# ----------------------------------------------------------------------------- 1. venv
say "1. nnU-Net venv ($VENV)"
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('nnunetv2') != '2.8.1')" 2>/dev/null; then
  echo "   nnunetv2 2.8.1 already installed"
else
  python3.11 -m venv "$VENV"
  timed install_nnunet bash -c "'$VENV/bin/pip' install torch==2.14.1 torchvision==0.29.1 && '$VENV/bin/pip' install nnunetv2==2.8.1"
fi
NNPKG=$("$VENV/bin/python" -c "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))" 2>/dev/null | tail -n 1)
TDIR=$NNPKG/training/nnUNetTrainer/variants/jaxseg_peer
mkdir -p "$TDIR"
touch "$TDIR/__init__.py"
cat > "$TDIR/$TRAINER.py" <<'PYEOF'
"""nnUNetTrainer sized to a wall-clock budget; written by jaxseg's tools/peer/nnunet_vs_jaxseg.sh.

The budget is JAXSEG_PEER_BUDGET_S seconds from JAXSEG_PEER_T0 (the Unix time at which
nnUNetv2_train was started), so start-up, data loading, training and nnU-Net's per-epoch
pseudo-Dice validation all count. After nnU-Net's own on_train_start, three training
iterations (they train the network like any other) and one validation iteration are timed;
the number of epochs is then fixed (10, or nnU-Net's 250-iteration epochs when more than
2,500 iterations fit) and the poly learning-rate schedule is set to it, and each epoch gets
as many iterations as fit, re-sized after every epoch from the measured epoch times.
Validation iterations keep nnU-Net's ratio 50:250. Once the budget is spent, the remaining
iterations of the last epochs are skipped (counted in `skipped_iterations`), so a slower
machine overshoots by at most part of one iteration. nnU-Net's final validation on fold 0's
val cases is skipped unless JAXSEG_PEER_NNUNET_VAL=1 (the comparison scores the test cases).
The sizing is written to fold_0/budget_trainer.json. Nothing of nnU-Net is changed but
these counts.
"""

import json
import os
import time
from os.path import isfile, join

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

VAL_RATIO = 50 / 250  # nnU-Net's validation iterations per training iteration
EPOCH_OVERHEAD_S = 2.0  # logging and progress.png per epoch, besides checkpoints


class nnUNetTrainer_jaxsegBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ.get("JAXSEG_PEER_BUDGET_S", "1800"))
        self.t0 = float(os.environ.get("JAXSEG_PEER_T0", time.time()))
        self.reserve_s = 5.0
        self.budget_log = {"budget_s": self.budget_s, "iterations_per_epoch": [],
                           "val_iterations_per_epoch": [], "epoch_seconds": [],
                           "skipped_iterations": 0, "calibration_iterations": 0}
        self._guard_s = None  # set after calibration: skip iterations past the budget
        self._last = {}

    def _left(self) -> float:
        return self.budget_s - (time.time() - self.t0) - self.reserve_s

    def _write_log(self) -> None:
        log = self.budget_log
        log["iterations_total"] = (log["calibration_iterations"] + sum(log["iterations_per_epoch"])
                                   - log["skipped_iterations"])
        log["elapsed_s"] = round(time.time() - self.t0, 1)
        with open(join(self.output_folder, "budget_trainer.json"), "w") as f:
            json.dump(log, f, indent=1)

    def _size_epoch(self, seconds_per_iteration: float, epochs_left: int, overhead: float) -> None:
        per_epoch = self._left() / max(1, epochs_left) - overhead
        n = max(1, int(per_epoch // seconds_per_iteration))
        self.num_iterations_per_epoch = n
        self.num_val_iterations_per_epoch = max(1, round(VAL_RATIO * n))

    def on_train_start(self):
        super().on_train_start()
        self.network.train()
        self.lr_scheduler.step(0)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            self.train_step(next(self.dataloader_train))
            times.append(time.perf_counter() - t)
        t_train = float(np.median(times[1:]))
        self.network.eval()
        with torch.no_grad():
            t = time.perf_counter()
            self.validation_step(next(self.dataloader_val))
            t_val = time.perf_counter() - t
        self.network.train()
        probe = join(self.output_folder, "checkpoint_budget_probe.pth")
        t = time.perf_counter()
        self.save_checkpoint(probe)
        t_save = time.perf_counter() - t
        if isfile(probe):
            os.remove(probe)
        self.reserve_s = 5.0 + t_save  # the final checkpoint
        overhead = EPOCH_OVERHEAD_S + t_save  # a new best checkpoint most epochs
        per_iter = t_train + VAL_RATIO * t_val
        total = int(max(0.0, self._left()) // per_iter)
        epochs = total // 250 if total > 2500 else max(1, min(10, total // 10))
        self.num_epochs = epochs
        self.lr_scheduler.max_steps = epochs
        self._size_epoch(per_iter, epochs, overhead)
        self.budget_log.update(
            calibration_iterations=3, seconds_per_iteration=round(t_train, 3),
            seconds_per_val_iteration=round(t_val, 3), checkpoint_seconds=round(t_save, 2),
            startup_s=round(time.time() - self.t0 - sum(times) - t_val - t_save, 1),
            epochs=epochs, planned_iterations=total)
        self._guard_s = 0.5 * t_train
        self.print_to_log_file(
            f"jaxseg budget trainer: {t_train:.2f} s per iteration, {t_val:.2f} s per validation "
            f"iteration; {epochs} epochs of {self.num_iterations_per_epoch} iterations fit the "
            f"{self.budget_s:.0f} s budget")

    def _spent(self) -> bool:
        return self._guard_s is not None and self._left() < self._guard_s

    def train_step(self, batch: dict) -> dict:
        if self._spent() and "train" in self._last:
            self.budget_log["skipped_iterations"] += 1
            return self._last["train"]
        self._last["train"] = super().train_step(batch)
        return self._last["train"]

    def validation_step(self, batch: dict) -> dict:
        if self._spent() and "val" in self._last:
            return self._last["val"]
        self._last["val"] = super().validation_step(batch)
        return self._last["val"]

    def on_epoch_end(self):
        start = self.logger.get_value("epoch_start_timestamps", step=-1)
        n = self.num_iterations_per_epoch
        self.budget_log["iterations_per_epoch"].append(n)
        self.budget_log["val_iterations_per_epoch"].append(self.num_val_iterations_per_epoch)
        super().on_epoch_end()  # checkpoints, progress.png; current_epoch += 1
        seconds = time.time() - start
        self.budget_log["epoch_seconds"].append(round(seconds, 1))
        left = self.num_epochs - self.current_epoch
        if left > 0:
            self._size_epoch(seconds / n, left, 0.0)
        self._write_log()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("JAXSEG_PEER_NNUNET_VAL") == "1":
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("jaxseg budget trainer: final validation skipped "
                               "(JAXSEG_PEER_NNUNET_VAL=1 runs it)")
PYEOF
echo "   trainer $TRAINER in $TDIR"

# ----------------------------------------------------------------------------- 2. convert
say "2. convert to nnU-Net raw format"
DS=$(cd "$nnUNet_raw" && ls -d "Dataset$(printf %03d "$ID")"_* 2>/dev/null | head -n 1 || true)
if [ -n "$DS" ] && [ -f "$nnUNet_raw/$DS/jaxseg_conversion.json" ]; then
  echo "   $nnUNet_raw/$DS exists"
else
  timed convert "$JPY" "$REPO/tools/peer/to_nnunet.py" --data "$DATA" --raw "$nnUNet_raw" --id "$ID"
  DS=$(basename "$(tail -n 1 "$OUT/convert.log")")
fi
DIMS=$("$JPY" -c "import json,sys; print(json.load(open(sys.argv[1]))['dims'])" "$nnUNet_raw/$DS/jaxseg_conversion.json")
if [ "$DIMS" = 2 ]; then CFG=2d; else CFG=3d_fullres; fi
echo "   $DS: ${DIMS}D, nnU-Net configuration $CFG"

# ----------------------------------------------------------------------------- 3. nnU-Net
say "3. nnU-Net plan, preprocess and train ($BUDGET_S s budget)"
PRE=$nnUNet_preprocessed/$DS
NP=$(nproc)
if [ -f "$PRE/nnUNetPlans.json" ] && [ -d "$PRE/nnUNetPlans_$CFG" ]; then
  echo "   $PRE exists"
else
  timed nnunet_plan "$VENV/bin/nnUNetv2_plan_and_preprocess" -d "$ID" --verify_dataset_integrity \
    -c "$CFG" -np "$NP" -npfp "$NP"
fi
cp "$nnUNet_raw/$DS/splits_final.json" "$PRE/splits_final.json"  # jaxseg's folds
FOLD_DIR=$nnUNet_results/$DS/${TRAINER}__nnUNetPlans__$CFG/fold_0
if [ -f "$FOLD_DIR/checkpoint_final.pth" ]; then
  echo "   $FOLD_DIR/checkpoint_final.pth exists"
else
  export JAXSEG_PEER_BUDGET_S=$BUDGET_S
  JAXSEG_PEER_T0=$(now)
  export JAXSEG_PEER_T0
  timed nnunet_train timeout --signal=INT --kill-after=30 $((BUDGET_S + MARGIN_S)) \
    "$VENV/bin/nnUNetv2_train" "$ID" "$CFG" 0 -tr "$TRAINER" -device cpu
fi

say "4. nnU-Net predicts the test cases (fold 0, mirroring TTA)"
if [ -n "$(ls "$OUT/nnunet_pred"/*.nii.gz 2>/dev/null)" ]; then
  echo "   $OUT/nnunet_pred exists"
else
  timed nnunet_predict "$VENV/bin/nnUNetv2_predict" -i "$nnUNet_raw/$DS/imagesTs" \
    -o "$OUT/nnunet_pred" -d "$ID" -c "$CFG" -f 0 -tr "$TRAINER" -device cpu \
    -npp 1 -nps 1 --disable_progress_bar
fi

# ----------------------------------------------------------------------------- 5. jaxseg
say "5. jaxseg plan, train ($BUDGET_S s budget) and evaluate"
if [ -f "$OUT/jaxseg_plan/plan.json" ]; then
  echo "   $OUT/jaxseg_plan exists"
else
  timed jaxseg_plan "$JPY" -m jaxseg.plan --data "$DATA" --out "$OUT/jaxseg_plan" --force
fi
# Steps that fit the budget: the plan's measured step time (plan.json training.step_seconds),
# less a reserve for start-up (30 s), the train step's compile (as the plan measured it),
# the predictor's (a quarter of that) and one validation at the end (eval_every = steps):
# sliding windows over the fold's val cases at a third of a train step per window batch.
SIZING=$("$JPY" - "$OUT/jaxseg_plan/plan.json" "$BUDGET_S" "$PRE/splits_final.json" <<'PYEOF'
import json, math, sys
plan = json.load(open(sys.argv[1])); budget = float(sys.argv[2])
val_cases = min(16, len(json.load(open(sys.argv[3]))[0]["val"]))  # eval.max_val_cases
step = float(plan["training"]["step_seconds"])
patch, median, batch = plan["patch_size"], plan["median_shape"], plan["batch_size"]
runs = plan["memory"]["measurements"]
mine = [m for m in runs if list(m["patch"]) == list(patch) and m["batch"] == batch]
compile_s = float((mine or runs)[-1].get("compile_s", 60.0)) if runs else 60.0
windows = math.prod(max(1, math.ceil((m - p) / (p / 2)) + 1) for m, p in zip(median, patch))
reserve = 30 + 1.25 * compile_s + val_cases * math.ceil(windows / batch) * step / 3
steps = max(1, int((budget - reserve) // step))
warmup = min(1000, max(50, steps // 100), max(steps - 1, 1))  # the planner's rule
print(steps, warmup, step, round(reserve))
PYEOF
)
read -r STEPS WARMUP STEP_S RESERVE_S <<< "$SIZING"
echo "   step $STEP_S s (plan.json training.step_seconds); reserve ${RESERVE_S} s; $STEPS steps"
if [ -f "$OUT/jaxseg/train.done" ]; then
  echo "   $OUT/jaxseg trained"
else
  timed jaxseg_train timeout --signal=INT --kill-after=30 $((BUDGET_S + MARGIN_S)) \
    "$JPY" -m jaxseg.train --config "$OUT/jaxseg_plan/config.py" --workdir "$OUT/jaxseg" \
    --config.data.fold=0 --config.train.steps="$STEPS" --config.train.warmup_steps="$WARMUP" \
    --config.train.eval_every="$STEPS" --config.train.checkpoint_every="$STEPS"
  touch "$OUT/jaxseg/train.done"
fi
# The two runs must have trained and validated on the same cases, and test on the same.
"$JPY" - "$OUT/jaxseg/splits.json" "$PRE/splits_final.json" "$nnUNet_raw/$DS/jaxseg_conversion.json" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1])); n = json.load(open(sys.argv[2]))[0]
test = json.load(open(sys.argv[3]))["test"]
for name, a, b in (("train", j["train"], n["train"]), ("val", j["val"], n["val"]), ("test", j["test"], test)):
    if sorted(a) != sorted(b):
        sys.exit(f"error: jaxseg's {name} split differs from nnU-Net's: {sorted(a)} vs {sorted(b)}")
print(f"   same splits: {len(j['train'])} train, {len(j['val'])} val, {len(j['test'])} test cases")
PYEOF
if [ -f "$OUT/jaxseg/eval_test/summary.json" ]; then
  echo "   $OUT/jaxseg/eval_test exists"
else
  timed jaxseg_evaluate "$JPY" -m jaxseg.evaluate --workdir "$OUT/jaxseg" --split test
fi

# ----------------------------------------------------------------------------- 6. report
say "6. score nnU-Net's predictions with jaxseg's metrics; the report"
timed nnunet_score "$JPY" "$REPO/tools/peer/score_predictions.py" score --data "$DATA" \
  --pred "$OUT/nnunet_pred" --out "$OUT/nnunet_eval_test"
sec() { cat "$T/$1.s" 2>/dev/null || echo null; }
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || echo CPU)
cat > "$OUT/timings.json" <<EOF
{"dataset": "$(basename "$DATA")", "budget_s": $BUDGET_S, "machine": "$NP cores, $CPU",
 "nnunet": {"plan_and_preprocess_s": $(sec nnunet_plan), "train_s": $(sec nnunet_train),
            "predict_s": $(sec nnunet_predict), "configuration": "$CFG"},
 "jaxseg": {"plan_s": $(sec jaxseg_plan), "train_s": $(sec jaxseg_train),
            "evaluate_s": $(sec jaxseg_evaluate), "steps": $STEPS, "step_s": $STEP_S,
            "reserve_s": $RESERVE_S}}
EOF
"$JPY" "$REPO/tools/peer/score_predictions.py" report \
  --nnunet-summary "$OUT/nnunet_eval_test/summary.json" \
  --jaxseg-summary "$OUT/jaxseg/eval_test/summary.json" \
  --nnunet-plans "$PRE/nnUNetPlans.json" --nnunet-config "$CFG" \
  --jaxseg-plan "$OUT/jaxseg_plan/plan.json" --timings "$OUT/timings.json" \
  --nnunet-trainer-log "$FOLD_DIR/budget_trainer.json" --out "$OUT/report.md"
echo "report: $OUT/report.md"
