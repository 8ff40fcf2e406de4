#!/usr/bin/env bash
# The Slurm launch (scripts/slurm_train.sbatch: srun --mpi=pmix), on the one-node Slurm of
# scripts/slurm_local.sh (.ci/run starts it; without a Slurm that answers, this test says
# "skipped"):
#  - sbatch --wait of the real script with 2 tasks and expert parallelism 2 trains and exits 0;
#  - its losses equal, bit for bit, the same job under mpirun -np 2 (same layout, same data);
#  - a rank killed under srun ends the whole step within seconds (non-zero), no hang;
#  - preemption: `scancel --signal=USR1` of a running sbatch job (what the script's
#    `--signal=USR1@300` does before the time limit) makes every rank stop after the same step,
#    save and exit 0; RESUME=1 continues to the end with the uninterrupted run's losses.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
# on an early failure, show what the jobs printed
trap 'echo "slurm_launch: failed at line $LINENO"; tail -n 20 "$TMP"/*.out "$TMP"/*.log 2>/dev/null' ERR
if ! sinfo -h >/dev/null 2>&1; then
  echo "slurm_launch: no Slurm controller answers (scripts/slurm_local.sh starts one): skipped"
  exit 0
fi
# the machine's Slurm itself must be able to start a PMIx step; if not, that is not ours to test
if ! timeout 60 srun --nodes=1 --ntasks=2 --cpus-per-task=1 --mpi=pmix true >"$TMP/preflight.log" 2>&1; then
  cat "$TMP/preflight.log"
  echo "slurm_launch: this Slurm cannot start a 2-task PMIx step (srun --mpi=pmix true failed): skipped"
  exit 0
fi
ARGS=("${SMALL_MODEL[@]:2}" --set train.steps=4 --set train.eval_windows=1)  # SMALL_MODEL minus --config
cd "$SRC"
CONFIG="$SRC/configs/tiny.yaml" RUN_DIR="$TMP/slurm" SWITCHYARD_BIN="$SY" \
  timeout 300 sbatch --wait --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --output="$TMP/slurm.out" \
  scripts/slurm_train.sbatch "${ARGS[@]}" >"$TMP/sbatch.log"
cat "$TMP/slurm.out" | grep -v "^step" || true
OMP_NUM_THREADS=1 mpirun -np 2 --bind-to none "$SY" train --config "$SRC/configs/tiny.yaml" "${ARGS[@]}" \
  --set parallel.expert_parallel=2 --set parallel.token_exchange=auto --run-dir "$TMP/mpirun" >/dev/null

# a rank killed under srun: the step ends, non-zero, within seconds
set +e
OMP_NUM_THREADS=1 timeout 120 srun --nodes=1 --ntasks=2 --cpus-per-task=1 --mpi=pmix --cpu-bind=none "$SY" train \
  --config "$SRC/configs/tiny.yaml" "${ARGS[@]}" --set train.steps=100000 --set parallel.expert_parallel=2 \
  --run-dir "$TMP/killed" >"$TMP/killed.log" 2>&1 &
srun_pid=$!
three_steps() { [ -f "$TMP/killed/metrics.jsonl" ] && [ "$(wc -l <"$TMP/killed/metrics.jsonl")" -ge 3 ]; }
wait_for "$srun_pid" three_steps
# a rank itself (its command line starts with the binary), not the timeout or srun around it
victim=$(pgrep -f -- "^$SY train .*--run-dir $TMP/killed" | tail -1)
t0=$(date +%s)
kill -9 "$victim"
killed_rc=0
wait "$srun_pid" || killed_rc=$?
t1=$(date +%s)
set -e

# preemption: SIGUSR1 to the tasks of a running job, then resume
PRE=("${ARGS[@]}" --set train.steps=400 --set train.log_interval=1000)
job=$(CONFIG="$SRC/configs/tiny.yaml" RUN_DIR="$TMP/pre" SWITCHYARD_BIN="$SY" sbatch --parsable --nodes=1 \
  --ntasks-per-node=2 --cpus-per-task=1 --output="$TMP/pre.out" scripts/slurm_train.sbatch "${PRE[@]}")
# until 5 steps are done while the job is queued or running (no budget of its own)
until [ -f "$TMP/pre/metrics.jsonl" ] && [ "$(wc -l <"$TMP/pre/metrics.jsonl")" -ge 5 ]; do
  squeue -h -j "$job" 2>/dev/null | grep -q . || { echo "FAIL: job $job ended before 5 steps"; exit 1; }
  sleep 0.1
done
scancel --signal=USR1 "$job"
while squeue -h -j "$job" 2>/dev/null | grep -q .; do sleep 0.2; done
pre_exit=$(scontrol show job "$job" 2>/dev/null | grep -o "ExitCode=[0-9:]*" | head -1 || true)
echo "$pre_exit" > "$TMP/pre.exit"
CONFIG="$SRC/configs/tiny.yaml" RUN_DIR="$TMP/pre" SWITCHYARD_BIN="$SY" RESUME=1 timeout 300 sbatch --wait \
  --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --output="$TMP/pre2.out" scripts/slurm_train.sbatch "${PRE[@]}" >/dev/null
OMP_NUM_THREADS=1 mpirun -np 2 --bind-to none "$SY" train --config "$SRC/configs/tiny.yaml" "${PRE[@]}" \
  --set parallel.expert_parallel=2 --set parallel.token_exchange=auto --run-dir "$TMP/pre_ref" >/dev/null

/usr/bin/python3 - "$TMP" "$killed_rc" "$((t1 - t0))" <<'PY'
import json, re, sys
tmp, killed_rc, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
passed = failed = 0
def check(what, ok, detail=""):
    global passed, failed
    passed += ok; failed += not ok
    print(f"{what:55s} {detail} {'ok' if ok else 'FAIL'}")
def losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if "loss" in r}
s, m = losses("slurm"), losses("mpirun")
check("sbatch job trained 4 steps", sorted(s) == [1, 2, 3, 4], sorted(s))
check("srun losses == mpirun losses (bit for bit)", s == m, f"{s} vs {m}")
out = open(f"{tmp}/slurm.out").read()
check("two ranks, expert parallel 2", "2 rank(s)" in out and "expert parallel 2" in out, "")
check("killed rank ends the srun step (non-zero, not the timeout)", killed_rc not in (0, 124), killed_rc)
check("within 30 s", seconds <= 30, f"{seconds} s")
out = open(f"{tmp}/pre.out").read()
m = re.search(r"stopped by signal 10 after step (\d+)", out)
check("USR1: every rank stopped after the same step, saved", m is not None and "checkpoint of step" in out,
      m.group(0) if m else out[-300:])
stopped = int(m.group(1)) if m else -1
check("USR1: stopped well before the end", 0 < stopped < 400, stopped)
pre_exit = open(f"{tmp}/pre.exit").read().strip()
check("USR1: the job exited 0", pre_exit == "ExitCode=0:0", pre_exit)
pre, ref = losses("pre"), losses("pre_ref")
check("resumed run reaches step 400", max(pre) == 400 and len(pre) == 400, f"{len(pre)} records")
check("resumed losses == uninterrupted (bit for bit)", all(pre[s] == ref[s] for s in ref), "")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
