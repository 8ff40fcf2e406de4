#!/usr/bin/env bash
# observe.tensorboard (launch/tensorboard.h), read back with the tensorboard package's own reader
# (.venv: EventAccumulator with size_guidance 0, and event_file_loader for the raw events):
# (a) a 6-step fp16 run with evaluations at steps 3 and 6: every scalar tag's steps and values equal
#     metrics.jsonl (float32), each event's wall time is its record's time, every step-record key
#     with a number has a tag, the expert-load histogram of each MoE layer has the experts as
#     buckets (bucket counts = expert_load, num = their sum), eval/loss equals the eval records;
# (b) resumed in place from its step-3 checkpoint: a second event file, opened by a SessionLog START
#     at step 4; the reader shows every step exactly once, with the resumed run's values and times
#     (which differ from the first run's: a reader that kept the old events fails);
# (c) --overwrite: the old event files go, a user's file in the tensorboard folder stays.
# Skipped (exit 0) only when .venv's python cannot import tensorboard (scripts/setup.sh installs it).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
PY="$SRC/.venv/bin/python"
if ! "$PY" -c "import tensorboard" 2>/dev/null; then
  echo "skipped: $PY cannot import tensorboard (scripts/setup.sh installs it)"
  exit 0
fi
split -l 40 "$TMP/a.txt" "$TMP/part_"  # ten documents: two for the validation split
"$SY" prepare --input "$TMP"/part_* --output "$TMP/tokv.h5" --valid-fraction 0.2 >/dev/null
BASE=("${SMALL_MODEL[@]}" --set data.train="$TMP/tokv.h5" --set train.steps=6 --set train.eval_interval=3
      --set train.eval_windows=4 --set checkpoint.interval=3 --set train.precision=fp16
      --set observe.tensorboard=true --run-dir "$TMP/run")
"$SY" train "${BASE[@]}" >"$TMP/first.log"
cp "$TMP/run/metrics.jsonl" "$TMP/first.jsonl"
check() { "$PY" - "$TMP" "$1" <<'PY'
import glob, json, os, sys
import numpy as np
from tensorboard.backend.event_processing import event_accumulator, event_file_loader
tmp, case = sys.argv[1], sys.argv[2]
folder = f"{tmp}/run/tensorboard"
passed = failed = 0
def check(what, ok, detail=""):
    global passed, failed
    passed += bool(ok); failed += not ok
    print(f"{case}: {what:58s} {detail} {'ok' if ok else 'FAIL'}")
records = [json.loads(l) for l in open(f"{tmp}/run/metrics.jsonl")]
steps = {r["step"]: r for r in records if "loss" in r}
evals = {r["step"]: r for r in records if "eval_loss" in r}
files = sorted(glob.glob(f"{folder}/events.out.tfevents.*"))
check("event files", len(files) == (2 if case == "resumed" else 1), [os.path.basename(f) for f in files])
raw = [list(event_file_loader.EventFileLoader(f).Load()) for f in files]
check("each file starts with file_version brain.Event:2", all(r[0].file_version == "brain.Event:2" for r in raw))
if case == "resumed":
    log = raw[1][1]
    check("the new file's next event: SessionLog START at step 4",
          log.HasField("session_log") and log.session_log.status == log.session_log.START and log.step == 4,
          f"step {log.step}")
acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0,
                                                                 event_accumulator.HISTOGRAMS: 0})
acc.Reload()
tags = acc.Tags()
f32 = lambda x: float(np.float32(x))
def expected(tag, rec):  # the record's value for a tag (None: not in this record)
    try:
        return value_of(tag, rec)
    except (KeyError, IndexError):
        return None
def value_of(tag, rec):  # by the documented tag scheme: the tag's last part is the record key
    parts = tag.split("/")
    if parts[0] == "eval": return rec["eval_" + parts[1]]
    if parts[0] == "data": return rec["data"][parts[1]]
    if parts[0] == "balance":
        layer, key = int(parts[1][len("layer_"):]), parts[2]
        for pair in ("selection_bias", "expert_decay"):
            if key in (pair + "_min", pair + "_max"): return rec[pair][layer][key.endswith("_max")]
        return rec[key][layer]
    return rec[parts[1]]  # activation_mb and its kin: the first step's record only
covered = set()
for tag in tags["scalars"]:
    events = acc.Scalars(tag)
    want = {s: r for s, r in (evals if tag.startswith("eval/") else steps).items() if expected(tag, r) is not None}
    got_steps = [e.step for e in events]
    ok_steps = got_steps == sorted(want)
    ok_values = ok_steps and all(e.value == f32(expected(tag, want[e.step])) for e in events)
    ok_times = tag.startswith("eval/") or (ok_steps and all(e.wall_time == want[e.step]["time"] for e in events))
    check(f"{tag}: steps, values (float32), wall times", ok_steps and ok_values and ok_times,
          got_steps if not ok_steps else "")
    covered.add(tag.split("/")[-1])
numeric = lambda v: isinstance(v, (int, float)) or (isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v))
keys = {k for r in steps.values() for k, v in r.items() if numeric(v) and k not in ("step", "time")}
missing = sorted(k for k in keys if k not in covered)
check("every numeric step-record key has a tag", not missing, missing)
for want_tag in ("train/loss", "train/loss_scale", "time/step_ms", "throughput/tokens_per_s", "memory/memory_mb",
                 "balance/layer_0/busiest30_share", "balance/layer_1/load_cv", "eval/loss"):
    check(f"tag {want_tag} present", want_tag in tags["scalars"])
check("eval/loss at steps 3 and 6", [e.step for e in acc.Scalars("eval/loss")] == [3, 6])
layers = len(next(iter(steps.values()))["expert_load"])
check("one expert_load histogram per MoE layer", sorted(tags["histograms"]) ==
      [f"expert_load/layer_{l}" for l in range(layers)], tags["histograms"])
for l in range(layers):
    hs = acc.Histograms(f"expert_load/layer_{l}")
    ok = [h.step for h in hs] == sorted(steps)
    for h in hs:
        load = steps[h.step]["expert_load"][l]
        v = h.histogram_value
        ok = (ok and list(v.bucket) == load and list(v.bucket_limit) == [i + 1.0 for i in range(len(load))]
              and abs(v.num - sum(load)) < 1e-12 and h.wall_time == steps[h.step]["time"])
    check(f"expert_load/layer_{l}: buckets = expert_load per step", ok, f"{len(hs)} steps, {len(load)} experts")
if case == "resumed":
    first = {r["step"]: r for r in map(json.loads, open(f"{tmp}/first.jsonl")) if "loss" in r}
    differ = [s for s in (4, 5, 6) if first[s]["time"] != steps[s]["time"]]
    check("the first run's steps 4-6 had other times (the test can tell)", differ == [4, 5, 6], differ)
print(f"{case}: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
}
check first
"$SY" train "${BASE[@]}" --resume "$TMP/run/checkpoints/step-000003" >"$TMP/resumed.log"
check resumed

# (c) --overwrite removes the event files Switchyard wrote, never a user's file
echo "my notes" >"$TMP/run/tensorboard/notes.txt"
"$SY" train "${BASE[@]}" --overwrite >"$TMP/overwrite.log"
check overwritten
test "$(cat "$TMP/run/tensorboard/notes.txt")" = "my notes" || { echo "FAIL: notes.txt lost"; exit 1; }
echo "overwritten: notes.txt kept ok"
