#!/usr/bin/env bash
# The balance metrics of metrics.jsonl and the progress line's balance summary, end to end
# (launch/balance_metrics.h):
#  - a short MoE run (two data-parallel ranks, two micro-batches each, one MoE layer after a dense
#    one): every step record has busiest30_share, max_over_mean and load_cv, one finite number per
#    MoE layer, equal to what Python computes from the same record's expert_load (busiest
#    ceil(3E/10) experts, population std); mean_k is top_k (2) and dropped_fraction 0 in every
#    layer (no top-p, no capacity); every progress line keeps its `tok/s` and `ETA` fields and
#    ends with the summary of its step's record (mean over layers, worst layer, mean k);
#  - the same run with a capacity factor of 0.5: dropped_fraction in (0, 1) in some layer, and
#    the progress line ends with the mean dropped fraction;
#  - a model without MoE layers: empty per-layer lists, no summary on the progress line.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
mpirun -np 2 --bind-to none "$SY" train "${SMALL_MODEL[@]}" --set train.steps=4 --set train.log_interval=1 \
  --set train.grad_accum=2 --set model.n_layers=3 --set model.first_dense_layers=1 \
  --set model.dense_ffn_size=96 --run-dir "$TMP/moe" >"$TMP/moe.log" 2>&1 ||
  { echo "FAIL: MoE run"; cat "$TMP/moe.log"; exit 1; }
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 --set train.log_interval=1 \
  --set model.moe.router.capacity_factor=0.5 --run-dir "$TMP/capacity" >"$TMP/capacity.log" 2>&1 ||
  { echo "FAIL: capacity run"; cat "$TMP/capacity.log"; exit 1; }
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 --set train.log_interval=1 --set model.first_dense_layers=2 \
  --set model.dense_ffn_size=96 --run-dir "$TMP/dense" >"$TMP/dense.log" 2>&1 ||
  { echo "FAIL: dense run"; cat "$TMP/dense.log"; exit 1; }

/usr/bin/python3 - "$TMP" <<'PY'
import json, math, re, sys
tmp = sys.argv[1]
failed = 0
def check(ok, what):
    global failed
    failed += not ok
    print(f"{'ok' if ok else 'FAIL'}: {what}")

def expected(shares):  # one layer's values from its token shares
    E = len(shares)
    if sum(shares) == 0:
        return 0.0, 0.0, 0.0
    busiest = sum(sorted(shares, reverse=True)[:max(1, math.ceil(3 * E / 10))])
    mean = 1 / E
    std = math.sqrt(sum((s - mean) ** 2 for s in shares) / E)
    return busiest, max(shares) / mean, std / mean

def steps(run):
    return [json.loads(l) for l in open(f"{tmp}/{run}/metrics.jsonl") if '"loss"' in l]

def progress(run):  # step -> progress line
    return {int(m.group(1)): l for l in open(f"{tmp}/{run}.log") if (m := re.match(r"step (\d+)/\d+ \|", l))}

recs, lines = steps("moe"), progress("moe")
check(len(recs) == 4 and sorted(lines) == [1, 2, 3, 4], f"4 step records and 4 progress lines ({len(recs)}, {sorted(lines)})")
for r in recs:
    keys = ("busiest30_share", "max_over_mean", "load_cv")
    layers = r["expert_load"]
    check(len(layers) == 2 and all(len(r[k]) == 2 for k in keys), f"step {r['step']}: one value per MoE layer")
    for l, shares in enumerate(layers):
        got = [r[k][l] for k in keys]
        want = expected(shares)
        check(all(isinstance(g, float) and math.isfinite(g) and abs(g - w) <= 1e-12 * max(1, w)
                  for g, w in zip(got, want)), f"step {r['step']} layer {l}: {got} == {want}")
    check(r["mean_k"] == [2.0, 2.0] and r["dropped_fraction"] == [0.0, 0.0],
          f"step {r['step']}: mean_k {r['mean_k']} (2 each), dropped_fraction {r['dropped_fraction']} (0 each)")
    b, m = r["busiest30_share"], r["max_over_mean"]
    summary = (f"| busiest30 {sum(b) / len(b):.2f} (worst {max(b):.2f}) "
               f"max/mean {sum(m) / len(m):.2f} (worst {max(m):.2f}) k 2.00")
    line = lines.get(r["step"], "")
    check(" tok/s | ETA " in line and line.rstrip().endswith(summary), f"progress line {line.strip()!r} ends with {summary!r}")

recs, lines = steps("capacity"), progress("capacity")
for r in recs:
    d = r["dropped_fraction"]
    line = lines.get(r["step"], "").rstrip()
    check(any(0 < x < 1 for x in d) and line.endswith(f" drop {sum(d) / len(d):.3f}"),
          f"capacity step {r['step']}: dropped_fraction {d}, progress line {line!r}")

recs, lines = steps("dense"), progress("dense")
check(len(recs) == 2 and all(r[k] == [] for r in recs for k in ("expert_load", "busiest30_share", "max_over_mean", "load_cv")),
      "dense model: empty per-layer lists")
check(len(lines) == 2 and all("busiest30" not in l and re.search(r"tok/s \| ETA \S+$", l.rstrip()) for l in lines.values()),
      "dense model: progress lines without a summary")
sys.exit(1 if failed else 0)
PY
