#!/usr/bin/env bash
# The Prometheus exporter against the real thing (launch/prometheus.h, configs/prometheus/):
#  - promtool: the alert rules check and pass their unit tests (alerts_test.yml), the example
#    prometheus.yml checks;
#  - Debian's Prometheus server (on 127.0.0.1, a free port, its TSDB in $TMP) scrapes a short
#    training run's /metrics every second; every sample it stored of step, loss, lr, grad norm,
#    tokens/s, step time, memory, MFU, the last-step timestamp and per-layer and per-expert balance
#    equals the metrics.jsonl record of the step that sample's switchyard_step names (so no scrape
#    mixed two steps), over several distinct steps; every series carries run=; `promtool check
#    metrics` (the linter) passes on a scraped body; stopped by SIGTERM once the server holds 10
#    scrapes (a fixed step count would be too short on a fast machine), the run exits 0 and no
#    longer serves;
#  - a run with observe.prometheus_textfile (and the port) that ends normally leaves a .prom file,
#    marker first, that holds the last step's values and run_finished 1 and passes `promtool check
#    metrics`, and no longer serves;
#  - refused with exit 2 and one line naming the key, nothing overwritten: a foreign .prom file,
#    a port in use (the Prometheus server's), an address that is not this machine's.
# Without /usr/bin/prometheus or promtool (scripts/setup.sh installs both): "skipped", exit 0.
set -euo pipefail
if [ ! -x /usr/bin/prometheus ] || ! command -v promtool >/dev/null 2>&1; then
  echo "skipped: /usr/bin/prometheus or promtool is missing (Debian package prometheus; scripts/setup.sh installs it)"
  exit 0
fi
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/export.sh"  # expect_usage
CFG="$SRC/configs/prometheus"
PROM_PID="" RUN_PID=""
cleanup() {  # every exit path: the run and the server stopped, their logs shown on a failure
  local rc=$?
  for pid in $RUN_PID $PROM_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ $rc -ne 0 ]; then
    for log in run.log prometheus.log; do
      [ -f "$TMP/$log" ] && { echo "--- the last lines of $log:"; tail -n 15 "$TMP/$log"; }
    done
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

# ---- promtool on the shipped rules and config ----
promtool check rules "$CFG/alerts.yml" >"$TMP/promtool.log" 2>&1 || { cat "$TMP/promtool.log"; fail "promtool check rules"; }
promtool test rules "$CFG/alerts_test.yml" >"$TMP/promtool.log" 2>&1 || { cat "$TMP/promtool.log"; fail "promtool test rules"; }
promtool check config "$CFG/prometheus.yml" >"$TMP/promtool.log" 2>&1 || { cat "$TMP/promtool.log"; fail "promtool check config"; }
echo "ok: promtool check rules, test rules (alerts_test.yml), check config (prometheus.yml)"

# lint: no output, exit 0
check_metrics() {
  local out rc=0
  out=$(promtool check metrics <"$1" 2>&1) || rc=$?
  [ $rc -eq 0 ] && [ -z "$out" ] || fail "promtool check metrics $1 (rc $rc): $out"
}

# GET URL [FILE]: exit 0 with the body (in FILE) when it answers 200
cat >"$TMP/get.py" <<'PY'
import sys, urllib.request
try:
    body = urllib.request.urlopen(sys.argv[1], timeout=5).read()
except Exception:
    sys.exit(1)
if len(sys.argv) > 2:
    open(sys.argv[2], "wb").write(body)
PY
get() { /usr/bin/python3 "$TMP/get.py" "$@"; }

# two free ports, both held until both are chosen
read -r PROM_PORT RUN_PORT < <(/usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

# ---- the Prometheus server, scraping the run every second ----
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: switchyard
    static_configs:
      - targets: ["127.0.0.1:$RUN_PORT"]
EOF
/usr/bin/prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
PROM="http://127.0.0.1:$PROM_PORT"
wait_for "$PROM_PID" get "$PROM/-/ready"

# ---- a training run it scrapes, stopped (SIGTERM: save and exit) once 10 scrapes are stored ----
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=5000 --set run.name=promtest \
  --set model.n_layers=3 --set model.first_dense_layers=1 --set model.dense_ffn_size=96 \
  --set observe.prometheus_port="$RUN_PORT" --set observe.prometheus_address=127.0.0.1 \
  --set observe.peak_tflops=1 --run-dir "$TMP/run" >"$TMP/run.log" 2>&1 &
RUN_PID=$!
has_step() { get "http://127.0.0.1:$RUN_PORT/metrics" "$TMP/scrape.txt" && grep -q '^switchyard_step{' "$TMP/scrape.txt"; }
wait_for "$RUN_PID" has_step
check_metrics "$TMP/scrape.txt"
echo "ok: promtool check metrics on a scraped /metrics body"
scraped() {  # the Prometheus server holds >= $1 samples of the run's step
  get "$PROM/api/v1/query?query=count_over_time(switchyard_step%7Brun%3D%22promtest%22%7D%5B1h%5D)" "$TMP/count.json" &&
    /usr/bin/python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["data"]["result"]
sys.exit(0 if r and float(r[0]["value"][1]) >= int(sys.argv[2]) else 1)' "$TMP/count.json" "$1"
}
wait_for "$RUN_PID" scraped 10
kill -TERM "$RUN_PID"
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=""
[ $rc -eq 0 ] && grep -q "stopped by signal" "$TMP/run.log" || { cat "$TMP/run.log"; fail "training run exited $rc"; }
get "http://127.0.0.1:$RUN_PORT/metrics" && fail "the run ended but still serves /metrics"
echo "ok: the run stopped on SIGTERM, exited 0 and stopped serving"

# the port in use (the Prometheus server's) and an address that is not this machine's, while it runs
expect_usage observe.prometheus_port -- "$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 \
  --set observe.prometheus_port="$PROM_PORT" --set observe.prometheus_address=127.0.0.1 --run-dir "$TMP/busy"
expect_usage observe.prometheus_address -- "$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 \
  --set observe.prometheus_port="$RUN_PORT" --set observe.prometheus_address=192.0.2.1 --run-dir "$TMP/elsewhere"
echo "ok: a port in use and a foreign address are refused (exit 2, one line naming the key)"

# ---- what Prometheus stored against metrics.jsonl ----
/usr/bin/python3 - "$PROM" "$TMP/run/metrics.jsonl" <<'PY'
import json, sys, time, urllib.parse, urllib.request
prom, metrics = sys.argv[1], sys.argv[2]
recs = {r["step"]: r for r in map(json.loads, open(metrics)) if "loss" in r}
failed = 0
def check(ok, what):
    global failed
    failed += not ok
    print(f"{'ok' if ok else 'FAIL'}: {what}")

def samples(selector):  # every stored sample of the run's series: [(labels, [(t, value)])]
    q = urllib.parse.urlencode({"query": f"{selector}[1h]", "time": time.time()})
    out = json.load(urllib.request.urlopen(f"{prom}/api/v1/query?{q}", timeout=10))
    assert out["status"] == "success", out
    return [(s["metric"], [(t, float(v)) for t, v in s["values"]]) for s in out["data"]["result"]]

step_series = samples('switchyard_step{run="promtest"}')
check(len(step_series) == 1, f"one switchyard_step series, got {len(step_series)}")
step_at = {t: int(v) for t, v in step_series[0][1]} if step_series else {}  # scrape time -> the step shown
check(len(set(step_at.values())) >= 5, f"{len(set(step_at.values()))} distinct steps scraped (>= 5 wanted)")
check(all(s in recs for s in step_at.values()), "every scraped step has its metrics.jsonl record")

MiB = 1 << 20
checks = {  # metric -> its value in a step's record (per layer / expert: from the series' labels)
    "switchyard_loss": lambda r, l: r["loss"],
    "switchyard_cross_entropy_loss": lambda r, l: r["ce"],
    "switchyard_learning_rate": lambda r, l: r["lr"],
    "switchyard_grad_norm": lambda r, l: r["grad_norm"],
    "switchyard_tokens_per_second": lambda r, l: r["tokens_per_s"],
    "switchyard_mfu_ratio": lambda r, l: r["mfu"],
    "switchyard_step_seconds": lambda r, l: r["step_ms"] / 1000,
    "switchyard_forward_seconds": lambda r, l: r["forward_ms"] / 1000,
    "switchyard_data_wait_seconds": lambda r, l: r["data_wait_ms"] / 1000,
    "switchyard_memory_bytes": lambda r, l: r["memory_mb"] * MiB,
    "switchyard_memory_peak_bytes": lambda r, l: r["memory_peak_mb"] * MiB,
    "switchyard_exchange_inter_node_bytes": lambda r, l: r["exchange_bytes_inter"],
    "switchyard_last_step_timestamp_seconds": lambda r, l: r["time"],
    "switchyard_expert_busiest30_share": lambda r, l: r["busiest30_share"][int(l["layer"])],
    "switchyard_expert_max_over_mean": lambda r, l: r["max_over_mean"][int(l["layer"])],
    "switchyard_experts_per_token": lambda r, l: r["mean_k"][int(l["layer"])],
    "switchyard_expert_load": lambda r, l: r["expert_load"][int(l["layer"])][int(l["expert"])],
}
for name, want in checks.items():
    series = samples(f'{name}{{run="promtest"}}')
    n = bad = 0
    for labels, values in series:
        for t, v in values:
            n += 1
            step = step_at.get(t)
            w = float(want(recs[step], labels)) if step in recs else None
            if w is None or not (v == w or abs(v - w) <= 1e-15 * abs(w)):
                bad += 1
                if bad <= 3:
                    print(f"  {name}{labels} at {t}: scraped {v!r}, step {step}'s record {w!r}")
    check(n > 0 and bad == 0, f"{name}: {n} samples in {len(series)} series equal their step's record")

layers = {l["layer"] for l, _ in samples('switchyard_expert_busiest30_share{run="promtest"}')}
experts = {(l["layer"], l["expert"]) for l, _ in samples('switchyard_expert_load{run="promtest"}')}
check(layers == {"0", "1"} and len(experts) == 16, f"2 MoE layers x 8 experts labelled ({sorted(layers)}, {len(experts)})")
names = samples('{__name__=~"switchyard_.+"}')
check(all(l.get("run") == "promtest" for l, _ in names), f"all {len(names)} switchyard_ series carry run=\"promtest\"")
sys.exit(1 if failed else 0)
PY

# ---- the textfile ----
mkdir "$TMP/tf"
"$SY" train "${SMALL_MODEL[@]}" --set train.steps=3 --set run.name=tftest \
  --set observe.prometheus_textfile="$TMP/tf/switchyard.prom" --set observe.prometheus_port="$RUN_PORT" \
  --set observe.prometheus_address=127.0.0.1 --run-dir "$TMP/tfrun" >"$TMP/tfrun.log" 2>&1 ||
  { cat "$TMP/tfrun.log"; fail "textfile run"; }
get "http://127.0.0.1:$RUN_PORT/metrics" && fail "the run ended normally but still serves /metrics"
check_metrics "$TMP/tf/switchyard.prom"
/usr/bin/python3 - "$TMP/tf/switchyard.prom" "$TMP/tfrun/metrics.jsonl" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read().splitlines()
last = [r for r in map(json.loads, open(sys.argv[2])) if "loss" in r][-1]
assert text[0] == "# switchyard metrics of run tftest", text[0]
got = {m.group(1): float(m.group(2)) for l in text if (m := re.match(r"(\S+\}) (\S+)$", l))}
want = {'switchyard_step{run="tftest"}': last["step"], 'switchyard_loss{run="tftest"}': last["loss"],
        'switchyard_learning_rate{run="tftest"}': last["lr"], 'switchyard_grad_norm{run="tftest"}': last["grad_norm"],
        'switchyard_step_seconds{run="tftest"}': last["step_ms"] / 1000,
        'switchyard_last_step_timestamp_seconds{run="tftest"}': last["time"],
        'switchyard_expert_load{run="tftest",layer="1",expert="7"}': last["expert_load"][1][7],
        'switchyard_run_finished{run="tftest"}': 1}
bad = {k: (got.get(k), w) for k, w in want.items() if got.get(k) != w}
assert not bad, f"textfile against the last step's record: {bad}"
print(f"ok: the textfile holds step {last['step']}'s values and run_finished 1")
PY
ls "$TMP/tf" | grep -v '^switchyard.prom$' && fail "temporaries left in the textfile folder"

printf '# HELP node_thing Something node_exporter exports.\nnode_thing 1\n' >"$TMP/tf/node.prom"
cp "$TMP/tf/node.prom" "$TMP/node.prom.orig"
expect_usage observe.prometheus_textfile -- "$SY" train "${SMALL_MODEL[@]}" --set train.steps=2 \
  --set observe.prometheus_textfile="$TMP/tf/node.prom" --run-dir "$TMP/foreign"
cmp -s "$TMP/tf/node.prom" "$TMP/node.prom.orig" || fail "the foreign textfile was changed"
echo "ok: a .prom file Switchyard did not write is refused (exit 2, one line) and left as it was"
