#!/usr/bin/env bash
# Bad input on the command line, in configs and in data files: exactly one error line on stderr
# that names the file or key, exit code 2, never a crash.
set -uo pipefail
BUILD=${1:?build dir}
SRC=${SWITCHYARD_SOURCE_DIR:?}
SY="$BUILD/switchyard"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0; passes=0

# expect_error NAME NEEDLE -- command...: exit code 2, one stderr line containing NEEDLE
expect_error() {
  local name=$1 needle=$2; shift 3
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  local lines; lines=$(grep -c . "$TMP/err")
  if [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && grep -qF -- "$needle" "$TMP/err"; then
    passes=$((passes+1))
  else
    fails=$((fails+1))
    echo "FAIL $name: rc=$rc (want 2), $lines stderr line(s) (want 1), want '$needle' in:"; cat "$TMP/err"
  fi
}

printf 'hello world\n' > "$TMP/a.txt"; printf 'another document\n' > "$TMP/b.txt"
"$SY" prepare --input "$TMP/a.txt" "$TMP/b.txt" --output "$TMP/tok.h5" --valid-fraction 0 >/dev/null || { echo "FAIL prepare"; exit 1; }
for i in $(seq 200); do echo "line $i of a longer text document"; done > "$TMP/long.txt"
"$SY" prepare --input "$TMP/long.txt" --output "$TMP/long.h5" --valid-fraction 0 >/dev/null || { echo "FAIL prepare"; exit 1; }

cp "$SRC/configs/tiny.yaml" "$TMP/good.yaml"
sed 's/^    top_k: 2 /    topk: 2 /' "$TMP/good.yaml" > "$TMP/unknown.yaml"
sed 's/^  steps: 300/  steps: many/' "$TMP/good.yaml" > "$TMP/type.yaml"
sed 's/^  n_kv_heads: 4 /  n_kv_heads: 3 /' "$TMP/good.yaml" > "$TMP/heads.yaml"
printf 'model: [unclosed\n' > "$TMP/syntax.yaml"
head -c 3000 /dev/urandom > "$TMP/garbage.bin"
/usr/bin/python3 - "$TMP/short.bin" <<'PY'
import struct, sys
hdr = [0] * 256; hdr[0], hdr[1], hdr[2] = 20240520, 1, 1000   # says 1000 tokens, holds 10
open(sys.argv[1], "wb").write(struct.pack("<256i", *hdr) + b"\0\1" * 10)
PY

expect_error unknown_key "model.moe.topk" -- "$SY" train --config "$TMP/unknown.yaml"
expect_error wrong_type "train.steps" -- "$SY" train --config "$TMP/type.yaml"
expect_error inconsistent "n_kv_heads" -- "$SY" train --config "$TMP/heads.yaml"
expect_error yaml_syntax "syntax.yaml" -- "$SY" train --config "$TMP/syntax.yaml"
expect_error missing_config "nope.yaml" -- "$SY" train --config "$TMP/nope.yaml"
expect_error bad_override "train.stepz" -- "$SY" train --config "$TMP/good.yaml" --set train.stepz=3
expect_error override_type "train.micro_batch" -- "$SY" train --config "$TMP/good.yaml" --set train.micro_batch=abc
expect_error missing_data "missing.h5" -- "$SY" train --config "$TMP/good.yaml" --set data.train="$TMP/missing.h5"
expect_error garbage_data "garbage.bin" -- "$SY" train --config "$TMP/good.yaml" --set data.train="$TMP/garbage.bin"
expect_error short_shard "short.bin" -- "$SY" train --config "$TMP/good.yaml" --set data.train="$TMP/short.bin"
expect_error data_too_short "tok.h5" -- "$SY" train --config "$TMP/good.yaml" --set data.train="$TMP/tok.h5" --run-dir "$TMP/run"
expect_error missing_split "'valid'" -- "$SY" train --config "$TMP/good.yaml" --set data.train="$TMP/long.h5" --set data.valid="$TMP/long.h5" --run-dir "$TMP/run"
expect_error eval_no_model "nomodel" -- "$SY" eval --init-from "$TMP/nomodel" --data "$TMP/long.h5"
expect_error eval_two_sources "exactly one" -- "$SY" eval --init-from a --checkpoint b --data "$TMP/long.h5"
expect_error bad_init_from "nomodel" -- "$SY" train --config "$TMP/good.yaml" --init-from "$TMP/nomodel"
# not a regular file, several documents, sizes beyond any machine, thread counts, option misuse
mkfifo "$TMP/fifo.yaml"
expect_error config_fifo "not a regular file" -- timeout 20 "$SY" train --config "$TMP/fifo.yaml"
expect_error config_device "not a regular file" -- timeout 20 "$SY" train --config /dev/zero
head -c 2000000 /dev/zero | tr '\0' '#' > "$TMP/huge.yaml"
expect_error config_huge "a YAML config is at most" -- "$SY" train --config "$TMP/huge.yaml"
{ cat "$TMP/good.yaml"; echo "---"; echo "train: {steps: 5}"; } > "$TMP/two_docs.yaml"
expect_error config_two_documents "2 YAML documents" -- "$SY" train --config "$TMP/two_docs.yaml"
for key in model.n_layers model.moe.n_experts model.vocab_size model.d_model model.moe.expert_size; do
  expect_error "huge_$key" "$key: 1000000000 is more than" -- timeout 20 "$SY" train --config "$TMP/good.yaml" --set "$key=1000000000"
done
expect_error huge_params "parameters is more than" -- timeout 20 "$SY" train --config "$TMP/good.yaml" \
  --set model.n_layers=4096 --set model.moe.n_experts=65536 --set model.moe.expert_size=65536
expect_error huge_micro_batch "train.micro_batch" -- timeout 20 "$SY" train --config "$TMP/good.yaml" --set train.micro_batch=1000000
expect_error huge_steps "train.steps" -- timeout 20 "$SY" train --config "$TMP/good.yaml" --set train.steps=4611686018427387904
expect_error huge_threads "train.threads" -- timeout 20 "$SY" train --config "$TMP/good.yaml" --set train.threads=100000
expect_error huge_omp_threads "OMP_NUM_THREADS" -- env OMP_NUM_THREADS=100000 timeout 20 "$SY" train --config "$TMP/good.yaml" \
  --set data.train="$TMP/long.h5" --set train.seq_len=16 --run-dir "$TMP/threads"
expect_error eval_negative_seq_len "--seq-len" -- "$SY" eval --init-from a --data "$TMP/long.h5" --seq-len -4
expect_error eval_negative_windows "--max-windows" -- "$SY" eval --init-from a --data "$TMP/long.h5" --max-windows -1
expect_error eval_split_of_shard "has no splits" -- "$SY" eval --init-from a --data "$TMP/short.bin" --split valid
expect_error resume_and_overwrite "not both" -- "$SY" train --config "$TMP/good.yaml" --resume --overwrite
expect_error init_from_and_resume "not both" -- "$SY" train --config "$TMP/good.yaml" --init-from a --resume
expect_error init_from_model_override "model.d_model" -- "$SY" train --config "$TMP/good.yaml" --init-from "$TMP/nomodel" --set model.d_model=32
mkdir -p "$TMP/ck"; head -c 300 /dev/urandom > "$TMP/ck/latest"
expect_error garbage_latest "ck/latest: damaged" -- "$SY" train --config "$TMP/good.yaml" --resume "$TMP/ck" \
  --set data.train="$TMP/long.h5" --set train.seq_len=16 --run-dir "$TMP/latest_run"
# an HF config.json within the per-key bounds whose model no machine holds: refused before allocation
"$SY" train --config "$TMP/good.yaml" --set data.train="$TMP/long.h5" --set train.seq_len=16 --set train.steps=1 \
  --set model.d_model=32 --set model.n_layers=1 --set model.n_heads=2 --set model.n_kv_heads=1 \
  --set model.moe.expert_size=16 --set train.eval_windows=1 --run-dir "$TMP/small" >/dev/null 2>&1
mkdir -p "$TMP/hugehf"; cp "$TMP/small/model/model.safetensors" "$TMP/hugehf/"
/usr/bin/python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c.update(vocab_size=16000000, hidden_size=65536); json.dump(c, open(sys.argv[2], 'w'))" \
  "$TMP/small/model/config.json" "$TMP/hugehf/config.json"
echo "mine" > "$TMP/mine.bin"
expect_error dump_logits_over_a_file "File exists" -- "$SY" eval --init-from "$TMP/small/model" --data "$TMP/long.h5" \
  --split train --max-windows 1 --dump-logits "$TMP/mine.bin"
[ "$(cat "$TMP/mine.bin")" = mine ] && passes=$((passes+1)) || { fails=$((fails+1)); echo "FAIL dump-logits replaced a file"; }
expect_error huge_hf_eval "GiB of memory" -- timeout 20 "$SY" eval --init-from "$TMP/hugehf" --data "$TMP/long.h5" --split train
expect_error huge_hf_export "GiB of memory" -- timeout 20 "$SY" export --checkpoint "$TMP/hugehf" --out "$TMP/hugeexp"
expect_error huge_hf_train "GiB of memory" -- timeout 20 "$SY" train --config "$TMP/good.yaml" --init-from "$TMP/hugehf" \
  --set data.train="$TMP/long.h5" --run-dir "$TMP/hugerun"
expect_error missing_option "--config" -- "$SY" train
expect_error bad_option "--bogus" -- "$SY" train --config "$TMP/good.yaml" --bogus

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
