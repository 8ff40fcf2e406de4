#!/usr/bin/env bash
# A failing rank ends the whole job: non-zero exit, a message naming the rank and the cause,
# within 60 seconds, never a hang. (1) bad data on one rank only (MPMD launch: rank 1 gets a
# missing file); (2) one rank killed with SIGKILL in the middle of training; (3) one rank stopped
# with SIGSTOP (a hung node: it neither answers nor dies) under expert parallelism with
# parallel.timeout_s = 5: the collective watchdog of the waiting rank ends the job (exit 3 from
# that rank) with one line naming the rank and the wait, and the stopped rank is gone afterwards.
set -uo pipefail
source "$(dirname "$0")/lib/common.sh"
passes=0; fails=0
COMMON=("${SMALL_MODEL[@]}" --set model.moe.expert_size=32 --set train.micro_batch=2)

# (1) rank 1 alone points at a missing data file
start=$(date +%s)
timeout 90 mpirun --bind-to none -np 1 "$SY" train "${COMMON[@]}" --set data.train="$TMP/tok.h5" --run-dir "$TMP/r1" \
  : -np 1 "$SY" train "${COMMON[@]}" --set data.train="$TMP/missing.h5" --run-dir "$TMP/r1" > "$TMP/out1" 2>&1
rc=$?; took=$(( $(date +%s) - start ))
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le 60 ] && grep -q "error on rank 1: .*missing.h5" "$TMP/out1"; then
  passes=$((passes+1)); echo "ok   bad data on rank 1: exit $rc after ${took}s"
else
  fails=$((fails+1)); echo "FAIL bad data on rank 1: exit $rc after ${took}s"; cat "$TMP/out1"
fi

# rank_after_first_step JOB LOG RUN_DIR: the pid of the last rank of JOB once its first step is
# logged (no time budget of its own: JOB's timeout bounds it), or nothing if JOB ended first
rank_after_first_step() {
  while kill -0 "$1" 2>/dev/null; do
    sleep 0.3
    grep -q "step 1/" "$2" 2>/dev/null || continue
    pgrep -f "switchyard train.*$3" | sort -n | tail -1
    return
  done
}

# (2) rank 1 killed while training
start=$(date +%s)
timeout 90 mpirun --bind-to none -np 2 "$SY" train "${COMMON[@]}" --set data.train="$TMP/tok.h5" \
  --set train.steps=100000 --run-dir "$TMP/r2" > "$TMP/out2" 2>&1 &
job=$!
victim=$(rank_after_first_step "$job" "$TMP/out2" "$TMP/r2")
[ -n "$victim" ] && kill -9 "$victim"
wait $job; rc=$?; took=$(( $(date +%s) - start ))
if [ -n "$victim" ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le 60 ]; then
  passes=$((passes+1)); echo "ok   rank killed: exit $rc after ${took}s: $(grep -m1 -iE "signal|killed|exited" "$TMP/out2")"
else
  fails=$((fails+1)); echo "FAIL rank killed (victim '$victim'): exit $rc after ${took}s"; tail -5 "$TMP/out2"
fi
# (3) rank 1 stopped while training
start=$(date +%s)
timeout 120 mpirun --bind-to none -np 2 "$SY" train "${COMMON[@]}" --set data.train="$TMP/tok.h5" \
  --set train.steps=100000 --set parallel.expert_parallel=2 --set parallel.timeout_s=5 --run-dir "$TMP/r3" \
  > "$TMP/out3" 2>&1 &
job=$!
victim=$(rank_after_first_step "$job" "$TMP/out3" "$TMP/r3")
[ -n "$victim" ] && kill -STOP "$victim"
wait $job; rc=$?; took=$(( $(date +%s) - start ))
alive() { case "$(ps -o stat= -p "$1" 2>/dev/null)" in ""|Z*) return 1 ;; *) return 0 ;; esac; }  # a zombie is dead
for _ in $(seq 20); do alive "$victim" || break; sleep 0.5; done
line=$(grep -m1 "switchyard: error on rank .: waited [0-9]* s in .* (step [0-9]*) for the other ranks" "$TMP/out3")
if [ -n "$victim" ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le 60 ] && [ -n "$line" ] &&
   ! alive "$victim"; then
  passes=$((passes+1)); echo "ok   rank stopped: exit $rc after ${took}s: $line"
else
  fails=$((fails+1)); echo "FAIL rank stopped (victim '$victim'): exit $rc after ${took}s"; tail -5 "$TMP/out3"
  [ -n "$victim" ] && kill -9 "$victim" 2>/dev/null
fi
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
