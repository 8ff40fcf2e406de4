#!/usr/bin/env bash
# scripts/exp_balance.sh: the load-balancing experiment (issue 13). One MoE shape with 16 experts,
# top-2, on the demo corpus; the same seed, steps and tokens for every variant:
#   a_none         no balancing (aux loss 0)
#   b_aux          Switch aux loss 1e-2 per micro-batch
#   c_aux_global   aux loss 1e-2 over the whole step (model.moe.balance.aux_scope: global)
#   d_bias         aux-loss-free selection bias, rate 1e-3 (DeepSeek-V3)
#   e_bias_decay   the bias and dynamic expert weight decay (optim.expert_decay.mode: dynamic)
#   f_cap_position capacity factor 1.0, drops by position (+ aux 1e-2)
#   g_cap_importance capacity factor 1.0, drops the least important (gate) first (+ aux 1e-2)
#   h_top_p        top-p 0.7 with at most 4 experts per token (+ aux 1e-2)
#   i_top_p_04     top-p 0.4, at most 4 (+ aux 1e-2): beyond the issue's list, the FLOPs side of top-p
# Prints the table of scripts/exp_balance.py and writes it (exp_balance.md) and the plot of the
# busiest-30% share per step (exp_balance.svg) into the runs' folder; a run of every variant into
# the default folder also updates docs/exp_balance.md and .svg, which docs/RESULTS.md discusses.
#
#   scripts/exp_balance.sh [STEPS]        # default 600 steps, 2 ranks (RANKS=...), ~15 min on 2 cores
#   VARIANTS="b_aux g_cap_importance" scripts/exp_balance.sh 100   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/switchyard ] || bash scripts/setup.sh
source scripts/env.sh
source scripts/corpus.sh
ensure_corpus

STEPS=${1:-600}
RANKS=${RANKS:-2}
OUT=${EXP_DIR:-runs/exp_balance}
D_MODEL=128
EXPERT_SIZE=128
SEQ=128 MICRO=8 ACCUM=2  # tokens per step: RANKS x ACCUM x MICRO x SEQ
SHAPE=(--set model.d_model=$D_MODEL --set model.n_layers=4 --set model.n_heads=4 --set model.n_kv_heads=2
       --set model.moe.n_experts=16 --set model.moe.top_k=2 --set model.moe.expert_size=$EXPERT_SIZE
       --set train.seq_len=$SEQ --set train.micro_batch=$MICRO --set train.grad_accum=$ACCUM
       --set train.steps="$STEPS" --set optim.warmup_steps=$(( STEPS / 10 )) --set train.log_interval=50
       --set train.eval_interval="$STEPS" --set train.eval_windows=64
       --set parallel.expert_parallel="$RANKS" --set checkpoint.interval=0)
AUX=(--set model.moe.aux_loss_coef=0.01)
declare -A VARIANT=(
  [a_none]="--set model.moe.aux_loss_coef=0"
  [b_aux]="${AUX[*]}"
  [c_aux_global]="${AUX[*]} --set model.moe.balance.aux_scope=global"
  [d_bias]="--set model.moe.aux_loss_coef=0 --set model.moe.balance.bias_rate=1e-3"
  [e_bias_decay]="--set model.moe.aux_loss_coef=0 --set model.moe.balance.bias_rate=1e-3 --set optim.expert_decay.mode=dynamic"
  [f_cap_position]="${AUX[*]} --set model.moe.router.capacity_factor=1.0 --set model.moe.router.drop_policy=position"
  [g_cap_importance]="${AUX[*]} --set model.moe.router.capacity_factor=1.0 --set model.moe.router.drop_policy=importance"
  [h_top_p]="${AUX[*]} --set model.moe.router.top_p=0.7 --set model.moe.router.k_max=4"
  [i_top_p_04]="${AUX[*]} --set model.moe.router.top_p=0.4 --set model.moe.router.k_max=4"
)
NAMES=${VARIANTS:-a_none b_aux c_aux_global d_bias e_bias_decay f_cap_position g_cap_importance h_top_p i_top_p_04}
export OMP_NUM_THREADS=$(( SWITCHYARD_CORES / RANKS > 0 ? SWITCHYARD_CORES / RANKS : 1 ))
mkdir -p "$OUT"
for v in $NAMES; do
  [ -n "${VARIANT[$v]+x}" ] || { echo "exp_balance: unknown variant $v (${!VARIANT[*]})" >&2; exit 2; }
  echo "== $v: ${VARIANT[$v]}"
  # shellcheck disable=SC2086  # the variant's options are words
  mpirun -np "$RANKS" --bind-to none build/switchyard train --config configs/tiny.yaml --run-dir "$OUT/$v" \
    --overwrite "${SHAPE[@]}" ${VARIANT[$v]} | tail -n 2
done
# shellcheck disable=SC2086  # the variant names are words
/usr/bin/python3 scripts/exp_balance.py "$OUT" $D_MODEL $EXPERT_SIZE $(( RANKS * ACCUM * MICRO * SEQ )) $NAMES \
  --markdown "$OUT/exp_balance.md" --svg "$OUT/exp_balance.svg"
if [ -z "${VARIANTS:-}" ] && [ -z "${EXP_DIR:-}" ]; then cp "$OUT/exp_balance.md" "$OUT/exp_balance.svg" docs/; fi
