"""
Learning parity of ``precision="bf16"`` (and ``"bf16_chains"``) against ``"fp32"``: the project's small
learning checks, the same seeds and configurations in each precision, one after the other (so that the
load of a shared machine affects them alike).

- ``bandit``: the multi-peak bandit of ``tests/test_behaviour.py`` (its ``BANDIT_CONFIGS``, 1 500 steps):
  the deterministic action, whether it is at the global peak (within 0.1), its reward, and the
  fraction of 500 policy samples within 0.15 of the global peak;
- ``pendulum``: the RL Zoo quick start (``hyperparams/<algo>.yml``, entry ``Pendulum-v1``, 10 000
  steps): the mean return of 10 deterministic evaluation episodes at the end of training.

Each run prints one JSON line (precision, algorithm, task, seed, metrics, wall and process CPU
seconds); ``--summary FILE`` turns such lines into the Markdown table of ``docs/precision.md``, where
each reduced precision's Pendulum row also compares it with fp32 seed by seed (the mean paired difference
and how many seeds are lower).

Usage::

    python benchmarks/precision_parity.py --tasks bandit pendulum --algos sdac qvpo --seeds 0 1 2 > parity.jsonl
    python benchmarks/precision_parity.py --summary parity.jsonl
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sb3_diffusion.common.hot_path import PRECISIONS  # noqa: E402


def _pendulum_config(algo: str) -> tuple[int, dict[str, Any]]:
    import yaml

    with open(ROOT / "hyperparams" / f"{algo}.yml") as file:
        entry = dict(yaml.safe_load(file)["Pendulum-v1"])
    n_timesteps = int(entry.pop("n_timesteps"))
    entry.pop("policy", None)
    return n_timesteps, entry


def run_one(algo: str, task: str, seed: int, precision: str) -> dict[str, Any]:
    import numpy as np
    import torch as th

    from sb3_diffusion import QVPO, SDAC

    cls = {"sdac": SDAC, "qvpo": QVPO}[algo]
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    result: dict[str, Any] = dict(algo=algo, task=task, seed=seed, precision=precision)
    if task == "bandit":
        from tests.envs import MultiPeakBandit
        from tests.test_behaviour import BANDIT_CONFIGS

        config = dict(BANDIT_CONFIGS[cls])
        config["policy_kwargs"] = {**config["policy_kwargs"], "precision": precision}
        model = cls("MlpPolicy", MultiPeakBandit(), seed=seed, **config).learn(1500)
        action = float(model.predict(np.zeros(1, dtype=np.float32), deterministic=True)[0][0])
        samples = model.policy.sample(th.zeros(1, 1), 500, actor=model.policy.acting_actor)[0, :, 0].numpy()
        peak = MultiPeakBandit.global_peak
        result.update(
            action=action,
            hit=abs(action - peak) < 0.1,
            reward=MultiPeakBandit.reward(np.array([action])),
            mass_at_peak=float(np.mean(np.abs(samples - peak) < 0.15)),
        )
    elif task == "pendulum":
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.evaluation import evaluate_policy

        n_timesteps, config = _pendulum_config(algo)
        config["policy_kwargs"] = {**config.get("policy_kwargs", {}), "precision": precision}
        model = cls("MlpPolicy", "Pendulum-v1", seed=seed, **config).learn(n_timesteps)
        mean_return, std_return = evaluate_policy(
            model, make_vec_env("Pendulum-v1", n_envs=1, seed=100 + seed), n_eval_episodes=10
        )
        result.update(mean_return=float(mean_return), std_return=float(std_return), steps=n_timesteps)
    else:
        raise ValueError(f"Unknown task {task!r}")
    result.update(wall_s=time.perf_counter() - start_wall, cpu_s=time.process_time() - start_cpu)
    result["effective_dtype"] = str(model.policy.hot_path.compute_dtype(model.device)).replace("torch.", "")
    result["loadavg"] = os.getloadavg()[0]
    return result


def summarize(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["algo"], row["precision"]), []).append(row)

    def spread(values: list[float], digits: int = 0) -> str:
        mean = statistics.mean(values)
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{mean:.{digits}f} +- {std:.{digits}f}"

    print(
        "| task | algorithm | precision | seeds | result per seed | mean +- std | against fp32, same seeds |"
        " wall s (mean) | CPU s (mean) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (task, algo, precision), runs in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1], PRECISIONS.index(item[0][2]))
    ):
        runs = sorted(runs, key=lambda run: run["seed"])
        seeds = ", ".join(str(run["seed"]) for run in runs)
        if task == "bandit":
            per_seed = " / ".join(
                f"{run['action']:.2f}{' (hit)' if run['hit'] else ''}, {run['mass_at_peak']:.2f}" for run in runs
            )
            summary = (
                f"{sum(run['hit'] for run in runs)}/{len(runs)} hits; mass {spread([run['mass_at_peak'] for run in runs], 2)}"
            )
        else:
            per_seed = " / ".join(f"{run['mean_return']:.0f}" for run in runs)
            summary = spread([run["mean_return"] for run in runs])
        paired = ""
        if precision != "fp32" and task == "pendulum":
            fp32 = {run["seed"]: run["mean_return"] for run in groups.get((task, algo, "fp32"), [])}
            differences = [run["mean_return"] - fp32[run["seed"]] for run in runs if run["seed"] in fp32]
            if differences:
                lower = sum(difference < 0 for difference in differences)
                paired = f"{spread(differences)}; lower in {lower} of {len(differences)}"
        wall = statistics.mean(run["wall_s"] for run in runs)
        cpu = statistics.mean(run["cpu_s"] for run in runs)
        print(
            f"| {task} | {algo.upper()} | {precision} | {seeds} | {per_seed} | {summary} | {paired} | {wall:.0f} | {cpu:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["bandit", "pendulum"], choices=["bandit", "pendulum"])
    parser.add_argument("--algos", nargs="+", default=["sdac", "qvpo"], choices=["sdac", "qvpo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--summary", default=None, help="print the Markdown table of a JSON-lines file instead")
    args = parser.parse_args()
    if args.summary:
        summarize(args.summary)
        return
    import torch as th

    th.set_num_threads(args.threads)
    for task in args.tasks:
        for algo in args.algos:
            for seed in args.seeds:
                for precision in args.precisions:
                    print(json.dumps(run_one(algo, task, seed, precision)), flush=True)


if __name__ == "__main__":
    main()
