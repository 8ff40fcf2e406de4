#!/usr/bin/env bash
# scripts/gpu_check.sh [--cpu-dry-run] [OUT_DIR]: everything issue 12 asks of the CUDA backend, measured
# in one command on one H100/H200 in under 9 minutes (each step bounded by `timeout`, the whole by
# GPU_CHECK_BUDGET_S, default 530 s). It keeps going after a failure, so one call shows everything.
#
#   scripts/gpu_check.sh                       # from a build (build/, or $BUILD_DIR) on a GPU machine
#   bash gpu-bundle/gpu_check.sh OUT_DIR       # from scripts/gpu_bundle.sh's bundle, on a GPU machine
#                                              # that cannot build Switchyard
#   scripts/gpu_check.sh --cpu-dry-run         # every step on the CPU with small sizes (tests the
#                                              # script; also GPU_CHECK_DEVICE=cpu)
#
# Binaries: from the bundle this script sits in (its MANIFEST beside it; a packed payload.tar.xz is
# unpacked into the work folder, ~2 s), else from $BUILD_DIR (default build/) when it holds switchyard,
# else from gpu-bundle/ beside scripts/. From a bundle the CUDA libraries come from the machine:
# the pip packages under python3's `nvidia` namespace, then /usr/local/cuda (libcudart.so.13,
# libcublas.so.13, libcublasLt.so.13, libnccl.so.2); MPI runs as a singleton (no mpirun).
# Steps, each a header line in the log:
#   a. versions: GPU, driver, nvcc, and the CUDA runtime, cuBLAS, NCCL, cuDNN libraries the binaries load
#   b. the conformance suites on the GPU (backend, model, PyTorch golden files, NCCL on one rank,
#      the KV-cached decode against the full forward)
#   c. `switchyard bench ops --device cuda`: GEMMs, grouped expert GEMMs, attention, AdamW
#   d. training: configs/tiny.yaml 20 steps on cuda and on cpu (same seed and data: per-step loss
#      agreement, tokens/s of each), configs/gpu_1b.yaml 20 steps on cuda (tokens/s, MFU against the
#      best bf16 GEMM of step c; stopped after its 20th step, before its ~20 GB final checkpoint)
#   e. the summary: every issue-12 target beside its measured figure
# OUT_DIR (default gpu-check/) receives six files, within what a lent machine sends back (8 files):
# gpu_check.log (all output), versions.json, suites.json, bench_ops.json, training.json, summary.json.
# Work files (token file, run folders, per-suite reports) go to a temporary folder, removed at the end
# unless GPU_CHECK_KEEP=1.
# Exit status: 0 when every suite and step passed and the GPU and CPU losses agree; 1 otherwise. The
# performance targets are reported, not enforced, unless GPU_CHECK_STRICT=1.
set -uo pipefail

say() { echo "gpu_check: $*"; }
die() { echo "gpu_check: error: $*" >&2; exit 2; }
mode=gpu OUT=gpu-check
for a in "$@"; do
  case $a in
    --cpu-dry-run) mode=cpu ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $a (see --help)" ;;
    *) OUT=$a ;;
  esac
done
[ "${GPU_CHECK_DEVICE:-cuda}" = cpu ] && mode=cpu
DEV=cuda; [ $mode = cpu ] && DEV=cpu
command -v python3 >/dev/null || die "python3 is needed (it reads the tests' and runs' JSON)"
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-530}))

# ---- where the binaries and the data come from ----
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUNDLE=${GPU_CHECK_BUNDLE:-}
if [ -n "$BUNDLE" ]; then
  BUNDLE=$(cd "$BUNDLE" && pwd) || die "GPU_CHECK_BUNDLE=$GPU_CHECK_BUNDLE: no such folder"
elif [ -f "$HERE/MANIFEST" ]; then
  BUNDLE=$HERE
else
  REPO=$(cd "$HERE/.." && pwd)
  BUILD=${BUILD_DIR:-$REPO/build}
  [[ $BUILD = /* ]] || BUILD=$PWD/$BUILD
  [ -x "$BUILD/switchyard" ] || { [ -f "$REPO/gpu-bundle/MANIFEST" ] && BUNDLE=$REPO/gpu-bundle; }
  [ -n "$BUNDLE" ] || [ -x "$BUILD/switchyard" ] ||
    die "no $BUILD/switchyard and no gpu-bundle/: build (bash scripts/setup.sh) or make a bundle (scripts/gpu_bundle.sh)"
fi
mkdir -p "$OUT" || die "cannot make $OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/{gpu_check.log,versions.json,suites.json,bench_ops.json,training.json,summary.json}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
[ "${GPU_CHECK_KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

main() {  # everything below, its output into the log too
CUDA_LIBS=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2)
if [ -n "$BUNDLE" ]; then
  # unpacked into the work folder, never beside the payload: the bundle stays small enough to carry
  if [ -f "$BUNDLE/payload.tar.xz" ]; then
    ROOT=$WORK/bundle
    mkdir -p "$ROOT"
    say "unpacking $BUNDLE/payload.tar.xz into $ROOT"
    if command -v xz >/dev/null; then tar -C "$ROOT" -xJf "$BUNDLE/payload.tar.xz"
    else python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE/payload.tar.xz" "$ROOT"
    fi || die "could not unpack $BUNDLE/payload.tar.xz"
  else
    ROOT=$BUNDLE
  fi
  [ -x "$ROOT/bin/switchyard" ] || die "$BUNDLE is not a complete bundle (no bin/switchyard): make it again with scripts/gpu_bundle.sh"
  need=$(sed -n 's/^glibc needed: //p' "$BUNDLE/MANIFEST") have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{ print $2 }')
  if [ -n "$need" ] && [ -n "$have" ] && [ "$(printf '%s\n' "$need" "$have" | sort -V | head -n 1)" != "$need" ]; then
    say "warning: this machine's glibc $have is older than the $need the bundle was built against: expect the binaries to fail to start"
  fi
  BIN=$ROOT/bin TESTS=$ROOT/bin GOLDEN=$ROOT/golden CONFIGS=$ROOT/share/configs CORPUS=$ROOT/share/corpus.txt
  # The CUDA libraries: the first folder holding each, pip packages first, then the toolkit.
  cands=()
  while IFS= read -r d; do [ -n "$d" ] && cands+=("$d"); done < <(python3 -c \
    'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null)
  cands+=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib)
  cuda_path=""
  for lib in "${CUDA_LIBS[@]}"; do
    found=""
    for d in "${cands[@]}"; do
      [ -d "$d" ] && found=$(find -L "$d" -maxdepth 4 -name "$lib" -print -quit 2>/dev/null)
      [ -n "$found" ] && break
    done
    if [ -n "$found" ]; then
      case ":$cuda_path:" in *":$(dirname "$found"):"*) ;; *) cuda_path=${cuda_path:+$cuda_path:}$(dirname "$found") ;; esac
    else
      ldconfig -p 2>/dev/null | grep -q "$lib" || say "warning: $lib found nowhere (pip nvidia packages, /usr/local/cuda, ldconfig)"
    fi
  done
  export LD_LIBRARY_PATH=$ROOT/lib${cuda_path:+:$cuda_path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # OpenMPI from the bundle only: its components, help texts, no configuration file of the machine's,
  # no hwloc plugins of the machine's, and a singleton that starts no orted.
  export OMPI_MCA_mca_base_component_path=$ROOT/lib/openmpi OPAL_PREFIX=$ROOT/ompi
  export OPAL_PKGDATADIR=$ROOT/ompi/share/openmpi OPAL_SYSCONFDIR=$ROOT/ompi/etc HWLOC_PLUGINS_PATH=$ROOT/lib/hwloc
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  SOURCE="bundle $BUNDLE ($(sed -n 's/^commit: //p' "$BUNDLE/MANIFEST"))"
else
  source "$REPO/scripts/env.sh"
  BIN=$BUILD TESTS=$BUILD/tests GOLDEN=${SWITCHYARD_GOLDEN_DIR:-$BUILD/golden} CONFIGS=$REPO/configs CORPUS=$WORK/corpus.txt
  # the repository's prose and sources, as gpu_bundle.sh packs them
  (cd "$REPO" && cat ./*.md docs/*.md && find core data launch moe optim parallel tests -type f \
     \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' \) | sort | xargs cat) >"$CORPUS"
  if [ ! -f "$GOLDEN/mixtral_k2/golden.safetensors" ] && [ -x /usr/bin/python3 ]; then
    /usr/bin/python3 "$REPO/tests/golden/make_golden.py" --case all --out "$GOLDEN" >/dev/null 2>&1 || true
  fi
  SOURCE="build $BUILD"
fi
export OMPI_MCA_ess_singleton_isolated=1
SY=$BIN/switchyard

FAILED=()  # steps and suites that failed
step() { echo; echo "=== gpu_check $1 ($(( $(date +%s) - START )) s) ==="; }
# cap SECONDS: this step's time limit, cut to what is left of the budget (at least 5 s).
cap() { local left=$((DEADLINE - $(date +%s))); ((left < $1)) && echo $((left > 5 ? left : 5)) || echo "$1"; }
# bounded NAME SECONDS CMD...: runs CMD under timeout, output to the log; records a failure.
bounded() {
  local name=$1 limit rc=0
  limit=$(cap "$2"); shift 2
  timeout -k 5 "$limit" "$@" || rc=$?
  if ((rc == 124 || rc == 137)); then say "$name: TIMEOUT after ${limit} s"; fi
  ((rc == 0)) || { FAILED+=("$name"); say "$name: FAILED (exit $rc)"; }
  return $rc
}

# The JSON work, in one helper: versions, suites, training, summary.
cat >"$WORK/helper.py" <<'PY'
import ctypes, json, os, re, statistics, subprocess, sys

def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default

def versions(sy, out):
    v = {}
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    smi = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    v["gpu"] = smi or "nvidia-smi: none (no NVIDIA driver here)"
    nvcc = run(["nvcc", "--version"]) or run(["/usr/local/cuda/bin/nvcc", "--version"])
    v["nvcc"] = nvcc.splitlines()[-2].strip() if nvcc else "not found"
    v["glibc"] = run(["getconf", "GNU_LIBC_VERSION"])
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    v["cpu"] = f"{os.cpu_count()} cores, {model}"
    # the libraries the binary loads, as the loader resolves them now
    libs = {}
    for line in run(["ldd", sy]).splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m and re.match(r"lib(cudart|cublas|cublasLt|nccl|cudnn)\.so", m.group(1)):
            libs[m.group(1)] = m.group(2)
    def query(name, fn):
        path = libs.get(name)
        if not path or path == "not":
            return {"path": "not found"}
        r = {"path": os.path.realpath(path)}
        try:
            r["version"] = fn(ctypes.CDLL(path))
        except Exception as e:  # a query that fails still leaves the path, which names the version
            r["version"] = f"query failed: {e}"
        return r
    def cudart(lib):
        rt, drv = ctypes.c_int(0), ctypes.c_int(0)
        lib.cudaRuntimeGetVersion(ctypes.byref(rt))
        lib.cudaDriverGetVersion(ctypes.byref(drv))
        f = lambda x: f"{x // 1000}.{x % 1000 // 10}" if x else "none"
        return f"runtime {f(rt.value)}, driver supports {f(drv.value)}"
    def cublas(lib):
        parts = []
        for p in range(3):
            x = ctypes.c_int(0)
            lib.cublasGetProperty(p, ctypes.byref(x))
            parts.append(str(x.value))
        return ".".join(parts)
    def nccl(lib):
        x = ctypes.c_int(0)
        lib.ncclGetVersion(ctypes.byref(x))
        return f"{x.value // 10000}.{x.value % 10000 // 100}.{x.value % 100}"
    v["libcudart"] = query("libcudart.so.13", cudart)
    v["libcublas"] = query("libcublas.so.13", cublas)
    def cublaslt(lib):
        lib.cublasLtGetVersion.restype = ctypes.c_size_t
        x = lib.cublasLtGetVersion()
        return f"{x // 10000}.{x % 10000 // 100}.{x % 100}"
    v["libcublasLt"] = query("libcublasLt.so.13", cublaslt)
    v["libnccl"] = query("libnccl.so.2", nccl)
    # cuDNN: not linked by Switchyard today; its version where the machine has it
    dirs = os.environ.get("LD_LIBRARY_PATH", "").split(":") + ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]
    cudnn = next((os.path.join(d, "libcudnn.so.9") for d in dirs if d and os.path.exists(os.path.join(d, "libcudnn.so.9"))), None)
    if cudnn is None:
        try:
            import nvidia.cudnn, glob
            cudnn = next(iter(glob.glob(os.path.join(list(nvidia.cudnn.__path__)[0], "lib", "libcudnn.so.9"))), None)
        except Exception:
            pass
    if cudnn:
        try:
            x = ctypes.CDLL(cudnn).cudnnGetVersion()
            v["libcudnn"] = {"path": os.path.realpath(cudnn), "version": f"{x // 10000}.{x % 10000 // 100}.{x % 100}",
                             "note": "not linked by Switchyard"}
        except Exception as e:
            v["libcudnn"] = {"path": cudnn, "version": f"query failed: {e}"}
    else:
        v["libcudnn"] = {"path": "not found", "note": "not linked by Switchyard"}
    json.dump(v, open(out, "w"), indent=1)
    for k, x in v.items():
        print(f"  {k:12s} {x if isinstance(x, str) else ', '.join(f'{a}: {b}' for a, b in x.items())}")

def suite(name, report, rc, mode, out):
    """One suite's outcome from its GoogleTest JSON report and exit status, appended to out."""
    r = load(report, {})
    tests = skipped = failures = 0
    for s in r.get("testsuites", []):
        for t in s.get("testsuite", []):
            tests += 1
            skipped += t.get("result") == "SKIPPED"
            failures += bool(t.get("failures"))
    ran = tests - skipped
    status = "pass" if rc == 0 and failures == 0 and tests > 0 else "fail"
    note = ""
    if status == "pass" and mode == "gpu" and skipped:  # on the GPU every case must run
        status, note = "fail", f"{skipped} skipped on the GPU ({'all: no usable GPU?' if ran == 0 else 'the log says why'})"
    elif rc != 0 and failures == 0:
        note = "timed out" if rc in (124, 137) else f"exit {rc} (crash or start-up failure: see the log)"
    all_ = load(out, {})
    all_[name] = {"status": status, "tests": tests, "ran": ran, "skipped": skipped, "failures": failures,
                  "exit": rc, "note": note}
    json.dump(all_, open(out, "w"), indent=1)
    print(f"  {name}: {status} ({ran} ran, {skipped} skipped, {failures} failed){' - ' + note if note else ''}")
    return status == "pass"

def run(rundir):
    """Per-step loss, tokens/s and step time of a run folder's metrics.jsonl."""
    steps = []
    try:
        for line in open(os.path.join(rundir, "metrics.jsonl")):
            r = json.loads(line)
            if "tokens_per_s" in r:
                steps.append(r)
    except OSError:
        pass
    # tokens/s: the median after the first two steps (start-up: allocation, library initialisation)
    rates = [r["tokens_per_s"] for r in steps[2:]] or [r["tokens_per_s"] for r in steps]
    return {"steps": len(steps), "loss": [r["loss"] for r in steps], "tokens_per_s": [r["tokens_per_s"] for r in steps],
            "step_ms": [r["step_ms"] for r in steps], "median_tokens_per_s": statistics.median(rates) if rates else None}

def training(work, out, names):
    t = {n: run(os.path.join(work, "runs", n)) for n in names}
    json.dump(t, open(out, "w"), indent=1)
    for n, r in t.items():
        rate = r["median_tokens_per_s"]
        last = f"{r['loss'][-1]:.4f}" if r["loss"] else "-"
        print(f"  {n:10s} {r['steps']:3d} steps, last loss {last}, {rate:,.0f} tokens/s" if rate else f"  {n:10s} no steps")

def summary(mode, source, work, outdir, failed, strict):
    bench = load(os.path.join(outdir, "bench_ops.json"), {}).get("ops", [])
    train = load(os.path.join(outdir, "training.json"), {})
    suites = load(os.path.join(outdir, "suites.json"), {})
    ops = {o["op"]: o for o in bench}
    rows = []
    def row(id_, what, target, measured, unit, met, note=""):
        rows.append({"id": id_, "what": what, "target": target, "measured": measured, "unit": unit,
                     "met": met if mode == "gpu" else None, "note": note})
    sq = ops.get("gemm_bf16_square")
    row("gemm_bf16_8192", f"bf16 GEMM at {sq['shape'] if sq else '8192x8192x8192'}", ">= 700", sq and sq["tflops"],
        "TFLOP/s", sq is not None and sq["tflops"] >= 700)
    # grouped expert GEMMs at >= 2048 rows per expert (balanced: R/E rows each), against the dense GEMM
    def rows_per_expert(o):
        m = re.match(r"grouped_gemm_E(\d+)_balanced", o["op"]), re.match(r"(\d+) rows", o["shape"])
        return int(m[1][1]) / int(m[0][1]) if m[0] and m[1] else 0
    grouped = sorted((o for o in bench if rows_per_expert(o)), key=rows_per_expert)
    big = [o for o in grouped if rows_per_expert(o) >= 2048] or grouped[-1:]
    g = min(big, key=lambda o: o["ratio"]) if big else None
    row("grouped_gemm_vs_dense", "grouped expert GEMM / dense GEMM of the same rows, "
        f"{rows_per_expert(g):.0f} rows per expert ({g['op']})" if g else "grouped expert GEMM / dense GEMM",
        ">= 0.60", g and g["ratio"], "ratio", g is not None and rows_per_expert(g) >= 2048 and g["ratio"] >= 0.6,
        "" if g is None or rows_per_expert(g) >= 2048 else "quick sizes: fewer than 2048 rows per expert")
    dev, cpu, big1b = (train.get(k, {}) for k in ("tiny_dev", "tiny_cpu", "gpu_1b"))
    a, b = dev.get("median_tokens_per_s"), cpu.get("median_tokens_per_s")
    ratio = a / b if a and b else None
    row("tiny_gpu_vs_cpu", f"tiny config, tokens/s on {'cuda' if mode == 'gpu' else 'cpu (dry run)'} / on the CPU "
        f"({a or 0:,.0f} / {b or 0:,.0f})", ">= 20", ratio, "x", ratio is not None and ratio >= 20)
    flops = load(os.path.join(work, "plan.json"), {}).get("training_flops_per_token")
    peak = max((o["tflops"] for o in bench if o["op"].startswith("gemm_bf16")), default=None)
    r1b = big1b.get("median_tokens_per_s")
    mfu = r1b * flops / (peak * 1e12) if r1b and flops and peak else None
    row("gpu_1b_mfu", f"configs/gpu_1b.yaml MFU: {r1b or 0:,.0f} tokens/s x {flops or 0:.3g} FLOP/token / "
        f"best bf16 GEMM {peak or 0:.1f} TFLOP/s", ">= 0.35", mfu, "fraction", mfu is not None and mfu >= 0.35)
    la, lb = dev.get("loss", []), cpu.get("loss", [])
    n = min(len(la), len(lb))
    diff = max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(la, lb)), default=None) if n else None
    agree = diff is not None and diff <= 1e-3 and len(la) == len(lb)
    rows.append({"id": "loss_agreement", "what": f"tiny config fp32, max relative loss difference GPU vs CPU over {n} steps",
                 "target": "<= 1e-3", "measured": diff, "unit": "relative", "met": agree if mode == "gpu" else None,
                 "note": "" if mode == "gpu" else "dry run: both on the CPU"})
    if mode == "gpu" and not agree:
        failed.append("loss_agreement")
    if strict and mode == "gpu":
        failed += [r["id"] for r in rows if r["met"] is False and r["id"] not in failed]
    s = {"mode": "gpu" if mode == "gpu" else "cpu-dry-run", "source": source, "targets": rows,
         "suites": {k: v["status"] for k, v in suites.items()}, "failed": failed, "exit": 1 if failed else 0}
    json.dump(s, open(os.path.join(outdir, "summary.json"), "w"), indent=1)
    fmt = lambda x: "-" if x is None else (f"{x:.3g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}")
    print(f"{'target':24s} {'goal':>9s} {'measured':>10s}  {'met':4s} what")
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['id']:24s} {r['target']:>9s} {fmt(r['measured']):>10s}  {met:4s} {r['what']}{' (' + r['note'] + ')' if r['note'] else ''}")
    print("suites: " + ", ".join(f"{k} {v}" for k, v in s["suites"].items()))
    print(f"failed: {', '.join(failed) if failed else 'nothing'}")
    return s["exit"]

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "versions":
        versions(*args)
    elif cmd == "suite":
        sys.exit(0 if suite(args[0], args[1], int(args[2]), args[3], args[4]) else 1)
    elif cmd == "training":
        training(args[0], args[1], args[2:])
    elif cmd == "plan":  # `switchyard plan` output on stdin -> {"training_flops_per_token": X}
        m = re.search(r"training ([0-9.eE+-]+) \(none", sys.stdin.read())
        json.dump({"training_flops_per_token": float(m[1]) if m else None}, open(args[0], "w"))
        print(f"  training FLOPs per token: {m[1] if m else 'not found'}")
    elif cmd == "summary":
        failed = [f for f in args[4].split(",") if f]
        sys.exit(summary(args[0], args[1], args[2], args[3], failed, args[5] == "1"))
PY
PY="python3 $WORK/helper.py"

say "mode $([ $mode = gpu ] && echo "GPU (cuda)" || echo "CPU dry run"), binaries from $SOURCE, output in $OUT"

# ---- a. versions ----
step "a. versions"
timeout -k 5 "$(cap 30)" $PY versions "$SY" "$OUT/versions.json" || FAILED+=(versions)

# ---- b. conformance suites ----
step "b. conformance suites on $DEV"
FILTER="*$DEV*"
suite() {  # suite NAME SECONDS CMD...: a GoogleTest binary, its JSON report, its outcome in suites.json
  local name=$1 limit rc=0
  limit=$(cap "$2"); shift 2
  echo "--- $name: $*"
  timeout -k 5 "$limit" "$@" --gtest_output="json:$WORK/$name.json" || rc=$?
  $PY suite "$name" "$WORK/$name.json" "$rc" "$mode" "$OUT/suites.json" || FAILED+=("$name")
}
suite backend_conformance 60 "$TESTS/test_backend_conformance" --gtest_filter="$FILTER"
suite model_conformance 40 "$TESTS/test_model_conformance" --gtest_filter="$FILTER"
SWITCHYARD_TEST_BACKEND=$DEV SWITCHYARD_GOLDEN_DIR=$GOLDEN suite golden 40 "$TESTS/test_golden"
suite nccl_communicator 40 "$TESTS/test_nccl_communicator"
# the KV-cached decode (Model::decode) against the full forward on the device
SWITCHYARD_TEST_BACKEND=$DEV suite generate_decode 30 "$TESTS/test_generate" --gtest_filter="Generate.Decode*:Generate.Greedy*"

# ---- c. kernel benchmarks ----
step "c. bench ops on $DEV"
QUICK=(); [ $mode = cpu ] && QUICK=(--quick)
bounded bench_ops 75 "$SY" bench ops --device "$DEV" "${QUICK[@]}" --json "$OUT/bench_ops.json"

# ---- d. training ----
step "d. training steps"
TOK=$WORK/tok.h5
bounded prepare 20 "$SY" prepare --input "$CORPUS" --output "$TOK" --valid-fraction 0
STEPS=20 STEPS_1B=20
TINY=(--config "$CONFIGS/tiny.yaml" --set data.train="$TOK" --set train.eval_windows=2 --set train.log_interval=5)
BIG=(--config "$CONFIGS/gpu_1b.yaml" --set data.train="$TOK" --set train.eval_windows=2)
if [ $mode = cpu ]; then  # small shapes of the same families: the plumbing, not the figures
  STEPS=4 STEPS_1B=3
  TINY+=(--set model.d_model=64 --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=2
         --set train.seq_len=32 --set optim.warmup_steps=1)
  BIG+=(--set model.d_model=128 --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=2
        --set model.moe.n_experts=4 --set model.moe.expert_size=64 --set model.vocab_size=512
        --set train.seq_len=64 --set train.micro_batch=2 --set optim.warmup_steps=1)
fi
# train NAME SECONDS STEPS ARGS...: a run in $WORK/runs/NAME; stopped (SIGKILL, no final checkpoint)
# once STEPS step records are in its metrics when $STOP_EARLY names it.
train() {
  local name=$1 limit steps=$3 rc=0 pid n
  limit=$(cap "$2")
  shift 3
  local dir=$WORK/runs/$name
  echo "--- $name: switchyard train $* --set train.steps=$steps"
  timeout -k 5 "$limit" "$SY" train "$@" --set train.steps="$steps" --run-dir "$dir" --overwrite &
  pid=$!
  if [[ " ${STOP_EARLY:-} " = *" $name "* ]]; then
    while kill -0 "$pid" 2>/dev/null; do
      n=$(grep -c '"tokens_per_s"' "$dir/metrics.jsonl" 2>/dev/null || true)
      if (("${n:-0}" >= steps)); then  # timeout leads its own process group: switchyard goes with it
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        echo "$name: stopped after step $steps (no end-of-run checkpoint or export)"
        return 0
      fi
      sleep 0.5
    done
  fi
  wait "$pid" || rc=$?
  if ((rc == 124 || rc == 137)); then say "$name: TIMEOUT after ${limit} s"; fi
  ((rc == 0)) || { FAILED+=("$name"); say "$name: FAILED (exit $rc)"; }
}
STOP_EARLY=gpu_1b
train tiny_dev 40 "$STEPS" "${TINY[@]}" --set train.device="$DEV"
train tiny_cpu 50 "$STEPS" "${TINY[@]}" --set train.device=cpu
timeout -k 5 "$(cap 20)" "$SY" plan "${BIG[@]}" | tee "$WORK/plan.txt" | $PY plan "$WORK/plan.json" || FAILED+=(plan)
train gpu_1b 150 "$STEPS_1B" "${BIG[@]}" --set train.device="$DEV"
$PY training "$WORK" "$OUT/training.json" tiny_dev tiny_cpu gpu_1b

# ---- e. summary ----
step "e. summary ($([ $mode = gpu ] && echo "issue-12 targets" || echo "dry run: figures of the plumbing, targets not judged"))"
rc=0
failed_list=$(IFS=,; echo "${FAILED[*]}")
$PY summary "$mode" "$SOURCE" "$WORK" "$OUT" "$failed_list" "${GPU_CHECK_STRICT:-0}" || rc=$?
say "done in $(( $(date +%s) - START )) s; $OUT/summary.json (exit $rc)"
return $rc
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
