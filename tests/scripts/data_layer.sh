#!/usr/bin/env bash
# The data layer end to end (data/train_data.h, launch/data_checkpoint.h, launch/data_report.h):
# (a) data.sample: document with packing, mining and noise weighting on 2 ranks resumes from a
#     checkpoint bit for bit (losses and data metrics), and data.prefetch false trains the same;
#     on 1 rank it resumes with a note that the draws continue on fresh streams;
# (b) blends: data.train as a list of {path, weight} trains in window and document mode;
# (c) data-report lists the samples and writes every sample to --json;
# (d) bad input, each one clear error with exit code 2: a blend weight <= 0, a missing blend file,
#     document mode on an llm.c shard, mining in window mode, a token outside the vocabulary,
#     resuming with another train.seq_len (the statistics do not fit), data-report of a window run.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

# short documents of varied length, as a Megatron dataset (no splits) and an HDF5 file
mkdir -p "$TMP/docs"
for i in $(seq 60); do
  for k in $(seq $(( 1 + i * 7 % 11 ))); do echo "doc $i line $k: $(( i * k * 7919 % 1000 )) words"; done > "$TMP/docs/d$i.txt"
done
"$SY" prepare --input "$TMP/docs" --output "$TMP/meg" --format megatron --valid-fraction 0.1 >/dev/null
"$SY" prepare --input "$TMP/docs" --output "$TMP/docs.h5" --valid-fraction 0.1 >/dev/null
DOC=("${SMALL_MODEL[@]}" --set data.train="$TMP/meg" --set data.valid="$TMP/meg_valid" --set train.steps=8
     --set train.micro_batch=2 --set train.grad_accum=2 --set train.seq_len=128 --set data.sample=document --set data.packing=true
     --set data.mining.enabled=true --set data.noise.enabled=true --set data.mining.warmup_steps=2
     --set data.noise.warmup_steps=2 --set data.mining.min_visits=1 --set data.noise.min_visits=1
     --set data.noise.threshold=0.05 --set data.mining.threshold=0.01 --set checkpoint.interval=4
     --set checkpoint.keep_last=4)
mp() { mpirun -np 2 --bind-to none "$SY" "$@"; }

# ---- (a) resume and prefetch
mp train "${DOC[@]}" --run-dir "$TMP/full" >"$TMP/full.log"
mp train "${DOC[@]}" --run-dir "$TMP/resumed" --resume "$TMP/full/checkpoints/step-000004" >"$TMP/resumed.log"
mp train "${DOC[@]}" --run-dir "$TMP/noprefetch" --set data.prefetch=false >/dev/null
test -f "$TMP/full/checkpoints/step-000004/data.h5" || { echo "FAIL: no data.h5 in the checkpoint"; exit 1; }
/usr/bin/python3 - "$TMP" <<'PY'
import json, sys
tmp = sys.argv[1]
def rec(run):
    return {r["step"]: r for r in map(json.loads, open(f"{tmp}/{run}/metrics.jsonl")) if "loss" in r}
full, res, nopf = rec("full"), rec("resumed"), rec("noprefetch")
assert sorted(full) == list(range(1, 9)), sorted(full)
for s in range(1, 9):
    for k in ("loss", "grad_norm", "data"):
        assert full[s][k] == nopf[s][k], f"prefetch changes step {s} {k}: {full[s][k]} vs {nopf[s][k]}"
        if s > 4:
            assert full[s][k] == res[s][k], f"resume changes step {s} {k}: {full[s][k]} vs {res[s][k]}"
d = full[8]["data"]
assert d["samples"] > 8, d           # packed: more samples than rows (2 ranks x 2 x 2 rows)
assert d["padding"] < 0.5, d
assert any(full[s]["data"]["noisy_share"] > 0 or full[s]["data"]["hard_share"] > 0 for s in full), \
    "nothing was ever flagged: the scores are not exercised"
print("resume and prefetch: identical over 8 steps; step 8:", d)
PY

# on another number of ranks the statistics resume and the draws go on fresh streams, said once
"$SY" train "${DOC[@]}" --run-dir "$TMP/one_rank" --resume "$TMP/full/checkpoints/step-000004" 2>"$TMP/one_rank.err" >/dev/null
grep -q "fresh streams" "$TMP/one_rank.err" || { echo "FAIL: no note about the draws"; cat "$TMP/one_rank.err"; exit 1; }

# ---- (b) blends
cat > "$TMP/blend.yaml" <<EOF
data:
  train:
    - {path: "$TMP/meg", weight: 3}
    - "$TMP/docs.h5"
EOF
blend_cfg() {  # tiny.yaml with data.train replaced by the list above
  /usr/bin/python3 - "$SRC/configs/tiny.yaml" "$TMP/blend.yaml" "$1" <<'PY'
import sys
tiny, blend, out = sys.argv[1:]
lines = open(tiny).read().split("\n")
i = next(k for k, l in enumerate(lines) if l.startswith("  train:") and k > 0 and any(x.startswith("data:") for x in lines[:k]))
lines[i:i + 1] = open(blend).read().split("\n")[1:-1]
open(out, "w").write("\n".join(lines))
PY
}
blend_cfg "$TMP/blend_cfg.yaml"
MODEL_ONLY=()  # SMALL_MODEL without its --config and data.train
for ((i = 2; i < ${#SMALL_MODEL[@]}; i += 2)); do
  [[ ${SMALL_MODEL[i + 1]} == data.train=* ]] || MODEL_ONLY+=("${SMALL_MODEL[i]}" "${SMALL_MODEL[i + 1]}")
done
B=(--config "$TMP/blend_cfg.yaml" "${MODEL_ONLY[@]}" --set data.valid="$TMP/meg_valid" --set train.steps=3
   --set train.micro_batch=2)
"$SY" train "${B[@]}" --run-dir "$TMP/blend_window" >/dev/null
"$SY" train "${B[@]}" --run-dir "$TMP/blend_doc" --set data.sample=document >/dev/null
grep -q 'path: ".*meg", weight: 3.0' "$TMP/blend_doc/config.yaml" || { echo "FAIL: the blend is not in config.yaml"; cat "$TMP/blend_doc/config.yaml"; exit 1; }

# ---- (c) data-report
"$SY" data-report --checkpoint "$TMP/full" --top 3 --json "$TMP/report.json" >"$TMP/report.txt"
grep -q "most noisy" "$TMP/report.txt" && grep -q "most hard" "$TMP/report.txt" || { cat "$TMP/report.txt"; exit 1; }
/usr/bin/python3 - "$TMP/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["step"] == 8 and len(r["samples"]) > 60, (r["step"], len(r["samples"]))
visits = sum(s["visits"] for s in r["samples"])
assert visits > 0 and all({"excess", "slope", "noisy", "hard", "draw_weight"} <= set(s) for s in r["samples"])
print("data-report:", len(r["samples"]), "samples,", visits, "visits")
PY

# ---- (d) bad input: exit 2 and one message naming the key or file
expect_usage() {  # WHAT_TO_FIND CMD...
  local want=$1; shift
  set +e
  "$@" >"$TMP/err.out" 2>"$TMP/err.txt"
  local rc=$?
  set -e
  if [ "$rc" != 2 ] || ! grep -q -- "$want" "$TMP/err.txt"; then
    echo "FAIL: expected exit 2 mentioning '$want' from: $*"; echo "rc=$rc"; cat "$TMP/err.txt"; exit 1
  fi
}
sed 's/weight: 3/weight: 0/' "$TMP/blend.yaml" > "$TMP/blend0.yaml" && cp "$TMP/blend0.yaml" "$TMP/blend.yaml" && blend_cfg "$TMP/bad_weight.yaml"
expect_usage "data.train\[0\].weight" "$SY" train --config "$TMP/bad_weight.yaml" --run-dir "$TMP/bad1"
sed "s|weight: 0|weight: 1|; s|docs.h5|missing.h5|" "$TMP/blend0.yaml" > "$TMP/blend.yaml" && blend_cfg "$TMP/bad_file.yaml"
expect_usage "missing.h5" "$SY" train --config "$TMP/bad_file.yaml" --set data.valid="$TMP/meg_valid" --run-dir "$TMP/bad2"
/usr/bin/python3 -c "
import struct, sys
toks = [(i * 37) % 250 + 1 for i in range(4000)]
open(sys.argv[1], 'wb').write(struct.pack('<256i', 20240520, 1, len(toks), *([0] * 253)) + struct.pack(f'<{len(toks)}H', *toks))
" "$TMP/shard.bin"
expect_usage "data.sample: window" "$SY" train "${SMALL_MODEL[@]}" --set data.train="$TMP/shard.bin" \
  --set data.sample=document --run-dir "$TMP/bad3"
expect_usage "data.mining.enabled" "$SY" train "${SMALL_MODEL[@]}" --set data.mining.enabled=true --run-dir "$TMP/bad4"
expect_usage "outside the model's vocabulary" "$SY" train "${DOC[@]}" --set model.vocab_size=100 --run-dir "$TMP/bad5"
expect_usage "data.h5" "$SY" train "${DOC[@]}" --set train.seq_len=96 --run-dir "$TMP/bad6" \
  --resume "$TMP/full/checkpoints/step-000004"
expect_usage "data.sample: window" "$SY" data-report --checkpoint "$TMP/blend_window"
echo "PASS"
