#!/usr/bin/env bash
# observe.tensorboard (launch/tensorboard.h), read back with the tensorboard package's own reader
# (.venv: EventAccumulator with size_guidance 0, and event_file_loader for the raw events):
# (a) a 6-step fp16 run evaluating every 2 steps, killed (SIGKILL) while it saves step 4: the
#     event file already holds steps 1-4 and the evaluations at 2 and 4 (flushed per record); every
#     scalar tag's steps and values equal metrics.jsonl (float32), each event's wall time is its
#     record's time, every numeric step-record key has a tag, the expert-load histogram of each MoE
#     layer has the experts as buckets (bucket counts = expert_load, num = their sum) and reaches
#     TensorBoard's histogram view (event_file_loader's migration) as rows [i, i+1, share];
# (b) `train --resume` (from the step-2 checkpoint): a second event file, opened by a SessionLog
#     START at step 3; the reader shows every step and evaluation exactly once, with the values and
#     times of the resumed run's metrics.jsonl (steps 3 and 4 differ in time from the killed run's:
#     a reader that kept the old events fails);
# (c) --overwrite: one fresh event file for the whole run; a user's file in the folder stays.
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
BASE=("${SMALL_MODEL[@]}" --set data.train="$TMP/tokv.h5" --set train.steps=6 --set train.eval_interval=2
      --set train.eval_windows=4 --set checkpoint.interval=2 --set train.precision=fp16
      --set observe.tensorboard=true --run-dir "$TMP/run")
SWITCHYARD_TEST_HOLD_SAVE=4:files "$SY" train "${BASE[@]}" >"$TMP/killed.log" &
pid=$!
wait_for "$pid" compgen -G "$TMP/run/checkpoints/step-000004.tmp-*/rank-00000.h5"
kill -9 "$pid"
wait "$pid" || true
cp "$TMP/run/metrics.jsonl" "$TMP/killed.jsonl"
check() { "$PY" - "$TMP" "$1" <<'PY'
import glob, json, os, sys
import numpy as np
from tensorboard.backend.event_processing import event_accumulator, event_file_loader
from tensorboard.util import tensor_util
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
    check("the new file's next event: SessionLog START at step 3",
          log.HasField("session_log") and log.session_log.status == log.session_log.START and log.step == 3,
          f"step {log.step}")
want_steps = [1, 2, 3, 4] if case == "killed" else [1, 2, 3, 4, 5, 6]
check("metrics.jsonl steps (the test's premise)", sorted(steps) == want_steps, sorted(steps))
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
check("eval/loss at every evaluation's step", [e.step for e in acc.Scalars("eval/loss")] == sorted(evals) != [],
      sorted(evals))
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
# what TensorBoard's server shows: event_file_loader migrates each histogram to [left, right, count]
# rows (data_compat), here expert i's row [i, i+1, share] over the non-empty experts
ok, seen = True, 0
for ev in raw[-1]:
    for v in ev.summary.value:
        if v.tag.startswith("expert_load/"):
            load = steps[ev.step]["expert_load"][int(v.tag.split("_")[-1])]
            nz = [i for i, x in enumerate(load) if x > 0]
            rows = [[float(i), float(i + 1), f32(load[i])] for i in range(nz[0], nz[-1] + 1)]
            ok = ok and v.metadata.plugin_data.plugin_name == "histograms" and \
                tensor_util.make_ndarray(v.tensor).tolist() == rows
            seen += 1
check("as TensorBoard shows them: expert i = bucket [i, i+1), its share", ok and seen > 0, f"{seen} histograms")
if case == "resumed":
    killed = {r["step"]: r for r in map(json.loads, open(f"{tmp}/killed.jsonl")) if "loss" in r}
    differ = [s for s in (3, 4) if killed[s]["time"] != steps[s]["time"]]
    check("the killed run's steps 3-4 had other times (the test can tell)", differ == [3, 4], differ)
print(f"{case}: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
}
check killed
"$SY" train "${BASE[@]}" --resume >"$TMP/resumed.log"
grep -q "resuming from .*step-000002 at step 2" "$TMP/resumed.log" || { echo "FAIL: not resumed at step 2"; exit 1; }
check resumed

# (c) --overwrite removes the event files Switchyard wrote, never a user's file
echo "my notes" >"$TMP/run/tensorboard/notes.txt"
"$SY" train "${BASE[@]}" --overwrite >"$TMP/overwrite.log"
check overwritten
test "$(cat "$TMP/run/tensorboard/notes.txt")" = "my notes" || { echo "FAIL: notes.txt lost"; exit 1; }
echo "overwritten: notes.txt kept ok"
