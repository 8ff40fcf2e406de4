#!/usr/bin/python3
"""The noise-weighting and hard-example-mining experiment (issue 14); scripts/exp_noise.sh runs it.

  scripts/exp_noise.py make OUT_PREFIX [--seed N] [--corrupt F] [--valid F] [--max-bytes N]
      The demo corpus (the texts scripts/corpus.sh feeds `switchyard prepare`: the license texts of
      /usr/share/common-licenses and every /usr/share/doc/*/copyright; files with a NUL byte or
      invalid UTF-8 skipped, exact duplicates kept once) as byte tokens (1..255, token 0 ends each
      document), each document cut to its first --max-bytes bytes. A seeded --valid share of the
      documents is the clean validation set (OUT_PREFIX_valid.bin/.idx); of the rest, a seeded
      --corrupt share is corrupted, a third each:
        random    uniform random bytes 1..255, the document's length
        shuffled  the document's own bytes in a random order
        foreign   a slice of the document's length from a text of another source: the Python
                  standard library's source files (/usr/lib/python3.*/*.py)
      Writes OUT_PREFIX.bin/.idx (the training set, in document order; Megatron layout through
      tests/scripts/lib/megatron_ref.py) and OUT_PREFIX_mask.json {"documents": D, "kinds":
      {document index: kind} for the corrupted ones, ...}. Deterministic from --seed.

  scripts/exp_noise.py report RUNS_DIR MASK_JSON [--markdown FILE] [--svg FILE]
      RUNS_DIR/uniform and RUNS_DIR/weighted: each a run folder (metrics.jsonl) and the data-report
      JSON of its checkpoint at 3/4 of the steps (report_q3.json) and at the end (report_end.json).
      Prints the table: clean validation loss, share of corrupted documents among the draws of the
      last quarter (visits at the end minus visits at 3/4, per sample), the ROC-AUC of the noise
      score against the mask (the weighted run's excess loss per document, all kinds and per kind),
      tokens/s (--extra LABEL=RUN_DIR adds other runs of the same data as rows: settings tried);
      below it the noisy flags against the mask and the settings. The plot: the clean
      validation loss of both runs per evaluation, and the weighted run's per-document noise score
      by kind (clean and each corruption).
"""
import argparse
import glob
import json
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "scripts", "lib"))
from exp_balance import load as load_metrics  # noqa: E402  (metrics.jsonl: step and eval records)

KINDS = ("random", "shuffled", "foreign")


# ----------------------------------------------------------------------------------------------- make

def demo_files():
    """The inputs of scripts/corpus.sh's ensure_corpus, in `switchyard prepare`'s order: the license
    folder walked sorted by relative path, then the copyright files sorted."""
    lic = "/usr/share/common-licenses"
    files = []
    for root, dirs, names in os.walk(lic, followlinks=True):
        dirs.sort()
        files += [os.path.join(root, n) for n in names]
    files.sort(key=lambda p: os.path.relpath(p, lic))
    copyrights = []  # find /usr/share/doc -name copyright -type f | sort
    for root, _, names in os.walk("/usr/share/doc"):
        copyrights += [os.path.join(root, n) for n in names
                       if n == "copyright" and not os.path.islink(os.path.join(root, n))]
    return files + sorted(copyrights)


def text_bytes(path):
    """The file's bytes, or None when prepare would skip it (empty, a NUL byte, invalid UTF-8)."""
    with open(path, "rb") as f:
        b = f.read()
    if not b or b"\0" in b:
        return None
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return b


def foreign_text():
    """The other source: the Python standard library's own source files, concatenated."""
    parts = []
    for p in sorted(glob.glob("/usr/lib/python3*/*.py")):
        b = text_bytes(p)
        if b:
            parts.append(b)
    if not parts:
        sys.exit("exp_noise make: no /usr/lib/python3*/*.py to take the foreign-source text from")
    return b"\n".join(parts)


def corrupt(doc, kind, rng, foreign):
    n = len(doc)
    if kind == "random":
        return bytes(rng.randint(1, 255) for _ in range(n))
    if kind == "shuffled":
        b = bytearray(doc)
        rng.shuffle(b)
        return bytes(b)
    start = rng.randrange(0, len(foreign) - n)
    return foreign[start:start + n]


def write_split(prefix, docs):
    import megatron_ref  # the independent Megatron writer (needs numpy; `make` only)
    seqs = [list(d) + [0] for d in docs]
    megatron_ref.write_dataset(prefix, 8, seqs, list(range(len(seqs) + 1)))


def cmd_make(a):
    seen, docs = set(), []
    for p in demo_files():
        b = text_bytes(p)
        if b is None or b in seen:
            continue
        seen.add(b)
        docs.append(b[:a.max_bytes] if a.max_bytes > 0 else b)
    rng = random.Random(a.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_valid = max(1, round(a.valid * len(docs)))
    valid_set = set(order[:n_valid])
    valid = [docs[i] for i in range(len(docs)) if i in valid_set]
    train = [docs[i] for i in range(len(docs)) if i not in valid_set]
    n_bad = round(a.corrupt * len(train))
    bad = rng.sample(range(len(train)), n_bad)
    foreign = foreign_text()
    kinds = {}
    # a third each, in the seeded order of `bad`, so every kind is spread over the corpus
    for j, d in enumerate(bad):
        kinds[d] = KINDS[j % 3]
    for d, kind in kinds.items():
        train[d] = corrupt(train[d], kind, rng, foreign)
    os.makedirs(os.path.dirname(os.path.abspath(a.prefix)), exist_ok=True)
    write_split(a.prefix, train)
    write_split(a.prefix + "_valid", valid)
    mask = {"documents": len(train), "seed": a.seed, "corrupt": a.corrupt, "max_bytes": a.max_bytes,
            "tokens": sum(len(d) + 1 for d in train), "valid_documents": len(valid),
            "valid_tokens": sum(len(d) + 1 for d in valid),
            "kinds": {str(d): kinds[d] for d in sorted(kinds)}}
    with open(a.prefix + "_mask.json", "w") as f:
        json.dump(mask, f, indent=1)
        f.write("\n")
    counts = {k: sum(1 for v in kinds.values() if v == k) for k in KINDS}
    print(f"exp_noise make: {len(train)} training documents ({mask['tokens']} tokens), {n_bad} corrupted "
          f"({', '.join(f'{k} {c}' for k, c in counts.items())}); {len(valid)} clean validation documents "
          f"({mask['valid_tokens']} tokens) -> {a.prefix}.bin/.idx, {a.prefix}_valid.bin/.idx, {a.prefix}_mask.json")


# --------------------------------------------------------------------------------------------- report

RUNS = ("uniform", "weighted")


def load_report(path):
    with open(path) as f:
        r = json.load(f)
    return r["step"], {s["sample"]: s for s in r["samples"]}


def auc(pos, neg):
    """ROC-AUC of scores `pos` (corrupted) against `neg` (clean): P(pos > neg), ties counted half
    (the Mann-Whitney U statistic over the average ranks)."""
    if not pos or not neg:
        return float("nan")
    allv = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum, i = 0.0, 0
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2  # ranks i+1 .. j
        rank_sum += mean_rank * sum(1 for k in range(i, j) if allv[k][1])
        i = j
    n1, n0 = len(pos), len(neg)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def doc_scores(samples):
    """Per document: the visit-weighted mean excess of its visited samples, and whether any of its
    samples is flagged noisy."""
    acc = {}
    for s in samples.values():
        if s["visits"] < 1:
            continue
        d = acc.setdefault(s["document"], [0.0, 0, False])
        d[0] += s["excess"] * s["visits"]
        d[1] += s["visits"]
        d[2] = d[2] or s["noisy"]
    return {d: (v[0] / v[1], v[2]) for d, v in acc.items()}


def corrupted_share(q3, end, kinds):
    bad = total = 0
    for i, s in end.items():
        n = s["visits"] - (q3[i]["visits"] if i in q3 else 0)
        total += n
        bad += n if str(s["document"]) in kinds else 0
    return bad / total if total else float("nan"), total


def summarize(run_dir, name, kinds):
    steps, evals = load_metrics(run_dir)
    s3, q3 = load_report(os.path.join(run_dir, "report_q3.json"))
    s4, end = load_report(os.path.join(run_dir, "report_end.json"))
    share, draws = corrupted_share(q3, end, kinds)
    scores = doc_scores(end)
    clean = [v for d, (v, _) in scores.items() if str(d) not in kinds]
    per_kind = {k: [v for d, (v, _) in scores.items() if kinds.get(str(d)) == k] for k in KINDS}
    bad = [v for k in KINDS for v in per_kind[k]]
    flagged = {d for d, (_, f) in scores.items() if f}
    bad_docs = {int(d) for d in kinds}
    all_docs = {s["document"] for s in end.values()}
    samples_bad = sum(1 for s in end.values() if str(s["document"]) in kinds)
    return dict(
        run=name, valid_loss=evals[-1]["eval_loss"], best_valid=min(e["eval_loss"] for e in evals),
        share=share, draws=draws, q3=s3, end=s4, sample_share=samples_bad / len(end),
        auc=auc(bad, clean), auc_kind={k: auc(per_kind[k], clean) for k in KINDS},
        scored=len(scores), documents=len(all_docs),
        flagged=len(flagged), flag_tp=len(flagged & bad_docs), bad_docs=len(bad_docs & all_docs),
        flag_kind={k: sum(1 for d in flagged if kinds.get(str(d)) == k) for k in KINDS},
        kind_docs={k: sum(1 for d in kinds.values() if d == k) for k in KINDS},
        tokens_per_s=statistics.median(s["tokens_per_s"] for s in steps[1:] or steps),
        train_loss=statistics.mean(s["loss"] for s in steps[-max(1, len(steps) // 20):]),
        evals=[(e["step"], e["eval_loss"]) for e in evals],
        clean_scores=clean, kind_scores=per_kind,
        noisy_share=steps[-1].get("data", {}).get("noisy_share", 0.0),
        hard_share=steps[-1].get("data", {}).get("hard_share", 0.0),
    )


def fmt_pct(v):
    return f"{100 * v:.1f}%"


def table(rows):
    out = ["| run | clean valid loss | corrupted share of last-quarter draws | noise-score AUC (all) | "
           "AUC random | AUC shuffled | AUC foreign | tokens/s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["auc_kind"]
        out.append(f"| {r['run']} | {r['valid_loss']:.4f} | {fmt_pct(r['share'])} | {r['auc']:.3f} | "
                   f"{k['random']:.3f} | {k['shuffled']:.3f} | {k['foreign']:.3f} | {r['tokens_per_s']:.0f} |")
    return "\n".join(out)


def details(rows, mask):
    u, w = rows
    kinds_made = ", ".join(f"{k} {u['kind_docs'][k]}" for k in KINDS)
    lines = [f"Training set: {mask['documents']} documents, {mask['tokens']} tokens, "
             f"{len(mask['kinds'])} corrupted ({kinds_made}); "
             f"{u['sample_share'] * 100:.1f}% of the samples (chunks) are corrupted. Clean validation set: "
             f"{mask['valid_documents']} documents, {mask['valid_tokens']} tokens.",
             f"Last quarter = the draws between the checkpoints of steps {w['q3']} and {w['end']} "
             f"({w['draws']} draws per run).",
             f"Clean validation loss: weighted {w['valid_loss']:.4f} vs uniform {u['valid_loss']:.4f} "
             f"({w['valid_loss'] - u['valid_loss']:+.4f} nats, {100 * (w['valid_loss'] / u['valid_loss'] - 1):+.1f}%); "
             f"best of the evaluations: {w['best_valid']:.4f} vs {u['best_valid']:.4f}."]
    for r in rows:
        kind_list = ", ".join(f"{k} {r['flag_kind'][k]}/{r['kind_docs'][k]}" for k in KINDS)
        lines.append(f"{r['run']}: noise score = the run's EMA excess loss per document (visit-weighted mean over "
                     f"its chunks), {r['scored']} of {r['documents']} documents visited; noisy-flagged at the end: "
                     f"{r['flagged']} documents, {r['flag_tp']} of them corrupted (recall {r['flag_tp']}/{r['bad_docs']}; "
                     f"per kind {kind_list}); "
                     f"noisy share of samples {fmt_pct(r['noisy_share'])}, hard share {fmt_pct(r['hard_share'])}.")
    for r in rows:
        med = {k: statistics.median(v) if v else float("nan") for k, v in r["kind_scores"].items()}
        lines.append(f"{r['run']}: median noise score clean {statistics.median(r['clean_scores']):.2f}, "
                     + ", ".join(f"{k} {med[k]:.2f}" for k in KINDS) + " nats.")
    return "\n\n".join(lines)


def svg(rows):
    W, H = 900, 380
    colors = {"uniform": "#1f77b4", "weighted": "#d62728", "clean": "#2ca02c", "random": "#9467bd",
              "shuffled": "#ff7f0e", "foreign": "#8c564b"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']

    def axes(x0, x1, y0, y1, L, R, T, B, xlabel, ylabel, xt="{:.0f}", yt="{:.2f}"):
        px = lambda x: L + (x - x0) / max(x1 - x0, 1e-9) * (R - L)
        py = lambda y: T + (y1 - y) / max(y1 - y0, 1e-9) * (B - T)
        out.append(f'<line x1="{L}" y1="{B}" x2="{R}" y2="{B}" stroke="black"/>')
        out.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{B}" stroke="black"/>')
        out.append(f'<text x="{(L + R) / 2}" y="{B + 32}" text-anchor="middle">{xlabel}</text>')
        out.append(f'<text x="{L - 48}" y="{(T + B) / 2}" transform="rotate(-90 {L - 48} {(T + B) / 2})" '
                   f'text-anchor="middle">{ylabel}</text>')
        for i in range(5):
            y = y0 + (y1 - y0) * i / 4
            out.append(f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{yt.format(y)}</text>')
            x = x0 + (x1 - x0) * i / 4
            out.append(f'<text x="{px(x):.1f}" y="{B + 16}" text-anchor="middle">{xt.format(x)}</text>')
        return px, py

    # left: clean validation loss per evaluation
    xs = [s for r in rows for s, _ in r["evals"]]
    ys = [v for r in rows for _, v in r["evals"]]
    px, py = axes(min(xs), max(xs), min(ys) - 0.05, max(ys) + 0.05, 70, 410, 30, 320, "optimizer step",
                  "clean validation loss")
    out.append('<text x="240" y="18" text-anchor="middle">clean validation loss</text>')
    for i, r in enumerate(rows):
        c = colors[r["run"]]
        pts = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in r["evals"])
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
        out.append(f'<text x="300" y="{50 + 16 * i}" fill="{c}">{r["run"]}</text>')
    # right: the weighted run's per-document noise score, a histogram per kind (share of the kind's documents)
    w = rows[-1]
    groups = [("clean", w["clean_scores"])] + [(k, w["kind_scores"][k]) for k in KINDS]
    lo = min(v for _, g in groups for v in g)
    hi = max(v for _, g in groups for v in g)
    nb = 30
    width = (hi - lo) / nb or 1.0
    hists = []
    for name, g in groups:
        h = [0] * nb
        for v in g:
            h[min(nb - 1, int((v - lo) / width))] += 1
        hists.append((name, [c / max(len(g), 1) for c in h]))
    top = max(max(h) for _, h in hists)
    px, py = axes(lo, hi, 0, top, 520, 880, 30, 320, "noise score (EMA excess loss, nats)",
                  "share of the kind's documents", xt="{:.1f}")
    out.append(f'<text x="700" y="18" text-anchor="middle">{w["run"]} run: noise score per document</text>')
    for i, (name, h) in enumerate(hists):
        c = colors[name]
        pts = []
        for b, v in enumerate(h):
            pts += [f"{px(lo + b * width):.1f},{py(v):.1f}", f"{px(lo + (b + 1) * width):.1f},{py(v):.1f}"]
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{" ".join(pts)}"/>')
        out.append(f'<text x="800" y="{50 + 16 * i}" fill="{c}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cmd_report(a):
    with open(a.mask) as f:
        mask = json.load(f)
    kinds = mask["kinds"]
    rows = [summarize(os.path.join(a.runs, n), n, kinds) for n in RUNS]
    extra = [summarize(d, label, kinds) for label, d in (e.split("=", 1) for e in a.extra)]
    text = table(rows + extra) + "\n\n" + details(rows, mask)
    print(text)
    for path, body in ((a.markdown, text + "\n"), (a.svg, svg(rows) if a.svg else "")):
        if path:
            with open(path, "w") as f:
                f.write(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("prefix")
    m.add_argument("--seed", type=int, default=14)
    m.add_argument("--corrupt", type=float, default=0.23)
    m.add_argument("--valid", type=float, default=0.05)
    m.add_argument("--max-bytes", type=int, default=2048, help="cut each document to this many bytes; 0: whole")
    r = sub.add_parser("report")
    r.add_argument("runs")
    r.add_argument("mask")
    r.add_argument("--markdown")
    r.add_argument("--svg")
    r.add_argument("--extra", action="append", default=[], metavar="LABEL=RUN_DIR",
                   help="another run (its folder with report_q3.json and report_end.json) as a row of the table")
    a = ap.parse_args()
    if a.cmd == "make":
        cmd_make(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
