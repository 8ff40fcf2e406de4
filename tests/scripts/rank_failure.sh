#!/usr/bin/env bash
# A failing rank ends the whole job: non-zero exit, a message naming the rank and the cause,
# within 60 seconds, never a hang. (1) bad data on one rank only (MPMD launch: rank 1 gets a
# missing file); (2) one rank killed with SIGKILL in the middle of training.
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

# (2) rank 1 killed while training
start=$(date +%s)
timeout 90 mpirun --bind-to none -np 2 "$SY" train "${COMMON[@]}" --set data.train="$TMP/tok.h5" \
  --set train.steps=100000 --run-dir "$TMP/r2" > "$TMP/out2" 2>&1 &
job=$!
victim=""
while kill -0 "$job" 2>/dev/null; do  # until the first step is done (no budget of its own)
  sleep 0.3
  grep -q "step 1/" "$TMP/out2" 2>/dev/null || continue
  victim=$(pgrep -f "switchyard train.*$TMP/r2" | sort -n | tail -1); break
done
[ -n "$victim" ] && kill -9 "$victim"
wait $job; rc=$?; took=$(( $(date +%s) - start ))
if [ -n "$victim" ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le 60 ]; then
  passes=$((passes+1)); echo "ok   rank killed: exit $rc after ${took}s: $(grep -m1 -iE "signal|killed|exited" "$TMP/out2")"
else
  fails=$((fails+1)); echo "FAIL rank killed (victim '$victim'): exit $rc after ${took}s"; tail -5 "$TMP/out2"
fi
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
