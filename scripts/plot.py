#!/usr/bin/python3
"""scripts/plot.py: PNG figures of one or more training runs, from their metrics.jsonl.

    scripts/plot.py RUN_DIR [RUN_DIR ...] [--out DIR]

Figures (line plots overlay the runs, legend = run folder name):
  loss.png             train loss per step, eval loss as markers
  lr.png               learning rate
  loss_scale.png       fp16 loss scale (only when a run has one)
  tokens_per_s.png     training throughput
  expert_load_<run>_layer_<N>.png   per run and MoE layer: each expert's share of the routed tokens
                       (rows: experts, columns: steps)
--out defaults to <first RUN_DIR>/plots. Only the files named above are written (each to a temporary
then renamed over the name); nothing else in the folder is touched. Bad input (no such folder, no
metrics.jsonl, an empty or damaged metrics.jsonl line) is one line naming the file, exit code 2.
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402

FIGSIZE, DPI = (8, 4.5), 100  # every figure: 800 x 450 pixels


class Usage(Exception):
    """Bad input: main prints the message on one line and exits with 2."""


def read_run(run_dir):
    """(step records, eval records) of a run folder's metrics.jsonl."""
    if not os.path.isdir(run_dir):
        raise Usage(f"{run_dir}: no such folder (pass the run folder `switchyard train` wrote, runs/<name>)")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise Usage(f"{path}: no such file; is {run_dir} a run folder of `switchyard train`?")
    steps, evals = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                    raise ValueError("not a record with a step")
            except ValueError as e:
                what = "an empty line" if not line.strip() else f"not a metrics record ({e})"
                raise Usage(f"{path}:{n}: {what}; the file is damaged (a training run writes one JSON record "
                            f"a line)") from None
            if "loss" in rec:
                steps.append(rec)
            elif "eval_loss" in rec:
                evals.append(rec)
    if not steps:
        raise Usage(f"{path}: holds no step records; has the run taken a step yet?")
    return steps, evals


def save(fig, out_dir, name):
    """Writes `fig` as out_dir/name through a temporary, prints where, closes it."""
    path = os.path.join(out_dir, name)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=DPI)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise Usage(f"{path}: cannot write ({e.strerror}); choose another --out") from None
    finally:
        plt.close(fig)
    w, h = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)
    print(f"plot.py: wrote {path} ({w}x{h})")


def line_plot(runs, out_dir, name, title, ylabel, key, log=False, evals_too=False):
    """One line per run of `key` over the steps; nothing written when no run has `key`."""
    if not any(key in r for _, steps, _ in runs for r in steps):
        return
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for label, steps, evals in runs:
        pts = [(r["step"], r[key]) for r in steps if key in r and isinstance(r[key], (int, float))]
        line, = ax.plot([s for s, _ in pts], [v for _, v in pts], label=f"{label} train" if evals_too else label)
        if evals_too and evals:
            ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o--", color=line.get_color(),
                    label=f"{label} eval")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, out_dir, name)


def heatmaps(label, steps, out_dir):
    """Per MoE layer: the experts' shares of the routed tokens over the steps."""
    layers = len(steps[0].get("expert_load", []))
    for layer in range(layers):
        rows = [r["expert_load"][layer] for r in steps]
        experts = len(rows[0])
        share = lambda row, e: row[e] if e < len(row) and isinstance(row[e], (int, float)) else math.nan
        grid = [[share(row, e) for row in rows] for e in range(experts)]  # null (a NaN in JSON): blank
        fig, ax = plt.subplots(figsize=FIGSIZE)
        first, last = steps[0]["step"], steps[-1]["step"]
        im = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                       extent=(first - 0.5, last + 0.5, -0.5, experts - 0.5))
        ax.set(title=f"{label}: expert load, MoE layer {layer} (uniform = {1 / experts:.3g})", xlabel="step",
               ylabel="expert")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, label="share of routed tokens")
        fig.tight_layout()
        save(fig, out_dir, f"expert_load_{label}_layer_{layer}.png")


def main(argv):
    p = argparse.ArgumentParser(description="PNG figures of training runs from their metrics.jsonl")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by `switchyard train`")
    p.add_argument("--out", help="folder for the figures (default: <first RUN_DIR>/plots)")
    args = p.parse_args(argv)
    runs, labels = [], set()
    for run_dir in args.runs:
        steps, evals = read_run(run_dir)
        base = os.path.basename(os.path.normpath(os.path.abspath(run_dir))) or "run"
        label, n = base, 2
        while label in labels:  # two folders of one name (a/run, b/run): run, run-2
            label, n = f"{base}-{n}", n + 1
        labels.add(label)
        runs.append((label, steps, evals))
    out_dir = args.out or os.path.join(args.runs[0], "plots")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise Usage(f"{out_dir}: cannot create the output folder ({e.strerror}); choose another --out") from None
    line_plot(runs, out_dir, "loss.png", "loss", "loss", "loss", evals_too=True)
    line_plot(runs, out_dir, "lr.png", "learning rate", "lr", "lr")
    line_plot(runs, out_dir, "loss_scale.png", "fp16 loss scale", "loss scale", "loss_scale", log=True)
    line_plot(runs, out_dir, "tokens_per_s.png", "throughput", "tokens / s", "tokens_per_s")
    for label, steps, _ in runs:
        heatmaps(label, steps, out_dir)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Usage as e:
        print(f"plot.py: {e}", file=sys.stderr)
        sys.exit(2)
