#!/usr/bin/env bash
# Never lose a user's work (launch/outputs.h: Switchyard removes or replaces only what a marker of
# its own lists). Every refused case exits 2 with one stderr line naming the folder, file or key,
# and the bytes of every file that was there before (the earlier run, a downloaded model folder with
# its .git and notes, the run's fp32 weights) are unchanged, checked by checksums of whole trees.
#  (a) A second run in a run folder that holds a run, without --resume or --overwrite: refused.
#  (b) --overwrite with fewer steps: the earlier run's files go, a user's notes.txt stays, the new
#      run's own checkpoint survives pruning and `latest` names it, metrics.jsonl holds only the new
#      run's steps.
#  (c) Resumed from an older checkpoint, pruning follows save order: the fresh save stays (step
#      order would delete it in favour of the abandoned timeline's later steps).
#  (d) export --out a downloaded model folder (config.json, README, .git/): refused, also with
#      --overwrite (its config.json is not Switchyard's).
#  (e) export --out <run>/model (the run's fp32 weights): refused, also with --overwrite.
#  (f) export over an earlier export: refused without --overwrite; with it the earlier export's
#      files go (shards of a finer split included), a README.md the user put there stays.
#  (g) A checkpoint.dir or run folder that cannot be written (under a regular file, under /proc):
#      refused before the first step, nothing recorded; a run that failed on bad data leaves its
#      folder reusable without --overwrite.
#  (h) GGUF: an existing file that is not GGUF is never replaced; an earlier GGUF export only with
#      --overwrite.
#  (j) Disk full (checkpoint.dir on a 30 MB tmpfs that holds one checkpoint of this model, not
#      two; skipped where tmpfs cannot be mounted): the second save fails with exit 2 and one line
#      saying the device is full, `latest` still names the first checkpoint, which resumes.
#  (k) prepare --output: an existing file is replaced only with --overwrite, and only when it is a
#      token file prepare wrote (a user's file with the same name stays as it was).
#  (i) Non-finite weights: a last step whose update leaves inf in the weights (lr 3e38) is exit 2
#      naming the tensor, and neither a checkpoint nor model/ is written; eval and export of a model
#      folder with one inf value refuse it naming the tensor, and go on with --allow-nonfinite.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
BASE=("${SMALL_MODEL[@]}" --set train.steps=4 --set checkpoint.interval=2 --set checkpoint.keep_last=2)
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
tree_sum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
# refused NAME NEEDLE -- command...: exit 2, one stderr line containing NEEDLE
refused() {
  local name=$1 needle=$2 rc=0; shift 3
  "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
  if [ "$rc" = 2 ] && [ "$(grep -c . "$TMP/err")" = 1 ] && grep -qF -- "$needle" "$TMP/err"; then
    ok "$name: exit 2, one line: $(cut -c1-150 "$TMP/err")"
  else
    bad "$name: rc=$rc, want 2 and one line with '$needle':"; cat "$TMP/err"
  fi
}
same() {  # NAME BEFORE AFTER
  if [ "$2" = "$3" ]; then ok "$1: unchanged"; else bad "$1: changed ($2 -> $3)"; fi
}
steps_of() { /usr/bin/python3 -c "import json,sys; print(' '.join(str(r['step']) for r in map(json.loads, open(sys.argv[1])) if 'loss' in r))" "$1"; }

# ---- (a) ----
"$SY" train "${BASE[@]}" --run-dir "$TMP/run" >/dev/null
before=$(tree_sum "$TMP/run")
refused "a: second run without --resume" "pass --overwrite" -- "$SY" train "${BASE[@]}" --run-dir "$TMP/run"
same "a: the first run" "$before" "$(tree_sum "$TMP/run")"

# ---- (b) ----
echo "my notes" >"$TMP/run/notes.txt"
"$SY" train "${BASE[@]}" --set train.steps=2 --run-dir "$TMP/run" --overwrite >/dev/null
[ "$(cat "$TMP/run/notes.txt")" = "my notes" ] && ok "b: notes.txt kept" || bad "b: notes.txt"
latest=$(cat "$TMP/run/checkpoints/latest")
[ "$latest" = step-000002 ] && [ -f "$TMP/run/checkpoints/$latest/manifest.json" ] &&
  ok "b: latest = $latest, complete" || bad "b: latest '$latest' is not a complete checkpoint"
[ ! -e "$TMP/run/checkpoints/step-000004" ] && ok "b: the earlier run's step-000004 removed" || bad "b: step-000004 left"
[ "$(steps_of "$TMP/run/metrics.jsonl")" = "1 2" ] && ok "b: metrics hold steps 1 2" ||
  bad "b: metrics steps $(steps_of "$TMP/run/metrics.jsonl")"

# ---- (c) ----
"$SY" train "${BASE[@]}" --set train.steps=6 --set checkpoint.keep_last=3 --run-dir "$TMP/c" >/dev/null
"$SY" train "${BASE[@]}" --set train.steps=3 --set checkpoint.interval=1 --run-dir "$TMP/c" \
  --resume "$TMP/c/checkpoints/step-000002" >/dev/null
kept=$(cd "$TMP/c/checkpoints" && ls -d step-* | tr '\n' ' ')
[ "$(cat "$TMP/c/checkpoints/latest")" = step-000003 ] && [ -f "$TMP/c/checkpoints/step-000003/manifest.json" ] &&
  ok "c: resumed from step 2, the fresh step-000003 kept (kept: $kept)" || bad "c: kept $kept, latest $(cat "$TMP/c/checkpoints/latest")"

# ---- (d) ----
mkdir -p "$TMP/hf/.git"
echo '{"model_type": "mixtral"}' >"$TMP/hf/config.json"
echo "downloaded" >"$TMP/hf/README.md"
echo "ref: refs/heads/main" >"$TMP/hf/.git/HEAD"
before=$(tree_sum "$TMP/hf")
refused "d: export into a downloaded model folder" "is not empty" -- "$SY" export --checkpoint "$TMP/run" --out "$TMP/hf"
refused "d: ... with --overwrite" "config.json is there and was not written by" -- \
  "$SY" export --checkpoint "$TMP/run" --out "$TMP/hf" --overwrite
same "d: the downloaded folder" "$before" "$(tree_sum "$TMP/hf")"

# ---- (e) ----
"$SY" train "${BASE[@]}" --set train.steps=2 --run-dir "$TMP/e" >/dev/null
before=$(tree_sum "$TMP/e/model")
refused "e: export over the run's weights" "is not empty" -- "$SY" export --checkpoint "$TMP/e" --out "$TMP/e/model"
refused "e: ... with --overwrite" "was written by \`switchyard train weights\`" -- \
  "$SY" export --checkpoint "$TMP/e" --out "$TMP/e/model" --overwrite
same "e: the run's fp32 weights" "$before" "$(tree_sum "$TMP/e/model")"

# ---- (f) ----
"$SY" export --checkpoint "$TMP/e" --out "$TMP/x" --max-shard-size 20KB >/dev/null
n_fine=$(ls "$TMP/x" | grep -c '^model-')
before=$(tree_sum "$TMP/x")
refused "f: export over an export" "pass --overwrite" -- "$SY" export --checkpoint "$TMP/e" --out "$TMP/x"
same "f: the earlier export" "$before" "$(tree_sum "$TMP/x")"
echo "mine" >"$TMP/x/README.md"
"$SY" export --checkpoint "$TMP/e" --out "$TMP/x" --overwrite >/dev/null
n_now=$(ls "$TMP/x" | grep -c '^model-')
[ "$(cat "$TMP/x/README.md")" = mine ] && ok "f: README.md kept" || bad "f: README.md"
[ "$n_now" = 1 ] && [ "$n_fine" -gt 1 ] && ls "$TMP/x/model-00001-of-00001.safetensors" >/dev/null &&
  ok "f: $n_fine shards replaced by 1, none left over" || bad "f: shards $n_fine -> $n_now: $(ls "$TMP/x")"

# ---- (g) ----
echo "a file" >"$TMP/afile"
refused "g: checkpoint.dir under a file" "checkpoint.dir $TMP/afile/ckpt" -- \
  "$SY" train "${BASE[@]}" --run-dir "$TMP/g1" --set checkpoint.dir="$TMP/afile/ckpt"
[ ! -e "$TMP/g1/metrics.jsonl" ] && ok "g: no step ran" || bad "g: steps ran before the error"
refused "g: checkpoint.dir under /proc" "checkpoint.dir /proc/switchyard-ckpt" -- \
  "$SY" train "${BASE[@]}" --run-dir "$TMP/g2" --set checkpoint.dir=/proc/switchyard-ckpt
refused "g: run folder under a file" "run folder $TMP/afile/run" -- "$SY" train "${BASE[@]}" --run-dir "$TMP/afile/run"
refused "g: bad data" "missing.h5" -- "$SY" train "${BASE[@]}" --run-dir "$TMP/g3" --set data.train="$TMP/missing.h5"
"$SY" train "${BASE[@]}" --set train.steps=2 --run-dir "$TMP/g3" >/dev/null &&
  ok "g: the failed run's folder is reused without --overwrite" || bad "g: reuse after a failed start"

# ---- (h) ----
echo "not a model" >"$TMP/notes.gguf"
refused "h: GGUF over a non-GGUF file" "is not a GGUF file" -- \
  "$SY" export --checkpoint "$TMP/e" --format gguf --out "$TMP/notes.gguf" --overwrite
[ "$(cat "$TMP/notes.gguf")" = "not a model" ] && ok "h: the file is unchanged" || bad "h: the file changed"
"$SY" export --checkpoint "$TMP/e" --format gguf --out "$TMP/m.gguf" >/dev/null
refused "h: GGUF over a GGUF without --overwrite" "pass --overwrite" -- \
  "$SY" export --checkpoint "$TMP/e" --format gguf --out "$TMP/m.gguf"
"$SY" export --checkpoint "$TMP/e" --format gguf --out "$TMP/m.gguf" --overwrite >/dev/null &&
  ok "h: an earlier GGUF export replaced with --overwrite" || bad "h: GGUF --overwrite"

# ---- (i) ----
refused "i: a diverging last step" "training diverged at step 1: the optimizer step left inf/NaN in the weights, first in model." -- \
  "$SY" train "${BASE[@]}" --set train.steps=1 --set optim.lr=3e38 --set optim.warmup_steps=0 \
  --set optim.grad_clip=0 --run-dir "$TMP/i"
[ ! -e "$TMP/i/checkpoints" ] && [ ! -e "$TMP/i/model" ] && ok "i: nothing saved" || bad "i: a diverged state was saved"
cp -r "$TMP/e/model" "$TMP/poisoned"
/usr/bin/python3 - "$TMP/poisoned/model.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
name = "model.layers.1.post_attention_layernorm.weight"
begin = 8 + n + header[name]["data_offsets"][0]
data[begin + 4:begin + 8] = struct.pack("<f", float("inf"))
open(path, "wb").write(data)
PY
refused "i: eval of an inf weight" "tensor model.layers.1.post_attention_layernorm.weight holds inf/NaN" -- \
  "$SY" eval --init-from "$TMP/poisoned" --data "$TOK" --split train --max-windows 1
refused "i: export of an inf weight" "tensor model.layers.1.post_attention_layernorm.weight holds inf/NaN" -- \
  "$SY" export --checkpoint "$TMP/poisoned" --out "$TMP/i_export"
[ ! -e "$TMP/i_export" ] && ok "i: no export written" || bad "i: an export was written"
"$SY" eval --init-from "$TMP/poisoned" --data "$TOK" --split train --max-windows 1 --allow-nonfinite >/dev/null &&
  "$SY" export --checkpoint "$TMP/poisoned" --out "$TMP/i_export" --allow-nonfinite >/dev/null &&
  ok "i: --allow-nonfinite goes on" || bad "i: --allow-nonfinite"

# ---- (k) ----
echo "precious" >"$TMP/precious.h5"
refused "k: prepare over a user's file" "pass --overwrite" -- "$SY" prepare --input "$TMP/a.txt" --output "$TMP/precious.h5"
refused "k: ... with --overwrite" "is not a token file written by" -- \
  "$SY" prepare --input "$TMP/a.txt" --output "$TMP/precious.h5" --overwrite
[ "$(cat "$TMP/precious.h5")" = precious ] && ok "k: the user's file is unchanged" || bad "k: the user's file changed"
refused "k: prepare over a token file" "pass --overwrite" -- "$SY" prepare --input "$TMP/a.txt" --output "$TOK"
"$SY" prepare --input "$TMP/a.txt" --output "$TOK" --overwrite --valid-fraction 0 >/dev/null &&
  ok "k: a token file replaced with --overwrite" || bad "k: prepare --overwrite of a token file"

# ---- (j) ----
mkdir -p "$TMP/full"
if mount -t tmpfs -o size=30m tmpfs "$TMP/full" 2>/dev/null; then
  trap 'umount "$TMP/full" 2>/dev/null || true; rm -rf "$TMP"' EXIT
  refused "j: disk full at the second save" "no space left on the device" -- \
    "$SY" train "${BASE[@]}" --set checkpoint.dir="$TMP/full/ck" --run-dir "$TMP/j"
  [ "$(cat "$TMP/full/ck/latest")" = step-000002 ] && [ -f "$TMP/full/ck/step-000002/manifest.json" ] &&
    ok "j: latest still names the complete step-000002" || bad "j: latest after a full disk"
  "$SY" train "${BASE[@]}" --set checkpoint.dir="$TMP/j_ck" --run-dir "$TMP/j" \
    --resume "$TMP/full/ck/step-000002" >"$TMP/j.log" &&
    grep -q "resuming from .*step-000002 at step 2" "$TMP/j.log" && ok "j: step-000002 resumes (to a roomier checkpoint.dir)" ||
    bad "j: resume after a full disk"
  umount "$TMP/full"
else
  echo "skip j: cannot mount a tmpfs here (needs root and mount permission)"
fi

echo "$fails failure(s)"
[ "$fails" = 0 ]
