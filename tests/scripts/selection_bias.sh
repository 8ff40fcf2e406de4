#!/usr/bin/env bash
# The aux-loss-free selection bias (model.moe.balance.bias_rate, moe/router.h) with sigmoid scoring:
# (a) once per optimizer step: 2 accumulated micro-batches of 4 end with the bias of one batch of 8
#     (same windows, counts summed over the step), and activation checkpointing (full) with the bias
#     of none, bit for bit (the routing plan is replayed, never counted twice);
# (b) resume: a 6-step run saved at step 3 and resumed gives steps 4-6 bit-identical losses and the
#     same final bias (the manifest's selection_bias);
# (c) expert parallel: np 2 E=2 (each rank half the batch) ends with the bias of np 1, losses within 1e-5;
# (d) export refuses the model with one usage line naming what the layout cannot express;
# (e) `eval --checkpoint` evaluates it from its checkpoint (it has no model/ folder) with the
#     checkpoint's bias: the same checkpoint with the bias zeroed in its manifest routes, and so
#     evaluates, differently.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
BASE=("${SMALL_MODEL[@]}" --set train.steps=6 --set model.moe.n_experts=8 --set model.moe.expert_size=32
      --set model.moe.aux_loss_coef=0 --set model.moe.router.scoring=sigmoid
      --set model.moe.balance.bias_rate=0.02 --set checkpoint.interval=3)
run() {  # name np micro_batch expert_parallel [extra args...]
  local name=$1 np=$2 mb=$3 ep=$4
  shift 4
  OMP_NUM_THREADS=1 mpirun -np "$np" --bind-to none "$SY" train "${BASE[@]}" --set train.micro_batch="$mb" \
    --set parallel.expert_parallel="$ep" --run-dir "$TMP/$name" "$@" >"$TMP/$name.log" 2>&1
}
run one 1 8 1
run accum 1 4 1 --set train.grad_accum=2
run full 1 8 1 --set train.activation_checkpointing=full
run resumed 1 8 1 --resume "$TMP/one/checkpoints/step-000003"
run ep2 2 4 2
grep -q "no weights folder: the Hugging Face layouts cannot express sigmoid router scoring" "$TMP/one.log"
test ! -e "$TMP/one/model/config.json"
set +e
"$SY" export --checkpoint "$TMP/one" --out "$TMP/export" >"$TMP/export.log" 2>&1
rc=$?
set -e
echo "export exit $rc: $(cat "$TMP/export.log")"
test "$rc" = 2
test "$(wc -l <"$TMP/export.log")" = 1
grep -q "cannot express sigmoid router scoring (model.moe.router.scoring) and the aux-loss-free selection bias" \
  "$TMP/export.log"
test ! -e "$TMP/export"
EVAL=(--data "$TOK" --split train --seq-len 32 --max-windows 8 --threads 1)
"$SY" eval --checkpoint "$TMP/one" "${EVAL[@]}" >"$TMP/eval.json"
mkdir -p "$TMP/zeroed" && cp -r "$TMP/one/checkpoints/step-000006" "$TMP/zeroed/"
/usr/bin/python3 - "$TMP/zeroed/step-000006/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["selection_bias"] = [0.0] * len(m["selection_bias"])
json.dump(m, open(sys.argv[1], "w"), indent=1)
PY
"$SY" eval --checkpoint "$TMP/zeroed/step-000006" "${EVAL[@]}" >"$TMP/eval_zeroed.json"

/usr/bin/python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
def losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if "loss" in r}
def bias(run, step=6):
    return json.load(open(f"{tmp}/{run}/checkpoints/step-{step:06d}/manifest.json"))["selection_bias"]
passed = failed = 0
def check(what, ok, detail=""):
    global passed, failed
    passed += ok; failed += not ok
    print(f"{what:48s} {detail} {'ok' if ok else 'FAIL'}")
ref = bias("one")
check("bias: 2 MoE layers x 8 experts", len(ref) == 16, len(ref))
check("bias moved (rate 0.02 x 6 steps)", max(map(abs, ref)) > 0.03, max(map(abs, ref)))
check("bias at step 3 differs from step 6", bias("one", 3) != ref)
check("(a) grad_accum 2 x 4 bias == 1 x 8 bias", bias("accum") == ref)
check("(a) activation checkpointing full bias == none", bias("full") == ref)
check("(a) activation checkpointing full losses == none", losses("full") == losses("one"))
a, b = losses("one"), losses("resumed")
check("(b) resumed steps", sorted(b) == [4, 5, 6], sorted(b))
for s in (4, 5, 6):
    check(f"(b) resumed step {s} loss (bit-exact)", a[s] == b[s], f"{b[s]!r} vs {a[s]!r}")
check("(b) resumed final bias (bit-exact)", bias("resumed") == ref)
check("(c) np 2 E=2 bias == np 1", bias("ep2") == ref)
e = losses("ep2")
for s in range(1, 7):
    rel = abs(e[s] - a[s]) / abs(a[s])
    check(f"(c) np 2 E=2 step {s} loss", rel < 1e-5, f"rel {rel:.1e}")
ev, ez = (json.load(open(f"{tmp}/{n}.json"))["loss"] for n in ("eval", "eval_zeroed"))
check("(e) eval --checkpoint of a checkpoint-only run", ev == ev and 0 < ev < 10, ev)
check("(e) eval applies the checkpoint's bias", ev != ez, f"{ev!r} vs zeroed {ez!r}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
