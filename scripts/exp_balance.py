#!/usr/bin/python3
"""The balancing experiment's table and plot (scripts/exp_balance.sh runs the variants).

  scripts/exp_balance.py RUNS_DIR D_MODEL EXPERT_SIZE STEP_TOKENS VARIANT... [--markdown FILE] [--svg FILE]

RUNS_DIR holds one run folder per variant (RUNS_DIR/VARIANT/metrics.jsonl). Per variant, over the
last 20% of the steps: the busiest-30% share (mean over steps and layers, and the worst layer's
mean), max/mean, dropped fraction and mean experts per token; the final validation loss; expert
FLOPs per token (forward, the slots actually computed: 2 * 3 * d_model * expert_size * mean k *
(1 - dropped)); tokens/s (median over the steps). The plot: the busiest-30% share (mean over
layers) per step, one line per variant, as a dependency-free SVG. Below the table: the
busiest-30% share that perfectly balanced routing shows at this step size (each token picks k
distinct experts uniformly at random: the sampling noise of one step's counts), the floor no
balancing method can go under in this measurement.
"""
import argparse
import json
import math
import os
import random
import statistics
import sys


def load(run_dir):
    steps, evals = [], []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            (evals if "eval_loss" in r else steps).append(r)
    if not steps or not evals:
        sys.exit(f"exp_balance: {run_dir}/metrics.jsonl has no step or no evaluation record; did the run finish?")
    return steps, evals


def layer_mean(v):
    return sum(v) / len(v) if v else 0.0


def summarize(name, steps, evals, d_model, expert_size):
    tail = steps[int(len(steps) * 0.8):]
    n_layers = len(tail[0]["busiest30_share"])
    worst = max(statistics.mean(s["busiest30_share"][l] for s in tail) for l in range(n_layers))
    mean_k = statistics.mean(layer_mean(s.get("mean_k", [])) for s in tail)
    dropped = statistics.mean(layer_mean(s.get("dropped_fraction", [])) for s in tail)
    return dict(
        variant=name,
        valid_loss=evals[-1]["eval_loss"],
        busiest30=statistics.mean(layer_mean(s["busiest30_share"]) for s in tail),
        busiest30_worst=worst,
        max_over_mean=statistics.mean(layer_mean(s["max_over_mean"]) for s in tail),
        dropped=dropped,
        mean_k=mean_k,
        expert_mflop=2 * 3 * d_model * expert_size * mean_k * (1 - dropped) / 1e6,
        tokens_per_s=statistics.median(s["tokens_per_s"] for s in steps[1:] or steps),
        curve=[(s["step"], layer_mean(s["busiest30_share"])) for s in steps],
    )


def noise_floor(n_experts, tokens, k, draws=200):
    """Mean busiest-30% share of one step's counts when every token picks k distinct experts
    uniformly: what a perfectly balanced router measures."""
    rng = random.Random(0)
    top = max(1, math.ceil(3 * n_experts / 10))
    total = 0.0
    for _ in range(draws):
        c = [0] * n_experts
        for _ in range(tokens):
            for e in rng.sample(range(n_experts), k):
                c[e] += 1
        total += sum(sorted(c, reverse=True)[:top]) / (tokens * k)
    return total / draws


COLUMNS = [("variant", "variant", "{}"), ("valid_loss", "valid loss", "{:.4f}"),
           ("busiest30", "busiest-30% share", "{:.3f}"), ("busiest30_worst", "worst layer", "{:.3f}"),
           ("max_over_mean", "max/mean", "{:.2f}"), ("dropped", "dropped", "{:.3f}"),
           ("mean_k", "mean k", "{:.2f}"), ("expert_mflop", "expert MFLOP/token", "{:.2f}"),
           ("tokens_per_s", "tokens/s", "{:.0f}")]


def table(rows):
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule] + body)


def svg(rows, floor):
    W, H, L, R, T, B = 760, 420, 60, 200, 20, 40
    xs = [s for r in rows for s, _ in r["curve"]]
    ys = [v for r in rows for _, v in r["curve"]] + [floor]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys) - 0.02, max(ys) + 0.02
    px = lambda x: L + (x - x0) / max(x1 - x0, 1) * (W - L - R)
    py = lambda y: T + (y1 - y) / (y1 - y0) * (H - T - B)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">optimizer step</text>',
           f'<text x="14" y="{(T + H - B) / 2}" transform="rotate(-90 14 {(T + H - B) / 2})" '
           f'text-anchor="middle">busiest-30% share (mean over layers)</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x:.0f}</text>')
    out.append(f'<line x1="{L}" y1="{py(floor):.1f}" x2="{W - R}" y2="{py(floor):.1f}" stroke="gray" '
               f'stroke-dasharray="4 3"/><text x="{W - R + 4}" y="{py(floor) + 4:.1f}" fill="gray">noise floor</text>')
    for i, r in enumerate(rows):
        c = colors[i % len(colors)]
        pts = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in r["curve"])
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
        out.append(f'<text x="{W - R + 4}" y="{T + 14 + 16 * i}" fill="{c}">{r["variant"]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("d_model", type=int)
    ap.add_argument("expert_size", type=int)
    ap.add_argument("step_tokens", type=int, help="tokens per optimizer step over all ranks")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--markdown")
    ap.add_argument("--svg")
    a = ap.parse_args()
    names = a.variants
    rows = [summarize(n, *load(os.path.join(a.runs, n)), a.d_model, a.expert_size) for n in names]
    text = table(rows)
    first = load(os.path.join(a.runs, names[0]))[0][-1]
    n_exp, k = len(first["expert_load"][0]), round(first["mean_k"][0])
    tokens = a.step_tokens
    floor = noise_floor(n_exp, tokens, k)
    text += (f"\n\nPerfect balance: busiest-30% share {-(-3 * n_exp // 10) / n_exp:.4f} in expectation; "
             f"{floor:.4f} measured on one step's counts ({int(tokens)} tokens x {k} experts of {n_exp}, "
             f"each token's experts drawn uniformly: the sampling-noise floor of this column).")
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if a.svg:
        with open(a.svg, "w") as f:
            f.write(svg(rows, floor))


if __name__ == "__main__":
    main()
