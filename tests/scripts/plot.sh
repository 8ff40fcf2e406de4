#!/usr/bin/env bash
# scripts/plot.py on two short runs (one fp32, one fp16 with a loss scale): every figure it says it
# wrote is there and reads back (matplotlib.image.imread) as a PNG of the size it printed, not of
# one colour; the set of figures is the documented one (loss, lr, loss_scale, tokens_per_s, one
# expert-load heatmap per run and MoE layer); the default --out is <first run>/plots and a file of
# the user's there stays. Bad input (no such folder, no metrics.jsonl, an empty file, an empty
# line, a damaged line) is one line on stderr naming the file, exit code 2, and no figure.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
PLOT=(/usr/bin/python3 "$SRC/scripts/plot.py")
BASE=("${SMALL_MODEL[@]}" --set train.steps=4)
"$SY" train "${BASE[@]}" --run-dir "$TMP/alpha" >"$TMP/alpha.log"
"$SY" train "${BASE[@]}" --set train.precision=fp16 --run-dir "$TMP/beta" >"$TMP/beta.log"
mkdir -p "$TMP/alpha/plots"
echo "keep me" >"$TMP/alpha/plots/notes.txt"
"${PLOT[@]}" "$TMP/alpha" "$TMP/beta" >"$TMP/plot.out"
cat "$TMP/plot.out"

/usr/bin/python3 - "$TMP" <<'PY'
import json, os, re, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.image as mpimg
import numpy as np
tmp = sys.argv[1]
passed = failed = 0
def check(what, ok, detail=""):
    global passed, failed
    passed += bool(ok); failed += not ok
    print(f"{what:60s} {detail} {'ok' if ok else 'FAIL'}")
wrote = re.findall(r"^plot.py: wrote (\S+) \((\d+)x(\d+)\)$", open(f"{tmp}/plot.out").read(), re.M)
names = sorted(os.path.basename(p) for p, _, _ in wrote)
layers = len(json.loads(open(f"{tmp}/alpha/metrics.jsonl").readline())["expert_load"])
want = sorted(["loss.png", "lr.png", "loss_scale.png", "tokens_per_s.png"] +
              [f"expert_load_{run}_layer_{l}.png" for run in ("alpha", "beta") for l in range(layers)])
check("the figures written", names == want, names)
for path, w, h in wrote:
    check(f"{os.path.basename(path)}: in <first run>/plots", os.path.dirname(path) == f"{tmp}/alpha/plots")
    with open(path, "rb") as f:
        signature = f.read(8)
    img = mpimg.imread(path)
    check(f"{os.path.basename(path)}: a PNG of {w}x{h}, not blank",
          signature == b"\x89PNG\r\n\x1a\n" and img.shape[:2] == (int(h), int(w)) and float(np.std(img)) > 0.01,
          img.shape)
check("the user's notes.txt kept", open(f"{tmp}/alpha/plots/notes.txt").read() == "keep me\n")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY

# fp32 runs only: no loss-scale figure
"${PLOT[@]}" "$TMP/alpha" --out "$TMP/only_alpha" >/dev/null
test ! -e "$TMP/only_alpha/loss_scale.png" || { echo "FAIL: loss_scale.png for a run without a loss scale"; exit 1; }

bad() {  # name expected-text run-folder: exit code 2, one line on stderr naming the file, no figure
  local name=$1 text=$2 rc=0
  "${PLOT[@]}" "$3" --out "$TMP/out_$name" >"$TMP/$name.out" 2>"$TMP/$name.err" || rc=$?
  if [ "$rc" != 2 ] || [ "$(wc -l <"$TMP/$name.err")" != 1 ] || ! grep -qF -- "$text" "$TMP/$name.err" ||
     [ -n "$(ls -A "$TMP/out_$name" 2>/dev/null)" ]; then
    echo "FAIL: $name: exit $rc, stderr:"; cat "$TMP/$name.err"; exit 1
  fi
  echo "$name: $(cat "$TMP/$name.err") ok"
}
bad no_folder "$TMP/missing: no such folder" "$TMP/missing"
mkdir "$TMP/no_metrics"
bad no_metrics "$TMP/no_metrics/metrics.jsonl: no such file" "$TMP/no_metrics"
mkdir "$TMP/empty" && : >"$TMP/empty/metrics.jsonl"
bad empty_file "$TMP/empty/metrics.jsonl: holds no step records" "$TMP/empty"
mkdir "$TMP/blank" && { head -n 2 "$TMP/alpha/metrics.jsonl"; echo; tail -n 1 "$TMP/alpha/metrics.jsonl"; } >"$TMP/blank/metrics.jsonl"
bad empty_line "$TMP/blank/metrics.jsonl:3: an empty line" "$TMP/blank"
mkdir "$TMP/cut" && { head -n 2 "$TMP/alpha/metrics.jsonl"; head -c 40 <(tail -n 1 "$TMP/alpha/metrics.jsonl"); } >"$TMP/cut/metrics.jsonl"
bad damaged_line "$TMP/cut/metrics.jsonl:3: not a metrics record" "$TMP/cut"
