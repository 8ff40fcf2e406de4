#!/usr/bin/env bash
# scripts/bench_activation_memory.sh: measured activation memory per checkpointing policy next to
# `switchyard plan`'s prediction, on the tiny config with 4 and with 8 layers.
#   measured (backend): the backend's peak allocated bytes during the first step minus what the
#     model and optimizer hold besides activations (metrics.jsonl: activation_mb);
#   measured (RSS): the process's peak resident memory (VmHWM), independent of the backend's own
#     accounting; its difference to the `none` run is compared with the plan's difference;
#   plan: `switchyard plan` (launch/plan.h), the same number the trainer prints at start-up;
#   step time: median of steps 2..STEPS, the cost of recomputation.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench_env.sh
STEPS=${STEPS:-6}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
for L in 4 8; do
  for r in none selective full; do
    build/switchyard plan --config configs/tiny.yaml --set model.n_layers=$L \
      --set train.activation_checkpointing=$r > "$OUT/plan-$L-$r.txt"
    build/switchyard train --config configs/tiny.yaml --run-dir "$OUT/run-$L-$r" --set model.n_layers=$L \
      --set train.activation_checkpointing=$r --set train.steps="$STEPS" --set train.threads="$THREADS" \
      --set train.eval_interval=0 --set train.eval_windows=1 > "$OUT/run-$L-$r.log"
  done
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, re, statistics, sys
out = sys.argv[1]
print(f"{'layers':>6} {'policy':<10}{'plan MiB':>10}{'measured':>10}{'ratio':>7}{'RSS MiB':>9}"
      f"{'RSS-none':>10}{'plan-none':>10}{'step ms':>9}")
for L in (4, 8):
    base = {}
    for r in ("none", "selective", "full"):
        plan_txt = open(f"{out}/plan-{L}-{r}.txt").read()
        m = re.search(r"activations, checkpointing " + r + r"\s+([\d.]+) MiB", plan_txt)
        plan = float(m.group(1))
        recs = [json.loads(l) for l in open(f"{out}/run-{L}-{r}/metrics.jsonl") if '"loss"' in l]
        meas, rss = recs[0]["activation_mb"], recs[0]["rss_peak_mb"]
        ms = statistics.median(x["step_ms"] for x in recs[1:])
        if r == "none":
            base = dict(rss=rss, plan=plan)
        print(f"{L:>6} {r:<10}{plan:>10.1f}{meas:>10.1f}{meas/plan:>7.3f}{rss:>9.0f}"
              f"{rss-base['rss']:>10.1f}{plan-base['plan']:>10.1f}{ms:>9.0f}")
PY
echo "runs in $OUT" >&2
