#!/usr/bin/env bash
# Checkpoints survive faults (launch/checkpoint.h).
# (c) A flipped byte in a checkpoint file: resume fails with exit 2 and names the file.
# (d) SIGKILL in the middle of a save, at two points (SWITCHYARD_TEST_HOLD_SAVE holds the save of
#     step 4 with its files in the temporary folder, or after the rename before `latest` moves):
#     `latest` still names the previous checkpoint, which resumes, and the run then gives the
#     losses of an uninterrupted run bit for bit.
# (e) SIGTERM to one rank of an np=2 E=2 job: every rank stops after the same step, saves, exits 0;
#     `--resume` (latest) continues to the end with the uninterrupted run's losses, and
#     metrics.jsonl holds every step once.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
BASE=("${SMALL_MODEL[@]}" --set model.moe.n_experts=8 --set model.moe.expert_size=32)

# ---- (c) flipped byte ----
"$SY" train "${BASE[@]}" --set train.steps=2 --run-dir "$TMP/c" >/dev/null
/usr/bin/python3 - "$TMP/c/checkpoints/step-000002/rank-00000.h5" <<'PY'
import os, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)  # the middle of the file: tensor data
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x10]))
PY
set +e
"$SY" train "${BASE[@]}" --set train.steps=4 --run-dir "$TMP/c" --resume 2>"$TMP/c.err" >/dev/null
rc=$?
set -e
cat "$TMP/c.err"
[ "$rc" = 2 ] || { echo "FAIL: resume of a damaged checkpoint exited $rc, expected 2"; exit 1; }
grep -q "rank-00000.h5: checksum mismatch" "$TMP/c.err" || { echo "FAIL: the error does not name the file"; exit 1; }
echo "(c) flipped byte detected: ok"

# ---- (d) SIGKILL during a save, at two points ----
D=(--set train.steps=6 --set checkpoint.interval=2)
"$SY" train "${BASE[@]}" "${D[@]}" --run-dir "$TMP/d_ref" >/dev/null
kill_during_save() {  # run-dir hold-point glob-that-marks-the-kill-point
  SWITCHYARD_TEST_HOLD_SAVE="4:$2" "$SY" train "${BASE[@]}" "${D[@]}" --run-dir "$1" >/dev/null &
  local pid=$!
  wait_for "$pid" compgen -G "$3"
  kill -9 "$pid"
  wait "$pid" || true
  ls "$1/checkpoints"
  compgen -G "$3" >/dev/null || { echo "FAIL: not killed at $3"; exit 1; }
  [ "$(cat "$1/checkpoints/latest")" = step-000002 ] || { echo "FAIL: latest moved"; exit 1; }
  "$SY" train "${BASE[@]}" "${D[@]}" --run-dir "$1" --resume >"$1.log"
  grep -q "resuming from .*step-000002 at step 2" "$1.log"
  ! compgen -G "$1/checkpoints/step-*.tmp-*" >/dev/null || { echo "FAIL: stale temporary folder kept"; exit 1; }
  ls "$1/checkpoints"
}
# 1: the rank file of step 4 in its temporary folder, no manifest yet
kill_during_save "$TMP/d1" files "$TMP/d1/checkpoints/step-000004.tmp-*/rank-00000.h5"
# 2: step-000004 renamed into place, `latest` still at step 2 (the resumed run saves step 4 again)
kill_during_save "$TMP/d2" renamed "$TMP/d2/checkpoints/step-000004/manifest.json"

# ---- (e) SIGTERM to one rank ----
E=(--set train.steps=1000 --set train.micro_batch=4 --set parallel.expert_parallel=2 --set train.log_interval=1000)
mpirun -np 2 --bind-to none "$SY" train "${BASE[@]}" "${E[@]}" --run-dir "$TMP/e" >"$TMP/e.log" &
mp=$!
steps_done() { [ -f "$TMP/e/metrics.jsonl" ] && [ "$(wc -l <"$TMP/e/metrics.jsonl")" -ge 20 ]; }
wait_for "$mp" steps_done  # until a few steps are done (the stop handlers are installed by then)
ranks=($(pgrep -P "$mp"))
kill -TERM "${ranks[-1]}"
wait "$mp"  # exit 0 expected (set -e)
cat "$TMP/e.log" | grep -v "^step"
stopped=$(sed -n 's/.*stopped by signal 15 after step \([0-9]*\).*/\1/p' "$TMP/e.log")
[ -n "$stopped" ] && [ "$stopped" -lt 1000 ] || { echo "FAIL: no stop message"; exit 1; }
[ "$(cat "$TMP/e/checkpoints/latest")" = "$(printf 'step-%06d' "$stopped")" ] || { echo "FAIL: latest"; exit 1; }
mpirun -np 2 --bind-to none "$SY" train "${BASE[@]}" "${E[@]}" --run-dir "$TMP/e" --resume >/dev/null
mpirun -np 2 --bind-to none "$SY" train "${BASE[@]}" "${E[@]}" --run-dir "$TMP/e_ref" >/dev/null

/usr/bin/python3 - "$TMP" "$stopped" <<'PY'
import json, sys
tmp, stopped = sys.argv[1], int(sys.argv[2])
def losses(run):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if "loss" in r]
failed = 0
for run, ref, first in (("d1", "d_ref", 3), ("d2", "d_ref", 3), ("e", "e_ref", stopped + 1)):
    got, want = losses(run), losses(ref)
    ok = got == want
    failed += not ok
    print(f"({run}) resumed after step {first - 1}: {len(got)} steps, losses equal the uninterrupted run: "
          f"{'ok' if ok else 'FAIL'}")
    if not ok:
        print([g for g, w in zip(got, want) if g != w][:5], len(got), len(want))
sys.exit(1 if failed else 0)
PY
