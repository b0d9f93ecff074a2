"""
Is it the data or the learner? Train one agent online (the collector), then train a fresh agent of
another kind (the learner) offline on the collector's replay buffer, with as many gradient updates
as the collector made, and evaluate the learner every ``--eval-every`` updates.

If a diffusion learner balances on SAC's data while it does not on its own, what it lacks online is
the data its own behaviour collects; if SAC cannot learn from a diffusion agent's data either, the
data is what is missing; if SAC can, the diffusion agent's learner is what is weak.

    python benchmarks/swap_data.py --collector sac --learner qvpo --zoo-learner --steps 14000 --seed 0 \
        --out results/swap/sac_to_qvpo_s0.csv

The learner sees the collector's final buffer from its first update (online, the buffer grows), and
its schedules (QVPO's entropy weight, SDAC's actor learning rate) advance as they would online. One CSV
row per evaluation: the learner's deterministic return (mean of ``--eval-episodes``), for diffusion
learners also the critic-greedy policy of ``probe_policy.py`` (the argmax of min(Q1, Q2) over a dense
set of actions), and the wall time. One thread.
"""

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from diagnose_learning import ALGOS, zoo_hyperparams
from probe_policy import ChosenAction
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

DIFFUSION = ("qvpo", "sdac")


def make_agent(algo: str, env_id: str, seed: int, zoo: bool, kwargs: str):
    config: dict[str, Any] = zoo_hyperparams(algo, env_id) if zoo else {}
    config.update(json.loads(kwargs))
    config.pop("n_envs", None)
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    return ALGOS[algo]("MlpPolicy", env, seed=seed, verbose=0, **config), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collector", choices=sorted(ALGOS), required=True)
    parser.add_argument("--learner", choices=sorted(ALGOS), required=True)
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--steps", type=int, default=14_000, help="environment steps of the collector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zoo-collector", action="store_true", help="the collector takes the shipped zoo config")
    parser.add_argument("--zoo-learner", action="store_true", help="the learner takes the shipped zoo config")
    parser.add_argument("--collector-kwargs", default="{}")
    parser.add_argument("--learner-kwargs", default="{}")
    parser.add_argument("--eval-every", type=int, default=2_000, help="learner updates between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    th.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 1000)
    start = time.perf_counter()

    collector, collector_config = make_agent(args.collector, args.env, args.seed, args.zoo_collector, args.collector_kwargs)
    collector.learn(args.steps)
    collector_return = evaluate_policy(collector, eval_env, args.eval_episodes, deterministic=True)[0]
    n_updates = collector._n_updates
    print(f"collector {args.collector}: {args.steps} steps, {n_updates} updates, return {collector_return:.1f}", flush=True)

    learner, learner_config = make_agent(args.learner, args.env, args.seed, args.zoo_learner, args.learner_kwargs)
    learner.replay_buffer = collector.replay_buffer  # the same transitions (both store actions in [-1, 1])
    learner._setup_learn(args.steps)
    rows = []
    with open(out.with_suffix(".json"), "w") as file:
        json.dump(
            {
                **vars(args),
                "collector_config": collector_config,
                "learner_config": learner_config,
                "collector_return": float(collector_return),
            },
            file,
            indent=1,
            default=str,
        )
    done = 0
    while done < n_updates:
        chunk = min(args.eval_every, n_updates - done)
        # the schedules advance as online: progress as if the collector's steps had been taken so far
        learner.num_timesteps = int(args.steps * (done + chunk) / n_updates)
        learner._update_current_progress_remaining(learner.num_timesteps, args.steps)
        learner.train(gradient_steps=chunk, batch_size=learner.batch_size)
        done += chunk
        row = {
            "updates": done,
            "learner_return": evaluate_policy(learner, eval_env, args.eval_episodes, deterministic=True)[0],
            "critic_greedy_return": np.nan,
            "collector_return": collector_return,
            "wall_s": time.perf_counter() - start,
        }
        if args.learner in DIFFUSION:
            row["critic_greedy_return"] = evaluate_policy(ChosenAction(learner, "greedy"), eval_env, args.eval_episodes)[0]
        rows.append(row)
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        with open(out, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
