#!/usr/bin/env bash
# scripts/bench_prefetch.sh: the step time with and without the data prefetch thread (data.prefetch)
# on a cold file. Before each run the token file is dropped from the page cache
# (posix_fadvise DONTNEED), so the draws read from disk (HDF5: chunks read and inflated). One rank,
# configs/tiny.yaml, data.sample: document; prints a table and the ratio, run next to each other.
#
#   scripts/bench_prefetch.sh [STEPS]          # default 60 steps per run
#   EXTRA="--set model.d_model=64 --set model.n_layers=2" scripts/bench_prefetch.sh   # a smaller model
#   ORDER="false true" ...                      # the other run first (the second run of a pair
#                                               # tends to be faster here: run both orders)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/switchyard ] || bash scripts/setup.sh
source scripts/env.sh
source scripts/corpus.sh
ensure_corpus
STEPS=${1:-60}
OUT=${BENCH_DIR:-runs/bench_prefetch}
mkdir -p "$OUT"
evict() { /usr/bin/python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)" "$1"; }
for pf in ${ORDER:-true false}; do
  evict "$CORPUS"
  build/switchyard train --config configs/tiny.yaml --run-dir "$OUT/prefetch_$pf" --overwrite \
    --set train.steps="$STEPS" --set train.eval_interval=0 --set data.sample=document \
    --set data.prefetch=$pf --set checkpoint.interval=0 ${EXTRA:-} >"$OUT/prefetch_$pf.log"
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = {}
for pf in ("true", "false"):
    recs = [r for r in map(json.loads, open(f"{out}/prefetch_{pf}/metrics.jsonl")) if "step_ms" in r][1:]
    rows[pf] = (statistics.median(r["step_ms"] for r in recs), statistics.mean(r["data_wait_ms"] for r in recs),
                max(r["data_wait_ms"] for r in recs), statistics.median(r["tokens_per_s"] for r in recs))
print(f"{'data.prefetch':>14} {'step ms (median)':>17} {'data wait ms (mean)':>20} {'(max)':>8} {'tokens/s':>9}")
for pf, (st, wm, wx, tps) in rows.items():
    print(f"{pf:>14} {st:>17.1f} {wm:>20.2f} {wx:>8.2f} {tps:>9.0f}")
print(f"ratio tokens/s with / without prefetch: {rows['true'][3] / rows['false'][3]:.3f}")
PY
