"""
SDAC's actor update alone on the 2-D bandit of ``toy_figures.py`` (picture (a)), with the true reward in
place of the critics: can the reverse-sampling score matching concentrate the policy on the peaks at a
given configuration, when the critic is perfect?

The weights are ``softmax(q_weight_scale * Q / lambda)`` with ``Q = k * reward`` and ``lambda =
q_weight_scale``, so the policy's fixed point is ``p(a) ∝ exp(k * reward(a))`` (``k = 10`` is SDAC at
``reward_scale=1`` and a fixed ``lambda=0.5``). The actions that are noised into ``a_t`` come from one of:

- ``policy``: the current policy's own samples;
- ``peak``: the global peak plus N(0, 0.05^2) noise, like a best-of-K action that has found it;
- ``half_uniform``: half the policy's samples, half uniform over the box (as picture (b) does).

Each configuration is ``batch/reverse samples/hidden layers/diffusion steps``, for example
``256/64/128x128/20``. One JSON line per run: the share of 2000 policy samples within 0.2 of each peak
(heights 0.55, 0.7, 0.8, 1.0), near none, and their mean reward.

Usage::

    python benchmarks/bandit_actor_isolation.py --steps 6000 --modes policy peak \\
        --configs 256/64/128x128/20 256/64/64x64/5 64/16/128x128/20 64/16/64x64/5
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_figures


class RewardCritic(th.nn.Module):
    """Stand-in for SDAC's twin critics: both heads return ``k`` times the bandit's reward."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        reward = th.as_tensor(toy_figures.bandit_reward(actions.numpy()), dtype=th.float32)[:, None]
        return self.k * reward, self.k * reward


def parse_config(text: str) -> dict:
    try:
        batch, n_reverse, hidden, steps = text.split("/")
        return dict(batch=int(batch), n_reverse=int(n_reverse), net_arch=[int(h) for h in hidden.split("x")],
                    diffusion_steps=int(steps))  # fmt: skip
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch/reverse/HxH/T such as 256/64/128x128/20, got {text!r}") from None


PROPOSALS = {
    "policy": lambda actor, obs: actor.sample(obs, 1)[:, 0],
    "peak": lambda actor, obs: (th.as_tensor(toy_figures.GLOBAL_PEAK, dtype=th.float32) + 0.05 * th.randn(len(obs), 2)).clamp(
        -1, 1
    ),
    "half_uniform": toy_figures.half_policy_half_uniform,
}


def run(mode: str, config: dict, steps: int, k: float = 10.0, seed: int = 0, n_samples: int = 2000) -> dict:
    start = time.process_time()
    model, _ = toy_figures.fit_actor_alone(
        RewardCritic(k),
        steps,
        seed,
        batch=config["batch"],
        n_reverse=config["n_reverse"],
        net_arch=config["net_arch"],
        diffusion_steps=config["diffusion_steps"],
        proposal=PROPOSALS[mode],
    )
    with th.no_grad():
        samples = model.actor.sample(th.zeros(1, 1), n_samples)[0].numpy()
    peaks = toy_figures.nearest_peak(samples)
    result = dict(mode=mode, steps=steps, k=k, seed=seed, **config)
    for i, (_, _, height, _) in enumerate(toy_figures.PEAKS_2D):
        result[f"share_peak_{height}"] = round(float(np.mean(peaks == i)), 3)
    result["share_none"] = round(float(np.mean(peaks == -1)), 3)
    result["mean_sample_reward"] = round(float(toy_figures.bandit_reward(samples).mean()), 3)
    result["cpu_s"] = round(time.process_time() - start, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--modes", nargs="+", choices=list(PROPOSALS), default=["policy", "peak"])
    parser.add_argument("--configs", nargs="+", type=parse_config, default=[parse_config("256/64/128x128/20")])
    parser.add_argument("--k", type=float, default=10.0, help="Q = k * reward (the fixed point is exp(k * reward))")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    for mode in args.modes:
        for config in args.configs:
            print(json.dumps(run(mode, config, args.steps, args.k, args.seed)), flush=True)


if __name__ == "__main__":
    main()
