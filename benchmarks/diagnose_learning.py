"""
Train one agent and record, at every evaluation, what a careful researcher checks when an agent
does not learn: returns, the critics' scale and TD error, the spread of the sampled actions against
the action box, how the chosen candidate's Q compares with the others, the effective sample size of
the actor's weights, the actor loss, and which observation features the deterministic action follows.

    python benchmarks/diagnose_learning.py --algo sdac --env InvertedPendulum-v5 --steps 20000 \
        --seed 0 --kwargs '{"learning_starts": 1000}' --out results/diagnose/sdac_s0.csv

One CSV row per evaluation. ``--kwargs`` is a JSON dict of constructor arguments (``policy_kwargs``
included); ``--zoo`` takes the hyperparameters of the shipped RL Zoo config for the task instead
(``--kwargs`` then overrides single entries, single ``policy_kwargs`` entries too). Runs on one thread unless told otherwise.
"""

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.env_util import make_vec_env

from sb3_diffusion import QVPO, SDAC

ALGOS = {"sdac": SDAC, "qvpo": QVPO, "sac": SAC, "td3": TD3}


def zoo_hyperparams(algo: str, env_id: str) -> dict[str, Any]:
    """The shipped RL Zoo entry of ``algo`` for ``env_id`` as constructor arguments (plus n_envs)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "hyperparams" / f"{algo}.yml"
    with open(path) as file:
        configs = yaml.load(file, Loader=yaml.UnsafeLoader)
    config = dict(configs[env_id])
    for key in ("n_timesteps", "policy", "normalize", "env_wrapper", "callback", "frame_stack"):
        config.pop(key, None)
    if isinstance(config.get("policy_kwargs"), str):
        config["policy_kwargs"] = eval(config["policy_kwargs"], {"nn": th.nn})  # RL Zoo's string form
    return config


def constructor_kwargs(algo: str, env_id: str, zoo: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    """
    The constructor arguments of a run: the shipped zoo entry (``zoo``) with ``overrides`` on top, where
    ``policy_kwargs`` entries replace single entries of the entry's ``policy_kwargs``; activations given
    by name ("ReLU", "nn.ReLU") become the ``torch.nn`` class.
    """
    kwargs: dict[str, Any] = zoo_hyperparams(algo, env_id) if zoo else {}
    overrides = dict(overrides)
    policy_overrides = overrides.pop("policy_kwargs", {})
    kwargs.update(overrides)
    policy_kwargs = {**kwargs.get("policy_kwargs", {}), **policy_overrides}
    for key, value in policy_kwargs.items():
        if key.endswith("activation_fn") and isinstance(value, str):
            policy_kwargs[key] = getattr(th.nn, value.removeprefix("nn."))
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def effective_sample_size(weights: th.Tensor) -> th.Tensor:
    """Per-row ESS of normalised weights: 1 / sum w^2 (between 1 and the number of columns)."""
    return 1.0 / (weights**2).sum(dim=1)


class Diagnostics(BaseCallback):
    def __init__(self, eval_env, eval_freq: int, n_eval_episodes: int, path: Path, n_states: int = 512):
        super().__init__()
        self.eval_env = eval_env
        self.eval_freq = eval_freq
        self.n_eval_episodes = n_eval_episodes
        self.path = path
        self.n_states = n_states
        self.rows: list[dict[str, float]] = []
        self.start = time.time()
        self.episode_returns: list[float] = []
        self.last_eval_step = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.episode_returns.append(info["episode"]["r"])
        if self.num_timesteps - self.last_eval_step >= self.eval_freq:
            self.last_eval_step = self.num_timesteps
            self.record()
        return True

    @th.no_grad()
    def diagnose(self) -> dict[str, float]:
        model = self.model
        out: dict[str, float] = {}
        if model.replay_buffer.size() < self.n_states:
            return out
        data = model.replay_buffer.sample(self.n_states)
        obs, actions = data.observations, data.actions
        critic = model.critic
        q_data = th.cat(critic(obs, actions), dim=1)
        out["q_mean"] = float(q_data.mean())
        out["q_std"] = float(q_data.std())
        out["q_twin_gap"] = float((q_data[:, 0] - q_data[:, 1]).abs().mean())
        det = th.as_tensor(model.policy.scale_action(model.predict(obs.cpu().numpy(), deterministic=True)[0]))
        out["det_action_mean"] = float(det.mean())
        out["det_action_std"] = float(det.std())
        out["det_action_edge"] = float((det.abs() > 0.95).float().mean())
        obs_np, det_np = obs.cpu().numpy(), det.cpu().numpy()
        for j in range(min(obs_np.shape[1], 11)):
            if obs_np[:, j].std() > 1e-8 and det_np[:, 0].std() > 1e-8:
                out[f"corr_obs{j}"] = float(np.corrcoef(obs_np[:, j], det_np[:, 0])[0, 1])
        # Q of the deterministic action against the replay action, and against a uniform action
        q_det = th.cat(critic(obs, det.to(obs.device)), dim=1).min(dim=1).values
        out["q_det_minus_q_data"] = float((q_det - q_data.min(dim=1).values).mean())
        if isinstance(model, (SDAC, QVPO)):
            policy = model.policy
            k = 32
            candidates = policy.sample(obs, k, actor=policy.acting_actor)
            q_cand = policy.min_q(obs, candidates)
            out["cand_action_std"] = float(candidates.std(dim=1).mean())
            out["cand_action_mean_abs"] = float(candidates.abs().mean())
            out["cand_edge"] = float((candidates.abs() > 0.95).float().mean())
            out["cand_q_best_minus_mean"] = float((q_cand.max(dim=1).values - q_cand.mean(dim=1)).mean())
            out["cand_q_std"] = float(q_cand.std(dim=1).mean())
            uniform = th.rand_like(candidates) * 2 - 1
            q_uni = policy.min_q(obs, uniform)
            out["uniform_q_best_minus_mean"] = float((q_uni.max(dim=1).values - q_uni.mean(dim=1)).mean())
            out["cand_q_mean_minus_uniform_q_mean"] = float((q_cand.mean(dim=1) - q_uni.mean(dim=1)).mean())
            if isinstance(model, SDAC):
                new_actions = policy.best_of_k(obs, model.n_candidates)
                weights = model.reverse_sampling_target(obs, new_actions, model.lambda_).weights
                out["weight_ess"] = float(effective_sample_size(weights).mean())
                out["weight_max"] = float(weights.max(dim=1).values.mean())
                out["lambda"] = model.lambda_
            else:
                entropy_weight = model.entropy_weight_at(model._current_progress_remaining)
                samples = policy.sample(obs, model.n_policy_samples)
                _, _, _, weights = model.actor_regression_rows(obs, samples, entropy_weight)
                out["weight_mean"] = float(weights.mean())
                out["weight_zero_frac"] = float((weights == 0).float().mean())
        return out

    def record(self) -> None:
        final_obs: list[np.ndarray] = []

        def remember_final(locals_: dict, _globals: dict) -> None:
            if locals_["dones"][0]:
                final_obs.append(np.asarray(locals_["infos"][0].get("terminal_observation", locals_["observations"][0])))

        returns, _ = evaluate_policy(
            self.model,
            self.eval_env,
            self.n_eval_episodes,
            deterministic=True,
            return_episode_rewards=True,
            callback=remember_final,
        )
        row: dict[str, float] = {
            "timesteps": self.num_timesteps,
            "eval_mean": float(np.mean(returns)),
            "eval_std": float(np.std(returns)),
            "train_return_recent": float(np.mean(self.episode_returns[-20:])) if self.episode_returns else float("nan"),
            "wall_s": time.time() - self.start,
        }
        if final_obs:
            # where evaluation episodes end, feature by feature (e.g. a cart at the end of its rail)
            ends = np.abs(np.stack(final_obs))
            for j in range(min(ends.shape[1], 4)):
                row[f"eval_end_abs_obs{j}"] = float(ends[:, j].mean())
        log = self.model.logger.name_to_value
        for key in ("train/critic_loss", "train/actor_loss", "train/lambda", "train/weight_max", "train/ent_coef"):
            if key in log:
                row[key.split("/")[1]] = float(log[key])
        self.model.policy.set_training_mode(False)
        row.update(self.diagnose())
        self.rows.append(row)
        self.model.save(self.path.with_suffix(".zip"))  # the latest model, for analyses after the run
        keys = list(dict.fromkeys(key for r in self.rows for key in r))  # columns in first-seen order
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        print(
            f"[{self.path.stem}] {self.num_timesteps:>7} eval {row['eval_mean']:8.1f} train {row['train_return_recent']:8.1f} "
            f"{row['wall_s']:6.0f}s "
            + " ".join(
                f"{k}={row[k]:.3g}"
                for k in (
                    "eval_end_abs_obs0",
                    "eval_end_abs_obs1",
                    "q_mean",
                    "critic_loss",
                    "corr_obs0",
                    "corr_obs1",
                    "corr_obs3",
                    "cand_q_best_minus_mean",
                    "weight_ess",
                    "lambda",
                )
                if k in row
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGOS), required=True)
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-freq", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--zoo", action="store_true", help="start from the shipped RL Zoo config of the task")
    parser.add_argument("--kwargs", default="{}", help='JSON dict of constructor arguments (activations by name: "ReLU")')
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="torch device (cpu, cuda, auto)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    kwargs = constructor_kwargs(args.algo, args.env, args.zoo, json.loads(args.kwargs))
    n_envs = int(kwargs.pop("n_envs", 1))
    env = make_vec_env(args.env, n_envs=n_envs, seed=args.seed)
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 1000)
    model = ALGOS[args.algo]("MlpPolicy", env, seed=args.seed, device=args.device, verbose=0, **kwargs)
    callback = Diagnostics(eval_env, max(args.eval_freq // n_envs, 1) * n_envs, args.eval_episodes, Path(args.out))
    with open(Path(args.out).with_suffix(".json"), "w") as file:
        json.dump(
            {
                "algo": args.algo,
                "env": args.env,
                "seed": args.seed,
                "steps": args.steps,
                "n_envs": n_envs,
                "kwargs": kwargs,
                "cpu": os.popen("lscpu | grep 'Model name'").read().split(":")[-1].strip(),
            },
            file,
            indent=1,
            default=str,
        )
    model.learn(args.steps, callback=callback)


if __name__ == "__main__":
    main()
