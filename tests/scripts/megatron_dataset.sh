#!/usr/bin/env bash
# Megatron-LM / GPT-NeoX indexed datasets (data/megatron_dataset.h) end to end:
#  - `prepare --format megatron` output read by an independent Python reader written from
#    Megatron's _IndexReader (lib/megatron_ref.py): uint16 tokens, one sequence per document,
#    doc_idx 0..n, each sequence the document's bytes then token 0, documents in sorted order;
#  - --valid-fraction > 0: PREFIX_valid.bin/.idx holds the validation documents, the two datasets
#    together hold every document once;
#  - the ownership rule: an existing pair is replaced only with --overwrite and only when it is a
#    valid Megatron pair; a lone foreign PREFIX.bin is never replaced;
#  - `switchyard train` with data.train / data.valid pointing at the prefixes runs and evaluates,
#    and `eval --data` takes the .idx (and refuses --split: no splits);
#  - a broken index through `train`: exit 2, one line naming the .idx.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
REF="$SRC/tests/scripts/lib/megatron_ref.py"
fail() { echo "FAIL: $*"; exit 1; }

mkdir -p "$TMP/docs/sub"
for i in $(seq 12); do
  for j in $(seq $((20 + i * 5))); do echo "document $i line $j: the quick brown fox $((i * j % 97))"; done \
    > "$TMP/docs/d$(printf %02d "$i").txt"
done
printf 'caf\xc3\xa9 \xe2\x82\xac\n' > "$TMP/docs/sub/utf8.txt"  # bytes above 127

# 1. everything in one dataset, read back by the independent reader (documents in sorted order)
"$SY" prepare --input "$TMP/docs" --output "$TMP/meg/all" --format megatron --valid-fraction 0 > "$TMP/p0.log" ||
  fail "prepare --format megatron"
[ -f "$TMP/meg/all.bin" ] && [ -f "$TMP/meg/all.idx" ] || fail "no all.bin + all.idx: $(ls "$TMP/meg")"
grep -q "all.bin + .*all.idx" "$TMP/p0.log" || fail "summary does not name both files: $(cat "$TMP/p0.log")"
ls "$TMP/meg" | grep -q _valid && fail "--valid-fraction 0 wrote a _valid dataset"
/usr/bin/python3 "$REF" check "$TMP/meg/all" $(cd "$TMP/docs" && find . -type f | sed 's|^\./||' | LC_ALL=C sort |
  sed "s|^|$TMP/docs/|") || fail "Python reader disagrees with prepare --format megatron"

# 2. train and valid datasets: every document exactly once over the two
"$SY" prepare --input "$TMP/docs" --output "$TMP/meg/corpus.bin" --format megatron --valid-fraction 0.3 \
  > "$TMP/p1.log" || fail "prepare --valid-fraction 0.3"
for f in corpus.bin corpus.idx corpus_valid.bin corpus_valid.idx; do [ -f "$TMP/meg/$f" ] || fail "no $f"; done
/usr/bin/python3 - "$REF" "$TMP/meg" "$TMP/docs" <<'PY' || fail "split datasets"
import os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import megatron_ref
meg, docs = sys.argv[2], sys.argv[3]
_, train, t_idx = megatron_ref.read_dataset(meg + "/corpus")
_, valid, v_idx = megatron_ref.read_dataset(meg + "/corpus_valid")
assert train and valid, (len(train), len(valid))
assert t_idx == list(range(len(train) + 1)) and v_idx == list(range(len(valid) + 1))
want = []
for root, _, files in os.walk(docs):
    for f in files:
        want.append(list(open(os.path.join(root, f), "rb").read()) + [0])
got = [s.tolist() for s in train + valid]
assert sorted(got) == sorted(want), "train + valid is not every document once"
PY

# 3. ownership: no --overwrite, a foreign .bin, a lone .bin; --overwrite of our own pair works
expect_exit2() {
  local what=$1 needle=$2; shift 2
  set +e; "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?; set -e
  [ $rc -eq 2 ] && grep -qF -- "$needle" "$TMP/err" || { echo "FAIL $what: rc=$rc"; cat "$TMP/err"; exit 1; }
}
PREP=("$SY" prepare --input "$TMP/docs" --format megatron --valid-fraction 0)
expect_exit2 "existing output" "pass --overwrite" "${PREP[@]}" --output "$TMP/meg/all"
before=$(md5sum < "$TMP/meg/all.idx")
"${PREP[@]}" --output "$TMP/meg/all" --overwrite >/dev/null || fail "--overwrite of a pair prepare wrote"
[ "$(md5sum < "$TMP/meg/all.idx")" = "$before" ] || fail "--overwrite changed a deterministic output"
mkdir -p "$TMP/foreign"
head -c 4000 /dev/urandom > "$TMP/foreign/x.bin"
cp "$TMP/foreign/x.bin" "$TMP/foreign/x.bin.orig"
expect_exit2 "lone foreign .bin" "not a valid Megatron .bin/.idx pair" "${PREP[@]}" --output "$TMP/foreign/x" --overwrite
cp "$TMP/meg/all.idx" "$TMP/foreign/x.idx"  # an index that does not fit the .bin
expect_exit2 "mismatched pair" "not a valid Megatron .bin/.idx pair" "${PREP[@]}" --output "$TMP/foreign/x" --overwrite
cmp -s "$TMP/foreign/x.bin" "$TMP/foreign/x.bin.orig" || fail "a foreign .bin was replaced"
expect_exit2 "one document with a valid split" "--valid-fraction 0" \
  "$SY" prepare --input "$TMP/docs/d01.txt" --output "$TMP/meg/one" --format megatron --valid-fraction 0.5
expect_exit2 "unknown format" "--format" "$SY" prepare --input "$TMP/docs" --output "$TMP/x" --format parquet
ls "$TMP/meg" | grep -q tmp- && fail "temporary files left: $(ls "$TMP/meg")"

# 4. training on the prefixes, with evaluation on the valid dataset; eval on the prefix and the .bin
"$SY" train "${SMALL_MODEL[@]}" --set data.train="$TMP/meg/corpus" --set data.valid="$TMP/meg/corpus_valid.bin" \
  --set train.steps=3 --set train.log_interval=1 --set train.eval_interval=3 --set train.eval_windows=2 \
  --run-dir "$TMP/run" >"$TMP/train.log" 2>&1 || { cat "$TMP/train.log"; fail "train on a Megatron dataset"; }
/usr/bin/python3 - "$TMP/run/metrics.jsonl" <<'PY' || { cat "$TMP/train.log"; fail "metrics of the Megatron run"; }
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in recs if "loss" in r]
evals = [r for r in recs if "eval_loss" in r]
assert len(steps) >= 3 and all(math.isfinite(r["loss"]) for r in steps), steps
assert evals and all(math.isfinite(r["eval_loss"]) and r["eval_tokens"] > 0 for r in evals), evals
PY

# 5. a broken dataset through the command line: exit 2 and one line naming the file
cp "$TMP/meg/corpus.bin" "$TMP/meg/broken.bin"
/usr/bin/python3 -c 'import sys; b = bytearray(open(sys.argv[1], "rb").read()); b[9] = 2; open(sys.argv[2], "wb").write(b)' \
  "$TMP/meg/corpus.idx" "$TMP/meg/broken.idx"
expect_exit2 "index version 2" "$TMP/meg/broken.idx: Megatron index version 2" \
  "$SY" train "${SMALL_MODEL[@]}" --set data.train="$TMP/meg/broken" --set train.steps=1 --run-dir "$TMP/run2"
[ "$(grep -c . "$TMP/err")" -eq 1 ] || { cat "$TMP/err"; fail "more than one error line"; }
expect_exit2 "eval --split" "no splits" "$SY" eval --checkpoint "$TMP/run" --data "$TMP/meg/corpus" --split valid
"$SY" eval --checkpoint "$TMP/run" --data "$TMP/meg/corpus_valid.idx" --max-windows 2 > "$TMP/eval.json" ||
  fail "eval on a Megatron .idx path"
grep -q '"loss"' "$TMP/eval.json" || fail "eval output: $(cat "$TMP/eval.json")"
echo "megatron_dataset: ok"
