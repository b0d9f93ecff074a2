"""
Tell a weak critic from a weak sampler: evaluate one trained model with several ways of choosing
its action from the same networks.

- ``best-of-K``: the model's own deterministic action with K candidates (its setting, and larger K);
- ``critic-greedy``: the argmax of min(Q1, Q2) over a dense set of actions (a grid for one action
  dimension, 4096 uniform actions otherwise): the best any best-of-K could do with this critic;
- ``actor-mean``: the mean of 64 samples of the actor (a smooth action that ignores the critic).

If the critic-greedy policy succeeds where best-of-K fails, the sampler (the actor's spread, the
number of candidates) is what limits the agent; if it fails too, the critic is.

    python benchmarks/probe_policy.py results/diagnose/sdac_s0.zip --env InvertedPendulum-v5
"""

import argparse

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_diffusion import QVPO, SDAC


class ChosenAction:
    """A ``predict``-compatible wrapper around one way of choosing actions."""

    def __init__(self, model, how: str, n: int = 0):
        self.model, self.how, self.n = model, how, n

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        policy = self.model.policy
        obs = th.as_tensor(observation, dtype=th.float32)
        with th.no_grad():
            if self.how == "greedy":
                d = policy.action_space.shape[0]
                if d == 1:
                    grid = th.linspace(-1, 1, 401)[None, :, None].expand(obs.shape[0], -1, -1)
                else:
                    grid = th.rand(obs.shape[0], 4096, d) * 2 - 1
                q = policy.min_q(obs, grid.contiguous())
                actions = grid[th.arange(obs.shape[0]), q.argmax(dim=1)]
            else:  # actor mean
                actions = policy.sample(obs, 64, actor=policy.acting_actor).mean(dim=1)
        return policy.unscale_action(actions.numpy()), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--candidates", type=int, nargs="+", default=[32, 256])
    args = parser.parse_args()
    th.set_num_threads(1)
    model = None
    for cls in (SDAC, QVPO):
        try:
            model = cls.load(args.model, device="cpu")
            break
        except Exception:
            continue
    assert model is not None, f"{args.model} is neither an SDAC nor a QVPO model"
    env = make_vec_env(args.env, n_envs=1, seed=args.seed)
    results = {}
    own = model.policy.n_eval_candidates
    for k in [own, *[k for k in args.candidates if k != own]]:
        model.policy.n_eval_candidates = k
        returns, _ = evaluate_policy(model, env, args.episodes, deterministic=True, return_episode_rewards=True)
        results[f"best-of-{k}"] = returns
    model.policy.n_eval_candidates = own
    for how in ("greedy", "mean"):
        returns, _ = evaluate_policy(ChosenAction(model, how), env, args.episodes, return_episode_rewards=True)  # type: ignore[arg-type]
        results["critic-greedy" if how == "greedy" else "actor-mean"] = returns
    for name, returns in results.items():
        episodes = np.round(returns).astype(int).tolist()
        print(f"{type(model).__name__:5s} {name:14s} mean {np.mean(returns):7.1f}  episodes {episodes}")


if __name__ == "__main__":
    main()
