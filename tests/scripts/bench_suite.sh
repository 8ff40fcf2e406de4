#!/usr/bin/env bash
# `switchyard bench` (the benchmark suite) and scripts/bench_all.sh:
#  - `bench --quick --only <a few>` runs from the source tree and its --json has the documented
#    schema (switchyard.bench/1): one row per selected scenario, every row with a positive rate and
#    ceiling and fraction = rate / ceiling, the machine described;
#  - on one rank the collective scenarios are skipped with the mpirun command that runs them;
#    under `mpirun -np 2` they run (rows of 2 ranks) and the others say they run on one rank;
#  - an unknown --only name: exit 2, one line listing the valid names; --device cuda where this
#    build or machine has no GPU: exit 2, one line;
#  - bench_compare.py merge joins the two runs; bench_all.sh --current (no run: the comparison
#    alone, on saved JSON): against a baseline with every rate 10x higher, every row is flagged and
#    the exit code is 1; against the current file itself, exit 0; a baseline from another CPU
#    warns; a row whose shape differs is not compared.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$SRC"  # configs/ for the train_* and file scenarios

ONLY=gemm_fp32,attention_fwd,moe_bwd_skewed,adamw,data_loading,train_tiny,checkpoint_save,export
"$SY" bench --quick --threads 1 --only "$ONLY" --dir "$TMP" --json "$TMP/one.json" > "$TMP/one.txt"
"$SY" bench --quick --threads 1 --only exchange --json "$TMP/noranks.json" > /dev/null
OMP_NUM_THREADS=1 mpirun -np 2 "$SY" bench --quick --threads 1 --only exchange_flat,allreduce,adamw \
  --json "$TMP/ranks.json" > "$TMP/ranks.txt"
/usr/bin/python3 - "$TMP" "$ONLY" <<'PY'
import json, math, sys
tmp, only = sys.argv[1], sys.argv[2].split(",")

def rows_ok(doc, names, ranks):
    assert doc["schema"] == "switchyard.bench/1", doc.get("schema")
    for k in ("cpu", "logical_cores", "threads", "onednn_isa", "backend"):
        assert k in doc["machine"], k
    assert [r["scenario"] for r in doc["rows"]] == names, [r["scenario"] for r in doc["rows"]]
    for r in doc["rows"]:
        for k in ("shape", "unit", "ceiling_what"):
            assert isinstance(r[k], str) and r[k], (r["scenario"], k)
        assert r["rate"] > 0 and r["ceiling"] > 0 and r["seconds"] > 0, r
        assert math.isclose(r["fraction"], r["rate"] / r["ceiling"], rel_tol=1e-9), r
        assert r["unit"] in ("GFLOP/s", "GB/s"), r
        assert r["ranks"] == ranks, r

one = json.load(open(f"{tmp}/one.json"))
rows_ok(one, only, 1)
assert one["quick"] is True and one["skipped"] == [], one["skipped"]
noranks = json.load(open(f"{tmp}/noranks.json"))
assert noranks["rows"] == []
assert [s["scenario"] for s in noranks["skipped"]] == ["exchange_flat", "exchange_hierarchical"]
assert all("mpirun -np" in s["reason"] for s in noranks["skipped"]), noranks["skipped"]
ranks = json.load(open(f"{tmp}/ranks.json"))
rows_ok(ranks, ["exchange_flat", "allreduce"], 2)
assert [s["scenario"] for s in ranks["skipped"]] == ["adamw"], ranks["skipped"]
print("bench --json: schema, rows, skipped rows: ok")
PY
grep -q "^gemm_fp32 " "$TMP/one.txt" || { echo "FAIL: no gemm_fp32 line in the table"; cat "$TMP/one.txt"; exit 1; }
[ "$(ls -A "$TMP" | grep -c switchyard-bench)" = 0 ] || { echo "FAIL: the scratch folder was left in --dir"; exit 1; }

# bad input: one line, exit 2
expect_usage() {  # expect_usage PATTERN CMD...
  local pat=$1; shift
  set +e; "$@" > "$TMP/out.txt" 2> "$TMP/err.txt"; local rc=$?; set -e
  [ "$rc" = 2 ] || { echo "FAIL: exit $rc (2 expected): $*"; cat "$TMP/err.txt"; exit 1; }
  [ "$(wc -l < "$TMP/err.txt")" = 1 ] || { echo "FAIL: not one error line: $*"; cat "$TMP/err.txt"; exit 1; }
  grep -q -- "$pat" "$TMP/err.txt" || { echo "FAIL: error without '$pat': $*"; cat "$TMP/err.txt"; exit 1; }
}
expect_usage "no scenario \`nosuch\`.*gemm_fp32,gemm_bf16,attention_fwd" "$SY" bench --only gemm,nosuch
if ! nvidia-smi -L > /dev/null 2>&1; then
  expect_usage "bench --device" "$SY" bench --device cuda --only gemm_fp32
fi

# the comparison on saved files
/usr/bin/python3 "$SRC/scripts/bench_compare.py" merge "$TMP/one.json" "$TMP/ranks.json" > "$TMP/merged.json"
/usr/bin/python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
m = json.load(open(f"{tmp}/merged.json"))
names = [r["scenario"] for r in m["rows"]]
assert "exchange_flat" in names and "allreduce" in names and "gemm_fp32" in names, names
assert [s["scenario"] for s in m["skipped"]] == [], m["skipped"]  # adamw ran on one rank
high = json.loads(json.dumps(m))
for r in high["rows"]:
    r["rate"] *= 10
json.dump(high, open(f"{tmp}/high.json", "w"))
other = json.loads(json.dumps(m))
other["machine"]["cpu"] = "Some Other CPU"
other["rows"][0]["shape"] = "1x1x1"
json.dump(other, open(f"{tmp}/other.json", "w"))
PY
N=$(/usr/bin/python3 -c "import json; print(len(json.load(open('$TMP/merged.json'))['rows']))")
set +e
bash "$SRC/scripts/bench_all.sh" --current "$TMP/merged.json" --baseline "$TMP/high.json" > "$TMP/cmp_high.txt"
RC_HIGH=$?
bash "$SRC/scripts/bench_all.sh" --current "$TMP/merged.json" --baseline "$TMP/merged.json" > "$TMP/cmp_same.txt"
RC_SAME=$?
bash "$SRC/scripts/bench_all.sh" --current "$TMP/merged.json" --baseline "$TMP/other.json" --threshold 5 > "$TMP/cmp_other.txt"
RC_OTHER=$?
set -e
[ "$RC_HIGH" = 1 ] || { echo "FAIL: 10x baseline: exit $RC_HIGH (1 expected)"; cat "$TMP/cmp_high.txt"; exit 1; }
[ "$(grep -c REGRESSION "$TMP/cmp_high.txt")" = "$N" ] || { echo "FAIL: not every row flagged"; cat "$TMP/cmp_high.txt"; exit 1; }
[ "$RC_SAME" = 0 ] || { echo "FAIL: same baseline: exit $RC_SAME"; cat "$TMP/cmp_same.txt"; exit 1; }
! grep -q "REGRESSION\|WARNING" "$TMP/cmp_same.txt" || { echo "FAIL: same baseline flagged"; cat "$TMP/cmp_same.txt"; exit 1; }
[ "$RC_OTHER" = 0 ] || { echo "FAIL: other machine: exit $RC_OTHER"; cat "$TMP/cmp_other.txt"; exit 1; }
grep -q "^WARNING: the baseline was measured on another machine.*Some Other CPU" "$TMP/cmp_other.txt" \
  || { echo "FAIL: no machine warning"; cat "$TMP/cmp_other.txt"; exit 1; }
grep -q "^gemm_fp32 .*not compared: shape" "$TMP/cmp_other.txt" || { echo "FAIL: shape change compared"; cat "$TMP/cmp_other.txt"; exit 1; }
# a file that is not a bench JSON: exit 2, one line naming it
echo '{"rows": 3}' > "$TMP/bad.json"
expect_usage "bad.json: not a \`switchyard bench --json\` file" bash "$SRC/scripts/bench_all.sh" --current "$TMP/bad.json" --baseline "$TMP/merged.json"
echo "bench_suite: ok"
