"""
SDAC on small rewards (issue 11, point 5): how often SDAC ends at the global peak of the 2-D bandit of
``benchmarks/toy_figures.py`` (rewards in [0, 1]), at its official weighting and temperature and with
``q_normalization=True``, with the rewards as given and multiplied by 100.

    python benchmarks/small_rewards.py --seeds 0 1 2 --steps 3000 --out docs/figures/small_rewards.csv

Everything but the two factors is the same in every cell: small networks and budget (the bandit
configuration of ``toy_figures.BANDIT_CONFIGS["sdac"]`` without its two changes, so the temperature
is official: ``lambda_init=5``, one step every 250 updates, ``reward_scale=0.2``, ``q_weight_scale=5``).
"At the global peak": the deterministic action (best-of-8 of the EMA actor) within 0.15 of it. Also
recorded: its reward (on the [0, 1] scale), the share of 1000 policy samples within 0.2 of each
peak, and the CPU time. One thread.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_figures

BASE = {
    **toy_figures.BANDIT_CONFIGS["sdac"],
    "q_normalization": False,
    "lambda_update_interval": 250,  # official
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=toy_figures.BANDIT_STEPS)
    parser.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 100.0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/small_rewards.csv"))
    args = parser.parse_args()
    th.set_num_threads(1)
    rows = []
    for multiplier in args.multipliers:
        for q_normalization in (False, True):
            for seed in args.seeds:
                run = toy_figures.bandit_run(
                    "sdac", seed, args.steps, scale=multiplier, **{**BASE, "q_normalization": q_normalization}
                )
                row = {"q_normalization": q_normalization, **run["summary"]}
                rows.append(row)
                toy_figures.write_csv(args.out, rows)  # after every run, so a cut-off study keeps what it has
                print(
                    {
                        k: row[k]
                        for k in (
                            "q_normalization",
                            "reward_multiplier",
                            "seed",
                            "det_reward",
                            "det_at_global",
                            "share_peak3",
                            "cpu_s",
                        )
                    },
                    flush=True,
                )
    print(
        "\n| rewards | q_normalization | seeds at the global peak | deterministic reward per seed "
        "| samples at the global peak (mean) |"
    )
    print("|---|---|---|---|---|")
    for multiplier in args.multipliers:
        for q_normalization in (False, True):
            cell = [r for r in rows if r["reward_multiplier"] == multiplier and r["q_normalization"] == q_normalization]
            rewards = ", ".join(f"{r['det_reward']:.2f}" for r in cell)
            print(
                f"| x{multiplier:g} | {q_normalization} | {sum(r['det_at_global'] for r in cell)} of {len(cell)} | "
                f"{rewards} | {np.mean([r['share_peak3'] for r in cell]):.0%} |"
            )


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"{time.time() - start:.0f} s wall")
