#!/usr/bin/env python3
"""scripts/bench_compare.py: the JSON files of `switchyard bench --json` (schema switchyard.bench/1)
for scripts/bench_all.sh.

  merge A B ...                 one file: the rows of all, in order; a scenario skipped in one file
                                and measured in another counts as measured (the one-rank run and the
                                mpirun run of bench_all.sh)
  compare BASELINE CURRENT [--threshold PCT]
                                a table of every scenario's rate: baseline, now, change. A scenario
                                whose rate fell by more than PCT percent (default 10) is a regression:
                                exit 1; otherwise exit 0. Each row also shows its fraction of
                                its ceiling then and now: a rate that fell with its ceiling is
                                the machine (busier, slower), a fraction that fell is the code. Rows are matched by scenario; a row whose
                                shape differs is listed, not compared. A baseline from another machine
                                (CPU model, threads, oneDNN ISA) gives a warning. Unreadable or
                                malformed files: exit 2 with one line naming the file.
"""
import json
import sys

SCHEMA = "switchyard.bench/1"
MACHINE_KEYS = ("cpu", "logical_cores", "threads", "onednn_isa", "backend")


def fail(msg):
    print(f"bench_compare.py: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: not a readable JSON file ({e}); pass a file written by `switchyard bench --json`")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("rows"), list):
        fail(f"{path}: not a `switchyard bench --json` file (schema {SCHEMA} with rows expected)")
    for r in doc["rows"]:
        if not isinstance(r, dict) or not isinstance(r.get("scenario"), str) or not isinstance(r.get("rate"), (int, float)):
            fail(f"{path}: a row without a scenario name and a numeric rate: {r!r}")
    return doc


def merge(paths):
    docs = [load(p) for p in paths]
    out = dict(docs[0])
    out["rows"] = [r for d in docs for r in d["rows"]]
    measured = {r["scenario"] for r in out["rows"]}
    skipped, seen = [], set()
    for d in docs:
        for s in d.get("skipped", []):
            if s["scenario"] not in measured and s["scenario"] not in seen:
                skipped.append(s)
                seen.add(s["scenario"])
    out["skipped"] = skipped
    out["ranks"] = sorted({r.get("ranks", 1) for r in out["rows"]})
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


def compare(base_path, cur_path, threshold):
    base, cur = load(base_path), load(cur_path)
    bm, cm = base.get("machine", {}), cur.get("machine", {})
    diffs = [f"{k} {bm.get(k)!r} -> {cm.get(k)!r}" for k in MACHINE_KEYS if bm.get(k) != cm.get(k)]
    if diffs:
        print(f"WARNING: the baseline was measured on another machine or setting ({'; '.join(diffs)}): "
              "changes below may be the machine's, not the code's")
    if base.get("quick") != cur.get("quick"):
        print(f"WARNING: baseline quick={base.get('quick')} but now quick={cur.get('quick')}: sizes differ")
    brows = {r["scenario"]: r for r in base["rows"]}
    crows = {r["scenario"]: r for r in cur["rows"]}
    order = [r["scenario"] for r in cur["rows"]] + [s for s in brows if s not in crows]
    print(f"{'scenario':<24} {'unit':<8} {'baseline':>12} {'now':>12} {'change':>9} {'fraction of ceiling':>20}  verdict")
    regressed = []
    for name in order:
        b, c = brows.get(name), crows.get(name)
        unit = (c or b).get("unit", "")
        if b is None:
            print(f"{name:<24} {unit:<8} {'-':>12} {c['rate']:>12.4g} {'':>9}  new (not in the baseline)")
            continue
        if c is None:
            print(f"{name:<24} {unit:<8} {b['rate']:>12.4g} {'-':>12} {'':>9}  missing now")
            continue
        if b.get("shape") != c.get("shape") or b.get("unit") != c.get("unit"):
            print(f"{name:<24} {unit:<8} {b['rate']:>12.4g} {c['rate']:>12.4g} {'':>9}  not compared: shape "
                  f"{b.get('shape')!r} -> {c.get('shape')!r}")
            continue
        change = 100.0 * (c["rate"] - b["rate"]) / b["rate"] if b["rate"] > 0 else 0.0
        verdict = "ok"
        if change < -threshold:
            verdict = f"REGRESSION (over {threshold:g}%)"
            regressed.append(name)
        frac = f"{b.get('fraction', 0):.3f} -> {c.get('fraction', 0):.3f}"
        print(f"{name:<24} {unit:<8} {b['rate']:>12.4g} {c['rate']:>12.4g} {change:>+8.1f}% {frac:>20}  {verdict}")
    if regressed:
        print(f"{len(regressed)} scenario(s) regressed by more than {threshold:g}%: {', '.join(regressed)}")
        return 1
    print(f"no scenario regressed by more than {threshold:g}%")
    return 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "merge":
        return merge(argv[1:])
    if len(argv) in (3, 5) and argv[0] == "compare":
        threshold = 10.0
        if len(argv) == 5:
            if argv[3] != "--threshold":
                fail(f"unknown option {argv[3]} (compare BASELINE CURRENT [--threshold PCT])")
            try:
                threshold = float(argv[4])
            except ValueError:
                fail(f"--threshold {argv[4]}: not a number; give a percentage such as 10")
            if threshold < 0:
                fail(f"--threshold {argv[4]}: negative; give a percentage such as 10")
        return compare(argv[1], argv[2], threshold)
    fail("usage: bench_compare.py merge A.json B.json ... | compare BASELINE.json CURRENT.json [--threshold PCT]")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
