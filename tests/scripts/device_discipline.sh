#!/usr/bin/env bash
# Whole training runs behind the device-discipline checker (core/device_check_backend.h, switched on
# by SWITCHYARD_TEST_DEVICE_CHECK=1): backend memory is unreadable from the host outside backend
# calls, every kernel and stream-ordered collective must get backend memory, host-control calls
# host memory. What the CUDA backend with NCCL will need, proven on the CPU: a run that breaks the
# rules dies (SIGSEGV or a device-check error); one that keeps them gives the plain CPU run's losses
# bit for bit (the checker runs the same CPU kernels). Covered: one rank with bf16 and activation
# checkpointing, evaluation, checkpoint and resume, the final save; two data-parallel ranks with
# fp16 loss scaling and gradient accumulation (bucketed all-reduce); expert parallelism over 2 and 4
# ranks with the flat and the hierarchical token exchange.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
# one bf16 GEMM path for every run: auto picks by timing, which a loaded machine can flip between runs
export SWITCHYARD_CPU_BF16_GEMM=emulated
BASE=("${SMALL_MODEL[@]}" --set train.steps=4 --set train.eval_interval=2 --set train.eval_windows=4
      --set checkpoint.interval=2)
run() {  # name np checked [args...]
  local name=$1 np=$2 checked=$3
  shift 3
  SWITCHYARD_TEST_DEVICE_CHECK=$checked mpirun -np "$np" --bind-to none -x SWITCHYARD_TEST_DEVICE_CHECK -x SWITCHYARD_CPU_BF16_GEMM \
    "$SY" train "${BASE[@]}" --run-dir "$TMP/$name" "$@" >"$TMP/$name.log" 2>&1 ||
    { echo "FAIL: $name"; cat "$TMP/$name.log"; exit 1; }
}
CASES=(
  "bf16_selective 1 --set train.precision=bf16 --set train.activation_checkpointing=selective"
  "fp16_dp2_accum 2 --set train.precision=fp16 --set train.grad_accum=2"
  "ep2_flat 2 --set parallel.expert_parallel=2 --set parallel.token_exchange=flat"
  "ep4_hier 4 --set parallel.expert_parallel=4 --set parallel.ranks_per_node=2 --set parallel.token_exchange=hierarchical --set train.activation_checkpointing=full"
)
for c in "${CASES[@]}"; do
  read -r name np args <<<"$c"
  # shellcheck disable=SC2086
  run "$name" "$np" 0 $args
  # shellcheck disable=SC2086
  run "${name}_checked" "$np" 1 $args
done
run bf16_resumed_checked 1 1 --set train.precision=bf16 --set train.activation_checkpointing=selective \
  --resume "$TMP/bf16_selective_checked/checkpoints/step-000002"

/usr/bin/python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
def records(run):
    return [json.loads(l) for l in open(f"{tmp}/{run}/metrics.jsonl")]
def losses(run):  # (kind, step) -> loss: training steps and evaluations
    return {("eval" if "eval_loss" in r else "train", r["step"]): r.get("loss", r.get("eval_loss")) for r in records(run)}
failed = 0
for ref, got in [("bf16_selective", "bf16_selective_checked"), ("fp16_dp2_accum", "fp16_dp2_accum_checked"),
                 ("ep2_flat", "ep2_flat_checked"), ("ep4_hier", "ep4_hier_checked"),
                 ("bf16_selective", "bf16_resumed_checked")]:
    a, b = losses(ref), losses(got)
    common = sorted(set(a) & set(b))
    same = all(a[k] == b[k] for k in common)
    enough = len(common) >= (2 if "resumed" in got else 4)
    ok = same and enough
    failed += not ok
    print(f"{got:28s} {len(common)} records equal to {ref}: {'ok' if ok else 'FAIL'}")
    if not ok:
        for k in common:
            print("   ", k, a[k], b[k])
sys.exit(1 if failed else 0)
PY
