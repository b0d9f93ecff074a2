"""
Plot the CSVs written by ``diagnose_learning.py``: one panel per diagnostic, one line per run.

    python benchmarks/plot_diagnostics.py docs/results/inverted_pendulum/*.csv \
        --out docs/figures/inverted_pendulum_diagnostics.png
    python benchmarks/plot_diagnostics.py docs/results/hopper/*.csv --panels eval_mean train_return_recent \
        --out docs/figures/hopper_10k.png

A run's label is its file name without ``.csv``; runs whose names differ only in ``_s<seed>`` share
a colour.
"""

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

PANELS = [
    ("eval_mean", "deterministic return (5 episodes)"),
    ("train_return_recent", "training episode return (last 20)"),
    ("eval_end_abs_obs0", "|cart position| when an evaluation ends"),
    ("cand_edge", "sampled actions beyond 0.95 of the box"),
    ("cand_action_std", "std of 32 sampled actions per state"),
    ("weight_ess", "SDAC: effective sample size of the weights"),
    ("corr_obs0", "corr(deterministic action, cart position)"),
    ("det_action_edge", "deterministic actions beyond 0.95 of the box"),
    ("critic_loss", "critic TD loss (scaled rewards for SDAC)"),
    ("q_det_minus_q_data", "Q(deterministic action) - Q(replay action) (scaled for SDAC)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csvs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="")
    parser.add_argument("--panels", nargs="+", default=None, help="columns to plot (default: every known diagnostic present)")
    args = parser.parse_args()
    runs = {Path(path).stem: pd.read_csv(path) for path in args.csvs}
    groups = sorted({re.sub(r"_s\d+$", "", name) for name in runs})
    colours = {group: f"C{i}" for i, group in enumerate(groups)}
    panels = [(key, label) for key, label in PANELS if any(key in frame for frame in runs.values())]
    if args.panels:
        unknown = set(args.panels) - {key for key, _ in PANELS}
        if unknown:
            parser.error(f"unknown panels {sorted(unknown)}: choose from {[key for key, _ in PANELS]}")
        panels = [(key, label) for key, label in panels if key in args.panels]
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        seen = set()
        for name, frame in runs.items():
            if key not in frame:
                continue
            group = re.sub(r"_s\d+$", "", name)
            ax.plot(frame["timesteps"], frame[key], color=colours[group], alpha=0.8, label=None if group in seen else group)
            seen.add(group)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) - 1) // 4), 1, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
