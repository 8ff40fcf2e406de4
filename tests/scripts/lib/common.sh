# tests/scripts/lib/common.sh (sourced by the script tests): build dir from $1, the binary, the
# source tree, the MPI-as-root environment, a temporary folder removed on exit, and a small token
# file ($TOK) made from synthetic text.
BUILD=${1:?build dir}
SY="$BUILD/switchyard"
SRC=${SWITCHYARD_SOURCE_DIR:?}
source "$SRC/scripts/env.sh"
export OMP_NUM_THREADS=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for i in $(seq 400); do echo "line $i: the quick brown fox jumps over the lazy dog $((i * 7919 % 1000))"; done > "$TMP/a.txt"
TOK="$TMP/tok.h5"
"$SY" prepare --input "$TMP/a.txt" --output "$TOK" --valid-fraction 0 >/dev/null
# a small model of the tiny config's family, fast enough for several MPI runs per test
SMALL_MODEL=(--config "$SRC/configs/tiny.yaml" --set data.train="$TOK" --set model.d_model=64
             --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=2
             --set train.seq_len=32 --set optim.warmup_steps=1 --set train.threads=1)

# wait_for PID CMD...: waits until CMD succeeds while process PID lives; fails the test (naming
# CMD) if PID ends first. No time budget of its own (ctest's timeout bounds the test): a fixed
# polling budget on a loaded machine once let a fault test act before the moment it meant to.
wait_for() {
  local pid=$1; shift
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || { echo "FAIL: process $pid ended before: $*"; exit 1; }
    sleep 0.05
  done
}
