#!/usr/bin/env bash
# scripts/bench_all.sh: the benchmark suite (`switchyard bench`) on this machine, compared with a
# baseline. Runs the suite on one rank (every scenario but the collective ones), then the
# exchange and all-reduce scenarios under `mpirun -np 2` (one thread per rank), merges the two
# JSON files, and compares every scenario's rate with the baseline's (scripts/bench_compare.py):
# a table of baseline, now and change; a scenario more than --threshold percent slower is a
# regression (exit 1), else exit 0. A baseline measured on another machine (CPU, threads, ISA)
# gives a warning; a row whose shape differs (e.g. --quick against a full baseline) is not compared.
#
#   scripts/bench_all.sh                                     # compare with scripts/bench_baseline.json
#   scripts/bench_all.sh --save-baseline scripts/bench_baseline.json   # measure a new baseline
#   scripts/bench_all.sh --current now.json --baseline old.json        # compare two saved runs only
# Options: --baseline FILE (default scripts/bench_baseline.json), --save-baseline FILE (write this
# run's merged JSON there), --threshold PCT (default 10), --quick (small sizes), --current FILE
# (compare FILE instead of running), --json FILE (keep this run's merged JSON), --build DIR
# (default build), --ranks N (ranks of the collective scenarios, default 2).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BASELINE="" SAVE="" THRESHOLD=10 QUICK=() CURRENT="" KEEP="" BUILD=build RANKS=2
usage() { echo "usage: $0 [--baseline FILE] [--save-baseline FILE] [--threshold PCT] [--quick] [--current FILE] [--json FILE] [--build DIR] [--ranks N]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline) BASELINE=${2:?--baseline needs a file}; shift 2 ;;
    --save-baseline) SAVE=${2:?--save-baseline needs a file}; shift 2 ;;
    --threshold) THRESHOLD=${2:?--threshold needs a percentage}; shift 2 ;;
    --quick) QUICK=(--quick); shift ;;
    --current) CURRENT=${2:?--current needs a file}; shift 2 ;;
    --json) KEEP=${2:?--json needs a file}; shift 2 ;;
    --build) BUILD=${2:?--build needs a folder}; shift 2 ;;
    --ranks) RANKS=${2:?--ranks needs a number}; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench_all.sh: unknown option $1" >&2; usage ;;
  esac
done
[ -z "$BASELINE" ] && [ -f "$SRC/scripts/bench_baseline.json" ] && [ -z "$SAVE" ] && BASELINE=$SRC/scripts/bench_baseline.json

TMPD=$(mktemp -d)
trap 'rm -rf "$TMPD"' EXIT
if [ -z "$CURRENT" ]; then
  SY=$(cd "$BUILD" 2>/dev/null && pwd)/switchyard
  [ -x "$SY" ] || { echo "bench_all.sh: no $BUILD/switchyard; build first (README) or pass --build DIR" >&2; exit 2; }
  source "$SRC/scripts/env.sh"
  cd "$SRC"  # the configs folder the train_* scenarios run
  "$SY" bench "${QUICK[@]}" --json "$TMPD/one.json"
  OMP_NUM_THREADS=1 mpirun -np "$RANKS" "$SY" bench "${QUICK[@]}" --threads 1 --only exchange,allreduce \
    --json "$TMPD/ranks.json"
  /usr/bin/python3 "$SRC/scripts/bench_compare.py" merge "$TMPD/one.json" "$TMPD/ranks.json" > "$TMPD/current.json"
  CURRENT=$TMPD/current.json
  [ -n "$KEEP" ] && cp "$CURRENT" "$KEEP"
fi
if [ -n "$SAVE" ]; then
  cp "$CURRENT" "$SAVE"
  echo "bench_all.sh: baseline saved in $SAVE"
fi
[ -z "$BASELINE" ] && { echo "bench_all.sh: no baseline to compare with (--baseline FILE)"; exit 0; }
exec /usr/bin/python3 "$SRC/scripts/bench_compare.py" compare "$BASELINE" "$CURRENT" --threshold "$THRESHOLD"
