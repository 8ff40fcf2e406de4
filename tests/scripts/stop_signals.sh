#!/usr/bin/env bash
# SIGTERM / SIGUSR1 (launch/stop_signals.h) never land on a thread that computes: oneDNN 2.x's JIT
# GEMMs point rsp into the heap, and a signal frame written there corrupted the heap (2-3 runs in 10
# crashed instead of saving). Checks: the kernel's view (/proc) of a training run, the main thread
# and the OpenMP workers block both signals; bursts of SIGTERM at varied moments of 2-thread runs
# always end in a save and exit 0 ("stopped by signal"), and the run resumes; a command other than
# train still ends on SIGTERM as the default action does (exit 143, promptly).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
RUN=("${SMALL_MODEL[@]}" --set train.threads=2 --set train.steps=100000 --set observe.peak_tflops=1)

# ---- the kernel's view: every thread but MPI's (started before main() blocks) blocks both ----
"$SY" train "${RUN[@]}" --run-dir "$TMP/mask" >"$TMP/mask.log" 2>&1 &
pid=$!
wait_for "$pid" grep -qs "^step 10/" "$TMP/mask.log"
/usr/bin/python3 - "$pid" <<'PY'
import os, sys
pid = sys.argv[1]
want = (1 << (15 - 1)) | (1 << (10 - 1))  # SIGTERM, SIGUSR1
blocked, free = [], []
for tid in os.listdir(f"/proc/{pid}/task"):
    status = open(f"/proc/{pid}/task/{tid}/status").read()
    mask = int(status.split("SigBlk:")[1].split()[0], 16)
    (blocked if mask & want == want else free).append(tid)
if pid not in blocked:
    sys.exit(f"FAIL: the main thread {pid} does not block SIGTERM and SIGUSR1")
# MPI's progress threads (2 here) and the thread that takes the signals (it blocks them too)
if len(free) > 3:
    sys.exit(f"FAIL: {len(free)} threads take SIGTERM/SIGUSR1 (blocked in {len(blocked)}): the compute threads must not")
print(f"ok: {len(blocked)} threads block SIGTERM and SIGUSR1 (the main thread and its workers), {len(free)} do not (MPI's)")
PY
kill -TERM "$pid"
wait "$pid"

# ---- bursts of SIGTERM mid-step: each run saves, exits 0 and resumes ----
for k in 1 2 3 4 5 6; do
  run="$TMP/burst$k"
  "$SY" train "${RUN[@]}" --run-dir "$run" >"$run.log" 2>&1 &
  pid=$!
  wait_for "$pid" grep -qs "^step $((k * 10))/" "$run.log"
  for j in 1 2 3 4 5 6 7 8; do kill -TERM "$pid" 2>/dev/null || true; sleep 0.00$j; done
  rc=0
  wait "$pid" || rc=$?
  if [ $rc -ne 0 ] || ! grep -q "stopped by signal 15" "$run.log"; then
    echo "FAIL: burst $k: exit $rc"; grep -v "^step " "$run.log" | head -20; exit 1
  fi
  "$SY" train "${RUN[@]}" --set train.steps=$((k * 10 + 12)) --run-dir "$run" --resume >"$run.resume.log" 2>&1 ||
    { echo "FAIL: burst $k: the resume failed"; tail -5 "$run.resume.log"; exit 1; }
done
echo "ok: 6 bursts of 8 SIGTERMs mid-step: each run saved, exited 0 and resumed"

# ---- not training: SIGTERM ends the command as the default action does ----
"$SY" bench gemm --threads 1 --repeats 200 >"$TMP/bench.out" 2>&1 &  # minutes, if not stopped
pid=$!
sleep 2  # past MPI's start-up
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[ $rc -eq 143 ] || { echo "FAIL: bench ended with $rc on SIGTERM, want 143 (killed by SIGTERM)"; exit 1; }
echo "ok: a command other than train ends on SIGTERM (exit 143)"
