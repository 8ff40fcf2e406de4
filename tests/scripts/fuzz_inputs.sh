#!/usr/bin/env bash
# Randomised bad input, every file type Switchyard reads: a YAML config, an HDF5 token file, an
# llm.c shard, a Megatron dataset (.idx and .bin), a checkpoint (manifest.json, a rank's HDF5 file, `latest`), a Hugging Face model
# folder (config.json, model.safetensors). Each case mutates one file of a working set (flipped
# bytes, truncation, appended garbage, deleted / duplicated / rewritten YAML lines) and runs the
# command that reads it under a 30 s timeout. Every outcome must be success (exit 0) or one clear
# error (exit 2, one stderr line "switchyard: error: ..."): never a crash (signal), an internal
# error, a hang (timeout) or several lines. Fixed seed (FUZZ_SEED, default 20261202), a time
# budget (FUZZ_SECONDS, default 90) and a case cap, so the run is bounded and repeatable.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
SEED=${FUZZ_SEED:-20261202}
SECONDS_BUDGET=${FUZZ_SECONDS:-90}

# the working set
W="$TMP/work"
mkdir -p "$W"
BASE=("${SMALL_MODEL[@]}" --set train.steps=2 --set checkpoint.interval=2 --set train.eval_windows=2)
"$SY" train "${BASE[@]}" --run-dir "$W/run" >/dev/null
cp "$SRC/configs/tiny.yaml" "$W/config.yaml"
/usr/bin/python3 - "$W/shard.bin" <<'PY'
import struct, sys
hdr = [0] * 256; hdr[0], hdr[1], hdr[2] = 20240520, 1, 2000
open(sys.argv[1], "wb").write(struct.pack("<256i", *hdr) + bytes((i * 7) % 250 for i in range(4000)))
PY
cp "$TOK" "$W/tok.h5"
"$SY" prepare --input "$TMP/a.txt" --output "$W/meg" --format megatron --valid-fraction 0 >/dev/null

/usr/bin/python3 - "$SY" "$W" "$TMP/cases" "$SEED" "$SECONDS_BUDGET" "${SMALL_MODEL[@]}" <<'PY'
import os, random, shutil, subprocess, sys, time
sy, work, cases, seed, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
small = sys.argv[6:]
rng = random.Random(seed)
ckpt = f"{work}/run/checkpoints/step-000002"

def train(data, *extra):
    return [sy, "train", *small, "--set", f"data.train={data}", "--set", "train.steps=1",
            "--set", "train.eval_windows=1", *extra]

# (file to mutate, how: "bytes" or "yaml", command builder taking the case folder)
targets = [
    ("config.yaml", "yaml", lambda c: [sy, "train", "--config", f"{c}/config.yaml", "--set", f"data.train={work}/tok.h5",
                                       "--set", "train.steps=1", "--set", "model.d_model=64", "--set", "model.n_layers=1",
                                       "--set", "train.seq_len=32", "--run-dir", f"{c}/out"]),
    ("tok.h5", "bytes", lambda c: train(f"{c}/tok.h5", "--run-dir", f"{c}/out")),
    ("shard.bin", "bytes", lambda c: train(f"{c}/shard.bin", "--run-dir", f"{c}/out")),
    ("meg.idx", "bytes", lambda c: train(f"{c}/meg", "--run-dir", f"{c}/out")),
    ("meg.bin", "bytes", lambda c: train(f"{c}/meg.bin", "--run-dir", f"{c}/out")),
    ("run/checkpoints/step-000002/manifest.json", "yaml",
     lambda c: train(f"{work}/tok.h5", "--set", "train.steps=3", "--run-dir", f"{c}/out", "--resume",
                     f"{c}/run/checkpoints/step-000002")),
    ("run/checkpoints/step-000002/rank-00000.h5", "bytes",
     lambda c: [sy, "export", "--checkpoint", f"{c}/run/checkpoints/step-000002", "--out", f"{c}/export"]),
    ("run/checkpoints/latest", "bytes",
     lambda c: train(f"{work}/tok.h5", "--set", "train.steps=3", "--run-dir", f"{c}/out", "--resume",
                     f"{c}/run/checkpoints")),
    ("run/model/config.json", "yaml",
     lambda c: [sy, "eval", "--init-from", f"{c}/run/model", "--data", f"{work}/tok.h5", "--split", "train",
                "--max-windows", "2"]),
    ("run/model/model.safetensors", "bytes",
     lambda c: [sy, "eval", "--init-from", f"{c}/run/model", "--data", f"{work}/tok.h5", "--split", "train",
                "--max-windows", "2"]),
]

def mutate_bytes(data):
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "append", "zero"])
    if kind == "flip" and data:
        # header bytes are where parsers decide sizes: half the flips go to the first 512 bytes
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(data), 512)) if rng.random() < 0.5 else rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[:rng.randrange(len(data) + 1)]
    elif kind == "append":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    elif kind == "zero" and data:
        i = rng.randrange(len(data)); n = rng.randint(1, 64)
        data[i:i + n] = bytes(len(data[i:i + n]))
    return bytes(data), kind

WORDS = ["-1", "0", "1e309", "nan", "999999999999999999999", "[1, 2]", "{a: 1}", "''", "~", "true", "x" * 300,
         "\t", "&a", "*a", "!!binary aGk=", "0x7fffffffffffffff", "-0", "1.5"]
def mutate_text(data):
    lines = data.decode("utf-8", "replace").split("\n")
    kind = rng.choice(["delete", "duplicate", "value", "value", "garbage", "indent"])
    i = rng.randrange(len(lines))
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i, lines[i])
    elif kind == "value":
        line = lines[i]
        if ":" in line:
            lines[i] = line[:line.index(":") + 1] + " " + rng.choice(WORDS)
        else:
            lines[i] = rng.choice(WORDS)
    elif kind == "garbage":
        lines[i] = "".join(chr(rng.randrange(1, 0x250)) for _ in range(rng.randint(1, 40)))
    elif kind == "indent":
        lines[i] = " " * rng.randint(1, 7) + lines[i]
    return "\n".join(lines).encode("utf-8", "surrogateescape"), kind

start = time.time()
n = bad = 0
outcomes = {}
while time.time() - start < budget and n < 400:
    name, how, command = targets[n % len(targets)]
    case = f"{cases}/{n}"
    shutil.copytree(work, case, symlinks=True)
    path = f"{case}/{name}"
    original = open(path, "rb").read()
    mutated, kind = (mutate_bytes if how == "bytes" else mutate_text)(original)
    open(path, "wb").write(mutated)
    try:
        p = subprocess.run(command(case), capture_output=True, text=True, errors="replace", timeout=30,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        rc, err = p.returncode, [l for l in p.stderr.splitlines() if l.strip()]
    except subprocess.TimeoutExpired:
        rc, err = "timeout", []
    ok = rc == 0 or (rc == 2 and len(err) == 1 and err[0].startswith("switchyard: error: "))
    outcomes[(name, "ok" if rc == 0 else f"exit {rc}")] = outcomes.get((name, "ok" if rc == 0 else f"exit {rc}"), 0) + 1
    if not ok:
        bad += 1
        print(f"FAIL case {n}: {name} ({kind}): exit {rc}; stderr: {err[:3]}")
        shutil.copy(path, f"{cases}/failed-{n}-{os.path.basename(name)}")
    shutil.rmtree(case)
    n += 1
for (name, what), count in sorted(outcomes.items()):
    print(f"{name:<45} {what:<8} {count}")
print(f"{n} cases in {time.time() - start:.0f} s (seed {seed}): {bad} failure(s)")
sys.exit(1 if bad or n < len(targets) else 0)
PY
