#!/usr/bin/env bash
# scripts/bench_ranks.sh: tiny training throughput at np=1, 2, 4 on this machine (same global batch
# of 8 x 256 tokens; cores / ranks threads each), data parallel (E=1) and expert parallel (E=np),
# with the share of the step spent in token exchange and gradient reduction. On one 2-core machine
# more ranks only split the same cores: this shows the overhead of the parallel machinery, not
# scaling. Usage: scripts/bench_ranks.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/env.sh
STEPS=${1:-12}
source scripts/corpus.sh
ensure_corpus >/dev/null
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
printf "%-4s %-4s %-13s %10s %9s %12s %10s %10s\n" np E exchange tokens/s step_ms exchange_ms expert_ms reduce_ms
for cfg in "1 1 none" "2 1 none" "2 2 auto" "4 1 none" "4 4 flat" "4 4 hierarchical"; do
  set -- $cfg
  np=$1 ep=$2 ex=$3
  threads=$(( SWITCHYARD_CORES / np > 0 ? SWITCHYARD_CORES / np : 1 ))
  extra=()
  [ "$ex" != none ] && extra=(--set parallel.token_exchange="$ex" --set parallel.ranks_per_node=2)
  OMP_NUM_THREADS=$threads mpirun -np "$np" --bind-to none build/switchyard train --config configs/tiny.yaml \
    --run-dir "$OUT/r-$np-$ep-$ex" --set train.steps="$STEPS" --set train.micro_batch=$(( 8 / np )) \
    --set train.threads="$threads" --set train.eval_windows=1 --set parallel.expert_parallel="$ep" \
    "${extra[@]}" > /dev/null
  /usr/bin/python3 - "$OUT/r-$np-$ep-$ex/metrics.jsonl" "$np" "$ep" "$ex" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l][2:]
m = lambda k: statistics.median(r[k] for r in rows)
print(f"{sys.argv[2]:<4} {sys.argv[3]:<4} {sys.argv[4]:<13} {m('tokens_per_s'):>10.0f} {m('step_ms'):>9.1f} "
      f"{m('exchange_ms'):>12.1f} {m('expert_ms'):>10.1f} {m('reduce_ms'):>10.1f}")
PY
done
