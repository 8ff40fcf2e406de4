#!/usr/bin/env bash
# scripts/exp_noise.sh: the noise-weighting and hard-example-mining experiment (issue 14). The demo
# corpus with 23% of its training documents corrupted (random bytes, shuffled bytes, text from
# another source; scripts/exp_noise.py make keeps the mask aside), two runs of one small MoE with
# the same seed, steps, tokens and shape, data.sample: document:
#   uniform    every sample alike (mining and noise weighting off)
#   weighted   data.noise + data.mining on (the settings below)
# Each run checkpoints at 3/4 of its steps and at the end; `switchyard data-report` of both gives
# every sample's visits and scores, and scripts/exp_noise.py report turns them, the metrics and the
# mask into the table (clean validation loss, corrupted share of the last quarter's draws, ROC-AUC
# of the noise score, tokens/s) and a plot, in the runs' folder; a default run also copies them to
# docs/exp_noise.md and docs/exp_noise.svg, which docs/RESULTS.md discusses.
#
# The runs go side by side, one rank and one thread each (small GEMMs gain little from a second
# thread; this way both runs see the same machine and their tokens/s compare).
#
#   scripts/exp_noise.sh [STEPS]            # default 1600 steps, ~13 min on 2 cores
#   VARIANTS=weighted EXTRA="--set data.noise.threshold=0.8" EXP_DIR=runs/try scripts/exp_noise.sh
#                                           # one run, other settings (EXTRA goes to every run
#                                           # named; the report needs both runs)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/switchyard ] || bash scripts/setup.sh
source scripts/env.sh

STEPS=${1:-1600}
OUT=${EXP_DIR:-runs/exp_noise}
DATA=$OUT/data/noise
Q3=$(( STEPS * 3 / 4 ))
SEQ=256 MICRO=8 ACCUM=2  # tokens per step: ACCUM x MICRO x SEQ positions, one sample per row
mkdir -p "$OUT"
/usr/bin/python3 scripts/exp_noise.py make "$DATA" --seed 14 --corrupt 0.23 --valid 0.05 --max-bytes 2048

SHAPE=(--set model.d_model=128 --set model.n_layers=4 --set model.n_heads=4 --set model.n_kv_heads=2
       --set model.moe.n_experts=8 --set model.moe.top_k=2 --set model.moe.expert_size=128
       --set train.seq_len="$SEQ" --set train.micro_batch="$MICRO" --set train.grad_accum="$ACCUM"
       --set train.steps="$STEPS" --set optim.warmup_steps="$(( STEPS / 20 ))" --set train.log_interval=100
       --set train.eval_interval="$(( STEPS / 8 ))" --set train.eval_windows=0
       --set data.train="$DATA" --set data.valid="${DATA}_valid" --set data.sample=document
       --set checkpoint.interval="$Q3" --set checkpoint.keep_last=10)
WARM=$(( STEPS / 8 ))
declare -A VARIANT=(
  [uniform]="--set data.noise.enabled=false --set data.mining.enabled=false"
  [weighted]="--set data.noise.enabled=true --set data.noise.warmup_steps=$WARM --set data.noise.min_visits=2
              --set data.noise.threshold=1.5 --set data.noise.max_slope=0.5 --set data.noise.sample_weight=0.02
              --set data.noise.loss_weight=0.1
              --set data.mining.enabled=true --set data.mining.warmup_steps=$WARM --set data.mining.min_visits=2
              --set data.mining.threshold=0.5 --set data.mining.strength=1 --set data.mining.max_weight=2"
)
NAMES=${VARIANTS:-uniform weighted}
export OMP_NUM_THREADS=1
pids=()
for v in $NAMES; do
  [ -n "${VARIANT[$v]+x}" ] || { echo "exp_noise: unknown variant $v (${!VARIANT[*]})" >&2; exit 2; }
  echo "== $v: $(xargs <<< "${VARIANT[$v]}") ${EXTRA:-} (log: $OUT/$v.log)"
  # shellcheck disable=SC2086  # the variant's options are words
  build/switchyard train --config configs/tiny.yaml --run-dir "$OUT/$v" --overwrite "${SHAPE[@]}" ${VARIANT[$v]} \
    ${EXTRA:-} > "$OUT/$v.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || { echo "exp_noise: a run failed; see $OUT/*.log" >&2; exit 1; }; done
for v in $NAMES; do
  tail -n 2 "$OUT/$v.log"
  ck=$OUT/$v/checkpoints
  build/switchyard data-report --checkpoint "$ck/$(printf 'step-%06d' "$Q3")" --top 0 --json "$OUT/$v/report_q3.json" >/dev/null
  build/switchyard data-report --checkpoint "$ck/$(printf 'step-%06d' "$STEPS")" --top 0 --json "$OUT/$v/report_end.json" >/dev/null
done
[ -n "${VARIANTS:-}" ] && exit 0
/usr/bin/python3 scripts/exp_noise.py report "$OUT" "${DATA}_mask.json" --markdown "$OUT/exp_noise.md" --svg "$OUT/exp_noise.svg"
if [ -z "${EXP_DIR:-}" ]; then cp "$OUT/exp_noise.md" "$OUT/exp_noise.svg" docs/; fi
