"""
The two pictures that say why a diffusion policy, in a few minutes on one CPU core:

(a) ``bandit``: a one-step bandit in a 2-D action box with four reward peaks of different heights.
    SDAC, QVPO and SB3's SAC are trained on it; 1000 actions sampled from each trained policy are drawn
    over the reward landscape, with each one's deterministic action.
(b) ``score``: reverse-sampling score matching (SDAC's actor loss, ``SDAC.reverse_sampling_target`` and
    ``SDAC.score_matching_loss``, with a fixed energy in place of the critic) fitting a 2-D density
    with eight modes, beside the best Gaussian for SAC's objective (reverse KL, squashed by tanh).

    python benchmarks/toy_figures.py --out docs/figures            # both
    python benchmarks/toy_figures.py --only bandit --seeds 0 1 2   # (a), every seed in the CSV

Every number drawn is in a CSV beside its PNG: ``toy_bandit_actions.csv`` (the sampled actions),
``toy_bandit_summary.csv`` (per algorithm and seed: deterministic action, its reward, share of samples
at each peak, training time), ``toy_score_matching_samples.csv`` and ``toy_score_matching_summary.csv``.
One thread (``torch.set_num_threads(1)``).
"""

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_results import write_csv

# (x, y, height, width) of the reward peaks: the global one (height 1) is the last, in a corner
# far from the second best, so a policy that settles on a local peak is easy to see.
PEAKS_2D = (
    (-0.5, 0.5, 0.55, 0.22),
    (0.5, 0.5, 0.7, 0.22),
    (-0.5, -0.5, 0.8, 0.22),
    (0.55, -0.55, 1.0, 0.2),
)
GLOBAL_PEAK = np.array(PEAKS_2D[-1][:2])


def bandit_reward(actions: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Reward of actions of shape (..., 2): the highest Gaussian bump at that point, times ``scale``."""
    actions = np.asarray(actions, dtype=np.float64)
    bumps = [h * np.exp(-0.5 * ((actions[..., 0] - x) ** 2 + (actions[..., 1] - y) ** 2) / w**2) for x, y, h, w in PEAKS_2D]
    return scale * np.max(bumps, axis=0)


def nearest_peak(actions: np.ndarray, radius: float = 0.2) -> np.ndarray:
    """Index of the peak within ``radius`` of each action, -1 for none."""
    actions = np.asarray(actions).reshape(-1, 2)
    centres = np.array([p[:2] for p in PEAKS_2D])
    distances = np.linalg.norm(actions[:, None, :] - centres[None], axis=-1)
    index = distances.argmin(axis=1)
    return np.where(distances.min(axis=1) < radius, index, -1)


class PeakBandit2D(gym.Env):
    """
    One-step continuous bandit: a constant observation, a 2-D action in [-1, 1]^2, and the reward
    ``scale * max_i h_i exp(-|a - c_i|^2 / (2 w_i^2))`` (``PEAKS_2D``; global peak at (0.6, -0.6)).
    """

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        reward = float(bandit_reward(np.clip(action, -1.0, 1.0), self.scale))
        return np.zeros(1, dtype=np.float32), reward, True, False, {}


# Small configurations that train in well under a minute of one core each. SDAC and QVPO as in the
# test suite's 1-D bandit (tests/test_behaviour.py), SAC at SB3's defaults but for the warm-up and the
# batch. SDAC runs with q_normalization here: at its official temperature the weights are almost
# uniform on rewards in [0, 1] (docs/results.md, "SDAC on small rewards").
BANDIT_STEPS = 3000
BANDIT_CONFIGS: dict[str, dict[str, Any]] = {
    "sdac": dict(
        learning_starts=500,
        batch_size=64,
        n_candidates=8,
        n_reverse_samples=16,
        learning_rate=1e-3,
        actor_learning_rate=1e-3,
        q_normalization=True,
        lambda_update_interval=20,  # as in the Pendulum quick start: the temperature settles within the run
        policy_kwargs=dict(net_arch=[64, 64], diffusion_steps=5),
    ),
    "qvpo": dict(
        learning_starts=500,
        batch_size=64,
        n_policy_samples=16,
        n_uniform_samples=4,
        n_eval_candidates=16,
        learning_rate=1e-2,
        actor_learning_rate=3e-3,
        policy_kwargs=dict(net_arch=[32, 32], diffusion_steps=5, time_embed_dim=8, time_hidden_dim=16),
    ),
    "sac": dict(learning_starts=500, batch_size=64, learning_rate=1e-3, policy_kwargs=dict(net_arch=[64, 64])),
}


def make_model(algo: str, seed: int, scale: float = 1.0, **overrides: Any):
    from stable_baselines3 import SAC

    from sb3_diffusion import QVPO, SDAC

    cls = {"sdac": SDAC, "qvpo": QVPO, "sac": SAC}[algo]
    kwargs = {**BANDIT_CONFIGS[algo], **overrides}
    return cls("MlpPolicy", PeakBandit2D(scale), seed=seed, **kwargs)


def sample_policy(model, n: int, seed: int) -> np.ndarray:
    """``n`` actions of the trained policy's behaviour distribution (in [-1, 1]^2)."""
    th.manual_seed(seed)
    obs = th.zeros(1, 1)
    with th.no_grad():
        if hasattr(model.policy, "acting_actor"):  # diffusion: the actor's own samples, no best-of-K
            return model.policy.acting_actor.sample(obs, n)[0].numpy()
        return model.actor(obs.repeat(n, 1), deterministic=False).numpy()  # SAC: tanh-squashed Gaussian


def deterministic_action(model) -> np.ndarray:
    return np.asarray(model.predict(np.zeros(1, dtype=np.float32), deterministic=True)[0]).reshape(2)


def bandit_run(
    algo: str, seed: int, steps: int, scale: float = 1.0, n_samples: int = 1000, **overrides: Any
) -> dict[str, Any]:
    """Train one agent on the bandit; its samples, deterministic action and where they fall."""
    start = time.process_time()
    model = make_model(algo, seed, scale, **overrides).learn(steps)
    cpu = time.process_time() - start
    samples = sample_policy(model, n_samples, seed)
    action = deterministic_action(model)
    peaks = nearest_peak(samples)
    result = {
        "algo": algo,
        "seed": seed,
        "steps": steps,
        "reward_multiplier": scale,
        "det_x": float(action[0]),
        "det_y": float(action[1]),
        "det_reward": float(bandit_reward(action)),
        "det_peak": int(nearest_peak(action)[0]),
        "det_at_global": bool(np.linalg.norm(action - GLOBAL_PEAK) < 0.15),
        "cpu_s": round(cpu, 1),
    }
    for i in range(len(PEAKS_2D)):
        result[f"share_peak{i}"] = float(np.mean(peaks == i))
    result["share_none"] = float(np.mean(peaks == -1))
    result["mean_sample_reward"] = float(bandit_reward(samples).mean())
    return {"summary": result, "samples": samples}


def landscape(n: int = 201) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid = np.linspace(-1, 1, n)
    xx, yy = np.meshgrid(grid, grid)
    return xx, yy, bandit_reward(np.stack([xx, yy], axis=-1))


def figure_bandit(out: Path, seeds: list[int], steps: int) -> list[dict[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = list(BANDIT_CONFIGS)
    summaries, sample_rows, drawn = [], [], {}
    for algo in algos:
        for seed in seeds:
            run = bandit_run(algo, seed, steps)
            summaries.append(run["summary"])
            print({k: v for k, v in run["summary"].items() if not k.startswith("share")}, flush=True)
            for x, y in run["samples"]:
                sample_rows.append({"algo": algo, "seed": seed, "x": round(float(x), 4), "y": round(float(y), 4)})
            if seed == seeds[0]:
                drawn[algo] = run
    write_csv(out / "toy_bandit_actions.csv", sample_rows)
    write_csv(out / "toy_bandit_summary.csv", summaries)

    xx, yy, zz = landscape()
    titles = {"sdac": "SDAC (q_normalization)", "qvpo": "QVPO", "sac": "SAC (Gaussian)"}
    fig, axes = plt.subplots(1, len(algos), figsize=(4.2 * len(algos), 4.2), constrained_layout=True)
    for ax, algo in zip(axes, algos, strict=True):
        run = drawn[algo]
        ax.contourf(xx, yy, zz, levels=20, cmap="Greys")
        for x, y, h, _ in PEAKS_2D:
            ax.annotate(
                f"{h:g}", (x, y), xytext=(0, 14), textcoords="offset points", ha="center", fontsize=9, color="tab:blue"
            )
        samples = run["samples"]
        ax.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.35, color="tab:orange", label="sampled actions")
        s = run["summary"]
        ax.scatter([s["det_x"]], [s["det_y"]], marker="*", s=220, color="tab:red", edgecolor="k", label="deterministic action")
        ax.set_title(f"{titles[algo]}, seed {s['seed']}\nsamples at global peak: {s['share_peak3']:.0%}", fontsize=11)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
    axes[0].legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.suptitle(f"One-step 2-D bandit, four peaks (heights in blue), {steps} steps", fontsize=12)
    fig.savefig(out / "toy_bandit.png", dpi=80)
    plt.close(fig)
    return summaries


# ---------------------------------------------------------------------------------------------- (b)

# Eight modes on a circle of radius 0.6, alternating weights 2:1, std 0.08 (inside the action box).
RING_MODES = 8
RING_RADIUS = 0.6
RING_STD = 0.08


def ring_centres() -> np.ndarray:
    angles = 2 * np.pi * np.arange(RING_MODES) / RING_MODES
    return RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def ring_weights() -> np.ndarray:
    weights = np.where(np.arange(RING_MODES) % 2 == 0, 2.0, 1.0)
    return weights / weights.sum()


def ring_log_density(actions: th.Tensor) -> th.Tensor:
    """Log density of the target mixture at actions (..., 2)."""
    centres = th.as_tensor(ring_centres(), dtype=actions.dtype)
    log_w = th.as_tensor(np.log(ring_weights()), dtype=actions.dtype)
    sq = ((actions[..., None, :] - centres) ** 2).sum(-1)
    return th.logsumexp(log_w - 0.5 * sq / RING_STD**2, dim=-1) - math.log(2 * math.pi * RING_STD**2)


def ring_samples(n: int, rng: np.random.Generator) -> np.ndarray:
    modes = rng.choice(RING_MODES, size=n, p=ring_weights())
    return ring_centres()[modes] + RING_STD * rng.standard_normal((n, 2))


class EnergyCritic(th.nn.Module):
    """Stand-in for SDAC's twin critics: both heads return the target's log density at the action."""

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        q = ring_log_density(actions)[:, None]
        return q, q


def half_policy_half_uniform(actor: Any, obs: th.Tensor) -> th.Tensor:
    """Half the current policy's samples and half uniform actions over the box: the policy's samples
    alone would never propose a mode it has not found yet."""
    half = len(obs) // 2
    return th.cat([actor.sample(obs[:half], 1)[:, 0], th.rand(len(obs) - half, 2) * 2 - 1])


def fit_actor_alone(
    critic: th.nn.Module,
    steps: int,
    seed: int,
    batch: int = 256,
    n_reverse: int = 64,
    net_arch: tuple[int, ...] = (128, 128),
    diffusion_steps: int = 20,
    proposal: Callable[[Any, th.Tensor], th.Tensor] = half_policy_half_uniform,
) -> tuple[Any, list[float]]:
    """
    SDAC's actor update alone on the bandit's constant state, with ``critic`` in place of the twin
    critics: ``proposal(actor, obs)`` gives the actions that are noised into ``a_t`` (in SDAC, the
    behaviour action); the weights are ``softmax(q_weight_scale * Q(a0_k) / lambda)`` with ``lambda =
    q_weight_scale``, so the policy's fixed point is ``p(a) ∝ exp(Q(a))``. Returns the model and the
    loss every 100 steps.
    """
    from sb3_diffusion import SDAC

    model = SDAC(
        "MlpPolicy",
        PeakBandit2D(),
        seed=seed,
        n_reverse_samples=n_reverse,
        actor_learning_rate=1e-3,
        policy_kwargs=dict(net_arch=list(net_arch), diffusion_steps=diffusion_steps),
    )
    model.critic = critic
    actor, optimizer = model.actor, model.actor.optimizer
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    obs = th.zeros(batch, 1)
    losses = []
    for step in range(steps):
        with th.no_grad():
            target = model.reverse_sampling_target(obs, proposal(actor, obs), model.q_weight_scale)
        loss = model.score_matching_loss(obs, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            losses.append(float(loss.detach()))
    return model, losses


def fit_score_matching(steps: int, seed: int, batch: int = 256, n_reverse: int = 64) -> tuple[Any, list[float]]:
    """SDAC's actor update alone (:func:`fit_actor_alone`) with ``EnergyCritic``: the fixed point is the ring."""
    return fit_actor_alone(EnergyCritic(), steps, seed, batch, n_reverse)


def fit_gaussian(steps: int, seed: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """
    The Gaussian policy's answer, as SAC's actor finds it: a tanh-squashed diagonal Gaussian that
    minimises KL(pi || p), i.e. maximises E_pi[log p(a)] + H(pi), by reparameterised gradients.

    :return: mean and std of the pre-tanh Gaussian
    """
    th.manual_seed(seed)
    mean = th.nn.Parameter(0.1 * th.randn(2))
    log_std = th.nn.Parameter(th.zeros(2))
    optimizer = th.optim.Adam([mean, log_std], lr=1e-2)
    for _ in range(steps):
        noise = th.randn(batch, 2)
        pre = mean + log_std.exp() * noise
        action = th.tanh(pre)
        # log pi(a) of the squashed Gaussian
        log_pi = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1) - th.log(1 - action**2 + 1e-6).sum(-1)
        loss = (log_pi - ring_log_density(action)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mean.detach().numpy(), log_std.detach().exp().numpy()


def mode_shares(samples: np.ndarray, radius: float = 3 * RING_STD) -> np.ndarray:
    """Share of samples within ``radius`` of each mode (the last entry: near none)."""
    distances = np.linalg.norm(samples[:, None, :] - ring_centres()[None], axis=-1)
    index = np.where(distances.min(axis=1) < radius, distances.argmin(axis=1), RING_MODES)
    return np.bincount(index, minlength=RING_MODES + 1) / len(samples)


def figure_score_matching(out: Path, steps: int, seed: int, n_samples: int = 2000) -> list[dict[str, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = time.process_time()
    model, _ = fit_score_matching(steps, seed)
    cpu_diffusion = time.process_time() - start
    th.manual_seed(seed + 1)
    with th.no_grad():
        diffusion = model.actor.sample(th.zeros(1, 1), n_samples)[0].numpy()
    start = time.process_time()
    mean, std = fit_gaussian(3000, seed)
    cpu_gaussian = time.process_time() - start
    rng = np.random.default_rng(seed)
    gaussian = np.tanh(mean + std * rng.standard_normal((n_samples, 2)))
    target = ring_samples(n_samples, rng)

    rows, summary = [], []
    for name, samples in (("target", target), ("diffusion_rssm", diffusion), ("gaussian_reverse_kl", gaussian)):
        for x, y in samples:
            rows.append({"source": name, "x": round(float(x), 4), "y": round(float(y), 4)})
        shares = mode_shares(samples)
        with th.no_grad():
            log_p = ring_log_density(th.as_tensor(samples, dtype=th.float32))
        summary.append(
            {
                "source": name,
                "modes_with_5pct": int(np.sum(shares[:RING_MODES] >= 0.05)),
                **{f"share_mode{i}": round(float(s), 4) for i, s in enumerate(shares[:RING_MODES])},
                "share_none": round(float(shares[RING_MODES]), 4),
                "mean_log_p": round(float(log_p.mean()), 3),
                "cpu_s": {
                    "target": 0.0,
                    "diffusion_rssm": round(cpu_diffusion, 1),
                    "gaussian_reverse_kl": round(cpu_gaussian, 1),
                }[name],
                "steps": {"target": 0, "diffusion_rssm": steps, "gaussian_reverse_kl": 3000}[name],
            }
        )
    write_csv(out / "toy_score_matching_samples.csv", rows)
    write_csv(out / "toy_score_matching_summary.csv", summary)
    print(summary, flush=True)

    grid = np.linspace(-1, 1, 161)
    xx, yy = np.meshgrid(grid, grid)
    with th.no_grad():
        density = ring_log_density(th.as_tensor(np.stack([xx, yy], -1), dtype=th.float32)).exp().numpy()
    panels = (
        ("target density (8 modes, weights 2:1)", target),
        (f"diffusion policy, reverse-sampling\nscore matching ({steps} steps)", diffusion),
        ("Gaussian (tanh), SAC's objective\nKL(pi || p)", gaussian),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 4.4), constrained_layout=True)
    for ax, (title, samples) in zip(axes, panels, strict=True):
        ax.contour(xx, yy, density, levels=6, colors="0.6", linewidths=0.7)
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="tab:orange" if samples is not target else "tab:blue")
        ax.set_title(title, fontsize=11)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
    fig.savefig(out / "toy_score_matching.png", dpi=80)
    plt.close(fig)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/figures", type=Path)
    parser.add_argument("--only", choices=["bandit", "score"], default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="bandit seeds (the first is drawn)")
    parser.add_argument("--bandit-steps", type=int, default=BANDIT_STEPS)
    parser.add_argument("--score-steps", type=int, default=10000)
    args = parser.parse_args()
    th.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    if args.only in (None, "bandit"):
        figure_bandit(args.out, args.seeds, args.bandit_steps)
    if args.only in (None, "score"):
        figure_score_matching(args.out, args.score_steps, args.seeds[0])
    print(f"done in {time.time() - start:.0f} s wall")


if __name__ == "__main__":
    main()
