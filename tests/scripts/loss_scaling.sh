#!/usr/bin/env bash
# fp16 dynamic loss scaling (optim/loss_scaler.h) in the trainer (launch/train_step.cpp). Overflows are
# injected with the test hook SWITCHYARD_TEST_OVERFLOW="RANK:STEP,..." (+inf in one gradient of
# the last layer during backward of that 1-based step).
# (a) One overflow on rank 1 of np=2 E=2 (hysteresis 1) skips exactly step 3 and backs off once
#     (scale 1024 for steps 1-3, 512 for 4-6); the np=1 run with the same global batch and the
#     overflow on its rank 0 has the same losses at every step within 1e-5 relative (aux_loss_coef
#     0: the Switch loss of a micro-batch is not additive), so both ranks skipped alike; the np=2
#     run without injection takes step 3 and its losses from step 4 on differ.
# (b) Hysteresis 2 (the default): one overflow skips its step without backing off; two in a row
#     back off once.
# (c) At min_scale: overflows at every step with initial_scale 4, min_scale 1, hysteresis 1,
#     max_overflows_at_min 2 run at scales 4, 2, 1 (steps 1-3 skipped) and stop at step 4 (the
#     second overflow at the minimum) with exit 2 and one error line naming the step and the
#     gradient tensor; at np=2 with the overflow on rank 1 the job ends (non-zero) with the same
#     diagnostic, never hangs.
# (d) A real forward overflow (init_std 10: fp16 attention scores overflow) at min_scale =
#     initial_scale = 1 stops at step 1 with exit 2 naming the forward pass on rank 0 and a block;
#     the same config in fp32 trains with finite losses.
# (e) Resume keeps the scaler: a 6-step run with an overflow at step 2 saved at step 3 and resumed
#     gives steps 4-6 with bit-identical losses and the same (backed-off) loss scale; the
#     manifest's loss_scaler holds it.
# (f) Switching precision on resume: an fp32 checkpoint has no loss_scaler state, so an fp16 run
#     resumed from it starts at the configured initial scale (not at fp32's scale 1).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
BASE=("${SMALL_MODEL[@]}" --set train.steps=6 --set train.precision=fp16
      --set train.loss_scaler.initial_scale=1024 --set model.moe.aux_loss_coef=0)
HYST1=(--set train.loss_scaler.hysteresis=1)
run() {  # name np micro_batch expert_parallel overflow-spec [extra args...]; records the exit code
  local name=$1 np=$2 mb=$3 ep=$4 inject=$5 rc=0 launch=()
  shift 5
  # one rank runs without mpirun, whose own lines would follow the error line
  [ "$np" -gt 1 ] && launch=(mpirun -np "$np" --bind-to none)
  SWITCHYARD_TEST_OVERFLOW="$inject" timeout 120 "${launch[@]}" "$SY" train "${BASE[@]}" \
    --set train.micro_batch="$mb" --set parallel.expert_parallel="$ep" --run-dir "$TMP/$name" "$@" \
    >"$TMP/$name.log" 2>"$TMP/$name.err" || rc=$?
  echo "$rc" >"$TMP/$name.rc"
}
# (a)
run a_np2 2 4 2 1:3 "${HYST1[@]}"
run a_np1 1 8 1 0:3 "${HYST1[@]}"
run a_clean 2 4 2 "" "${HYST1[@]}"
# (b)
run b_one 1 8 1 0:3
run b_two 1 8 1 0:3,0:4
# (c)
STOP=("${HYST1[@]}" --set train.steps=20 --set train.loss_scaler.initial_scale=4
      --set train.loss_scaler.min_scale=1 --set train.loss_scaler.max_overflows_at_min=2)
run c_np1 1 8 1 "$(seq -s, -f '0:%g' 1 10)" "${STOP[@]}"
run c_np2 2 4 2 "$(seq -s, -f '1:%g' 1 10)" "${STOP[@]}"
# (d)
NATURAL=(--set train.steps=2 --set model.init_std=10 --set train.loss_scaler.initial_scale=1
         --set train.loss_scaler.min_scale=1 --set train.loss_scaler.max_overflows_at_min=1)
run d_fp16 1 8 1 "" "${NATURAL[@]}"
run d_fp32 1 8 1 "" "${NATURAL[@]}" --set train.precision=fp32
# (e)
RES=("${HYST1[@]}" --set checkpoint.interval=3)
run e_full 1 8 1 0:2 "${RES[@]}"
run e_resumed 1 8 1 0:2 "${RES[@]}" --resume "$TMP/e_full/checkpoints/step-000003"
# (f)
run f_fp32 1 8 1 "" --set train.steps=3 --set train.precision=fp32
run f_fp16 1 8 1 "" --resume "$TMP/f_fp32/checkpoints/step-000003"

/usr/bin/python3 - "$TMP" <<'PY'
import json, math, os, re, sys
tmp = sys.argv[1]
passed = failed = 0
def check(what, ok, detail=""):
    global passed, failed
    passed += bool(ok); failed += not ok
    print(f"{what:58s} {detail} {'ok' if ok else 'FAIL'}")
def steps(run):  # step -> training record
    path = f"{tmp}/{run}/metrics.jsonl"
    if not os.path.exists(path): return {}
    return {r["step"]: r for r in map(json.loads, open(path)) if "loss" in r}
def rc(run): return int(open(f"{tmp}/{run}.rc").read())
def err_lines(run): return [l for l in open(f"{tmp}/{run}.err").read().splitlines() if l.strip()]
def col(recs, key): return [recs[s].get(key) for s in sorted(recs)]
def ran(run, n):  # exit 0 and n training records
    r = steps(run)
    ok = rc(run) == 0 and sorted(r) == list(range(1, n + 1))
    check(f"{run}: exit 0, steps 1-{n} recorded", ok, f"rc {rc(run)}, steps {sorted(r)}")
    if not ok: print(open(f"{tmp}/{run}.err").read())
    return r
def stopped(run):  # exit 2 with one error line: that line
    check(f"{run}: exit code 2", rc(run) == 2, rc(run))
    lines = err_lines(run)
    check(f"{run}: one error line", len(lines) == 1, lines)
    return lines[0] if lines else ""

# (a) one overflow on one rank: every rank skips, one backoff
a2, a1, ac = ran("a_np2", 6), ran("a_np1", 6), ran("a_clean", 6)
for name, r in (("a_np2", a2), ("a_np1", a1)):
    check(f"{name}: skipped only at step 3", col(r, "skipped") == [False, False, True, False, False, False],
          col(r, "skipped"))
    check(f"{name}: skipped_steps", col(r, "skipped_steps") == [0, 0, 1, 1, 1, 1], col(r, "skipped_steps"))
    check(f"{name}: loss_scale backs off once after step 3", col(r, "loss_scale") == [1024] * 3 + [512] * 3,
          col(r, "loss_scale"))
for s in range(1, 7):
    rel = abs(a2[s]["loss"] - a1[s]["loss"]) / abs(a1[s]["loss"])
    check(f"a: np=2 vs np=1 step {s} loss", rel < 1e-5, f"{a2[s]['loss']:.8f} vs {a1[s]['loss']:.8f} rel {rel:.1e}")
log = open(f"{tmp}/a_np2.log").read()
check("a_np2: log line of the skipped step",
      "step 3 skipped: gradient overflow at loss scale 1024; scale now 512" in log and log.count(" skipped: ") == 1, "")
check("a_clean: nothing skipped, scale constant", col(ac, "skipped") == [False] * 6
      and col(ac, "loss_scale") == [1024] * 6, f"{col(ac, 'skipped')} {col(ac, 'loss_scale')}")
check("a_clean: steps 1-3 losses equal the injected run's",
      all(ac[s]["loss"] == a2[s]["loss"] for s in (1, 2, 3)), [ac[s]["loss"] for s in (1, 2, 3)])
for s in (4, 5, 6):
    rel = abs(ac[s]["loss"] - a2[s]["loss"]) / abs(a2[s]["loss"])
    check(f"a_clean: step {s} loss differs from the skipping run", rel > 1e-3,
          f"{ac[s]['loss']:.6f} vs {a2[s]['loss']:.6f} rel {rel:.1e}")

# (b) hysteresis 2
b1, b2 = ran("b_one", 6), ran("b_two", 6)
check("b_one: skipped only at step 3", col(b1, "skipped") == [False, False, True, False, False, False],
      col(b1, "skipped"))
check("b_one: one overflow does not back off", col(b1, "loss_scale") == [1024] * 6, col(b1, "loss_scale"))
check("b_two: skipped at steps 3 and 4", col(b2, "skipped") == [False, False, True, True, False, False]
      and col(b2, "skipped_steps") == [0, 0, 1, 2, 2, 2], f"{col(b2, 'skipped')} {col(b2, 'skipped_steps')}")
check("b_two: two in a row back off once", col(b2, "loss_scale") == [1024] * 4 + [512] * 2, col(b2, "loss_scale"))

# (c) stop at the minimum scale: steps 1, 2 back off 4 -> 2 -> 1, step 3 is the first overflow at
# the minimum, step 4 the second (max_overflows_at_min 2) stops
c = steps("c_np1")
msg = stopped("c_np1")
check("c_np1: names step 4, 2 overflows at scale 1",
      "fp16 training stopped at step 4: 2 step(s) in a row overflowed (inf/NaN) at the minimum loss scale 1;" in msg, msg)
check("c_np1: names the gradient tensor",
      "the first gradient backward produced with inf/NaN is model.layers.1.post_attention_layernorm.weight" in msg, "")
check("c_np1: steps 1-3 recorded, all skipped", sorted(c) == [1, 2, 3] and all(col(c, "skipped")),
      f"{sorted(c)} {col(c, 'skipped')}")
check("c_np1: scales 4, 2, 1", col(c, "loss_scale") == [4, 2, 1], col(c, "loss_scale"))
check("c_np1: no checkpoint written", not os.path.exists(f"{tmp}/c_np1/checkpoints"), "")
out2 = open(f"{tmp}/c_np2.err").read() + open(f"{tmp}/c_np2.log").read()
check("c_np2: job ends non-zero, no timeout", rc("c_np2") not in (0, 124), rc("c_np2"))
m = re.search(r"switchyard: error on rank \d: fp16 training stopped at step 4: .*"
              r"model\.layers\.1\.post_attention_layernorm\.weight", out2)
check("c_np2: error on a rank names step 4 and the tensor", m is not None, m.group(0)[:60] + "..." if m else out2)
c2 = steps("c_np2")
check("c_np2: steps 1-3 skipped at scales 4, 2, 1", col(c2, "loss_scale") == [4, 2, 1] and all(col(c2, "skipped")),
      f"{col(c2, 'loss_scale')} {col(c2, 'skipped')}")

# (d) a real forward overflow in fp16; fp32 stays finite
msg = stopped("d_fp16")
check("d_fp16: stopped at step 1 at scale 1",
      "fp16 training stopped at step 1: 1 step(s) in a row overflowed (inf/NaN) at the minimum loss scale 1;" in msg, msg)
m = re.search(r"the forward pass on rank 0 produced (inf/NaN first in the output of layer [01]\b|"
              r"inf/NaN in the embedding output|a non-finite loss)", msg)
check("d_fp16: names the forward pass on rank 0 and a block", m is not None, m.group(1) if m else "")
check("d_fp16: no step recorded", steps("d_fp16") == {}, "")
d32 = ran("d_fp32", 2)
check("d_fp32: losses finite", all(math.isfinite(x) for x in col(d32, "loss")), col(d32, "loss"))

# (e) resume keeps the scaler state
ef, er = ran("e_full", 6), steps("e_resumed")
check("e_resumed: exit 0, steps 4-6", rc("e_resumed") == 0 and sorted(er) == [4, 5, 6], sorted(er))
check("e_full: skipped step 2, scale halved from step 3", col(ef, "loss_scale") == [1024] * 2 + [512] * 4
      and col(ef, "skipped") == [False, True] + [False] * 4, f"{col(ef, 'loss_scale')} {col(ef, 'skipped')}")
for s in (4, 5, 6):
    if s not in er: continue
    check(f"e_resumed step {s} loss (bit-exact)", er[s]["loss"] == ef[s]["loss"], f"{er[s]['loss']!r} vs {ef[s]['loss']!r}")
    check(f"e_resumed step {s} loss_scale, skipped_steps", er[s]["loss_scale"] == ef[s]["loss_scale"] == 512
          and er[s]["skipped_steps"] == ef[s]["skipped_steps"] == 1,
          f"{er[s]['loss_scale']} {er[s]['skipped_steps']}")
man = json.load(open(f"{tmp}/e_full/checkpoints/step-000003/manifest.json"))
ls = man.get("loss_scaler", {})
check("e_full manifest loss_scaler", ls.get("scale") == 512 and ls.get("skipped_steps") == 1
      and ls.get("hysteresis_left") == 0 and ls.get("clean_steps") == 1, ls)
# (f) precision switch on resume
f32 = json.load(open(f"{tmp}/f_fp32/checkpoints/step-000003/manifest.json"))
check("f_fp32 manifest: no loss_scaler state", "loss_scaler" not in f32, list(f32))
f16 = steps("f_fp16")
check("f_fp16: resumed steps 4-6 at the initial scale 1024", rc("f_fp16") == 0 and sorted(f16) == [4, 5, 6]
      and col(f16, "loss_scale") == [1024] * 3, col(f16, "loss_scale"))
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
