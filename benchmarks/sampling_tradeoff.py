"""
Speed against return for the cheaper sampling options (fewer diffusion steps with a re-spaced
schedule, fewer candidates, deterministic DDIM), so users can choose.

For each option this script

- measures the speed at the official SDAC settings and Hopper-v5 shapes (networks 3 x 256): CPU ms
  per update (median of a few updates, mean over the policy-delay cycle; process CPU time with one
  thread, so that other processes on the machine do not distort the comparison) and CPU ms per
  behaviour action for one observation;
- trains SDAC at a small budget on each environment (official algorithm constants, smaller networks,
  SDAC's official 5 envs with one update per vector step), and reports the mean return of
  deterministic evaluation episodes at the end, with the training wall time.

The returns come from short runs with few seeds: they show how much an option costs in quality at a
small budget, not final performance.

Usage::

    python benchmarks/sampling_tradeoff.py                          # the table of docs/performance.md
    python benchmarks/sampling_tradeoff.py --envs Pendulum-v1 --steps 20000 --seeds 0 1 --options default steps5
"""

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

# name: (policy_kwargs of the sampling option, n_candidates)
OPTIONS: dict[str, tuple[dict[str, Any], int]] = {
    "default": ({}, 32),
    "steps10": ({"sampling_steps": 10}, 32),
    "steps5": ({"sampling_steps": 5}, 32),
    "ddim5": ({"sampling_steps": 5, "sampler": "ddim"}, 32),
    "ddim2": ({"sampling_steps": 2, "sampler": "ddim"}, 32),
    "k8": ({}, 8),
    "steps5_k8": ({"sampling_steps": 5}, 8),
}
DESCRIPTIONS = {
    "default": "DDPM, T = 20 steps, best-of-32 (official)",
    "steps10": "DDPM re-spaced to 10 steps, best-of-32",
    "steps5": "DDPM re-spaced to 5 steps, best-of-32",
    "ddim5": "DDIM (eta = 0), 5 steps, best-of-32",
    "ddim2": "DDIM (eta = 0), 2 steps, best-of-32",
    "k8": "DDPM, 20 steps, best-of-8",
    "steps5_k8": "DDPM re-spaced to 5 steps, best-of-8",
}
DEFAULT_STEPS = {"Pendulum-v1": 20_000, "InvertedPendulum-v5": 10_000}


def official_speed(option: str, repeats: int) -> dict[str, float]:
    """ms per update and per behaviour action at the official settings, Hopper-v5 shapes."""
    import gymnasium as gym
    from stable_baselines3.common.logger import configure

    from sb3_diffusion import SDAC

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_updates import fill_buffer

    policy_kwargs, n_candidates = OPTIONS[option]
    env = gym.make("Hopper-v5")
    model = SDAC("MlpPolicy", env, buffer_size=20_000, n_candidates=n_candidates, policy_kwargs=dict(policy_kwargs), seed=0)
    model.set_logger(configure(folder=None, format_strings=[]))
    fill_buffer(model, 10_000, np.random.default_rng(0))
    for _ in range(2 * model.policy_delay):
        model.train(gradient_steps=1, batch_size=model.batch_size)
    # process CPU time (one thread): robust to other processes sharing the machine
    times = []
    for _ in range(repeats):
        start = time.process_time()
        model.train(gradient_steps=model.policy_delay, batch_size=model.batch_size)
        times.append((time.process_time() - start) / model.policy_delay)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        model.predict(obs)
    action_times = []
    for _ in range(30):
        start = time.process_time()
        model.predict(obs)
        action_times.append(time.process_time() - start)
    return dict(update_ms=1e3 * statistics.median(times), action_ms=1e3 * statistics.median(action_times))


def train_and_evaluate(option: str, env_id: str, steps: int, seed: int, args: argparse.Namespace) -> dict[str, float]:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_diffusion import SDAC

    policy_kwargs, n_candidates = OPTIONS[option]
    env = make_vec_env(env_id, n_envs=5, seed=seed)
    model = SDAC(
        "MlpPolicy",
        env,
        learning_starts=args.learning_starts,
        n_candidates=n_candidates,
        policy_kwargs=dict(net_arch=args.net_arch, **policy_kwargs),
        seed=seed,
        device="cpu",
    )
    start = time.perf_counter()
    model.learn(steps)
    train_seconds = time.perf_counter() - start
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1000)
    mean_return, std_return = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    return dict(return_mean=float(mean_return), return_std=float(std_return), train_minutes=train_seconds / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: per environment)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--net-arch", type=int, nargs="+", default=[64, 64], help="hidden sizes of the small-budget runs")
    parser.add_argument("--learning-starts", type=int, default=2_500)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--speed-repeats", type=int, default=4, help="timed update cycles at the official settings")
    parser.add_argument("--skip-speed", action="store_true", help="skip the official-settings speed column")
    parser.add_argument("--skip-training", action="store_true", help="only the speed column")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write (and update after every run) the results to this file")
    args = parser.parse_args()

    import torch as th

    th.set_num_threads(args.threads)
    results: dict[str, Any] = {"args": vars(args), "speed": {}, "runs": {}}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as file:
                json.dump(results, file, indent=1)

    if not args.skip_speed:
        for option in args.options:
            results["speed"][option] = official_speed(option, args.speed_repeats)
            print(f"speed {option}: {results['speed'][option]}", file=sys.stderr, flush=True)
            save()
    for env_id in [] if args.skip_training else args.envs:
        steps = args.steps or DEFAULT_STEPS.get(env_id, 20_000)
        for option in args.options:
            for seed in args.seeds:
                run = train_and_evaluate(option, env_id, steps, seed, args)
                results["runs"].setdefault(env_id, {}).setdefault(option, []).append(run)
                print(f"{env_id} {option} seed {seed}: {run}", file=sys.stderr, flush=True)
                save()
    print_table(results, args)


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    envs = list(results["runs"])
    header = ["sampling option", "CPU ms/update (official, Hopper)", "CPU ms/action (official, Hopper)"]
    for env_id in envs:
        steps = args.steps or DEFAULT_STEPS.get(env_id, 20_000)
        header += [f"{env_id} return ({steps // 1000}k steps)", f"{env_id} train min"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for option in args.options:
        speed = results["speed"].get(option, {})
        cells = [
            DESCRIPTIONS[option],
            f"{speed['update_ms']:.0f}" if speed else "n/a",
            f"{speed['action_ms']:.1f}" if speed else "n/a",
        ]
        for env_id in envs:
            runs = results["runs"][env_id].get(option, [])
            returns = [run["return_mean"] for run in runs]
            spread = f" +- {statistics.pstdev(returns):.0f}" if len(returns) > 1 else ""
            cells.append(f"{statistics.mean(returns):.0f}{spread}" if returns else "n/a")
            cells.append(f"{statistics.mean(run['train_minutes'] for run in runs):.1f}" if runs else "n/a")
        print("| " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, args.seeds))
    print(
        f"\nReturns: mean of {args.eval_episodes} deterministic evaluation episodes after training, seeds {seeds}; "
        f"SDAC official constants with {args.net_arch} networks, 5 envs, one update per vector step, "
        f"{args.learning_starts} warm-up steps; {args.threads} thread(s)."
    )


if __name__ == "__main__":
    main()
