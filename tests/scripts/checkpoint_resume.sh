#!/usr/bin/env bash
# Checkpoints resume exactly on any layout (launch/checkpoint.h).
# (a) Same layout: a 6-step run saving at step 3, resumed from that checkpoint, gives steps 4-6
#     with bit-identical losses (JSON values compared exactly), at np=1 and at np=2 E=2 (the latter
#     with the Switch aux loss on).
# (b) Resharding: saved at np=4 E=4 (4 files), resumed at np=2 E=2 and at np=1: steps 4-6 match the
#     uninterrupted np=1 run within 1e-5 relative (aux_loss_coef 0, as in
#     expert_parallel_equivalence.sh: the Switch loss of a micro-batch is not additive).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
BASE=("${SMALL_MODEL[@]}" --set train.steps=6 --set model.moe.n_experts=8 --set model.moe.expert_size=32
      --set checkpoint.interval=3)
NOAUX=(--set model.moe.aux_loss_coef=0)
run() {  # name np micro_batch expert_parallel [extra args...]
  local name=$1 np=$2 mb=$3 ep=$4
  shift 4
  mpirun -np "$np" --bind-to none "$SY" train "${BASE[@]}" --set train.micro_batch="$mb" \
    --set parallel.expert_parallel="$ep" --run-dir "$TMP/$name" "$@" >"$TMP/$name.log"
}
run one 1 8 1 "${NOAUX[@]}"
run one_resumed 1 8 1 "${NOAUX[@]}" --resume "$TMP/one/checkpoints/step-000003"
run ep2 2 4 2
run ep2_resumed 2 4 2 --resume "$TMP/ep2/checkpoints/step-000003"
run ep4 4 2 4 "${NOAUX[@]}"
ls "$TMP/ep4/checkpoints/step-000003"
run ep4_to_ep2 2 4 2 "${NOAUX[@]}" --resume "$TMP/ep4/checkpoints/step-000003"
run ep4_to_one 1 8 1 "${NOAUX[@]}" --resume "$TMP/ep4/checkpoints/step-000003"
grep -q "resuming from .*step-000003 at step 3 (written by 4 rank(s), expert parallel 4)" "$TMP/ep4_to_one.log"

/usr/bin/python3 - "$TMP" <<'PY'
import json, os, sys
tmp = sys.argv[1]
def losses(run):  # step -> loss, as the exact JSON text's value
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if "loss" in r}
passed = failed = 0
def check(what, ok, detail):
    global passed, failed
    passed += ok; failed += not ok
    print(f"{what:40s} {detail} {'ok' if ok else 'FAIL'}")
for ref, res in (("one", "one_resumed"), ("ep2", "ep2_resumed")):
    a, b = losses(ref), losses(res)
    check(f"{res}: steps of the resumed run", sorted(b) == [4, 5, 6], sorted(b))
    for s in (4, 5, 6):
        check(f"{res} step {s} loss (bit-exact)", a[s] == b[s], f"{b[s]!r} vs {a[s]!r}")
files = sorted(os.listdir(f"{tmp}/ep4/checkpoints/step-000003"))
check("ep4 checkpoint files", files == ["manifest.json"] + [f"rank-{r:05d}.h5" for r in range(4)], files)
man = json.load(open(f"{tmp}/ep4/checkpoints/step-000003/manifest.json"))
check("ep4 manifest layout", man["layout"] == {"world_size": 4, "expert_parallel": 4} and man["step"] == 3
      and man["steps_taken"] == 3, man["layout"])
ref = losses("one")
for run in ("ep4_to_ep2", "ep4_to_one"):
    got = losses(run)
    for s in (4, 5, 6):
        rel = abs(got[s] - ref[s]) / abs(ref[s])
        check(f"{run} step {s} loss", rel < 1e-5, f"{got[s]:.8f} vs {ref[s]:.8f} rel {rel:.1e}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
