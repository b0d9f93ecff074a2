"""
Where bf16 touches the algorithm, measured on a trained model: each quantity that the bf16 fast
paths compute (``policy_kwargs=dict(precision="bf16")``, docs/precision.md) is computed twice on the
same states, in fp32 and in bf16 **with the same chain noise**, and the difference is set beside the
difference that the algorithm's own randomness makes (fp32 again with **fresh noise**). A bf16
difference far below the fresh-noise one is a perturbation the algorithm already absorbs every
update; one of the same size or larger is where precision could matter.

States come from the model's replay buffer (``--buffer``) or, without one, from ``--rollout-steps``
steps of its own behaviour policy in ``--env``. Quantities (B states of a batch, K candidates):

- ``chain``: the behaviour chain's K_b samples (RMS difference per action coordinate);
- ``scoring``: ``min(Q1, Q2)`` of the same K_b fp32 candidates, against the spread of Q over the
  candidates of a state (what the argmax must resolve); no noise is involved, so no fresh column;
- ``behaviour``: the best-of-K_b action (before exploration noise): the fraction of states whose
  choice changes, and its fp32 Q against the reference choice's (the regret, mean absolute);
- ``td_target``: ``r + gamma (1 - done) min Q_target(s', a')`` with ``a'`` the target's best-of-K_t
  (chosen in bf16; its Q is computed in fp32, as in training), against the critics' TD error on the
  same batch;
- QVPO ``actor_target``: the best of N_d samples and its weight ``w(s)`` (``qadv``: max Q - mean Q):
  changed choices, and ``|w - w_ref| / mean w_ref``;
- ``signed`` rows: the mean of the same change with its sign, for the systematic part (a bias
  accumulates over updates where noise averages out; fresh noise has none);
- SDAC ``actor_target``: the softmax-weighted mean noise of the reverse samples that the score
  matching regresses on (same ``a_t``, ``t`` and reverse samples; fresh: new reverse samples), RMS.

    python benchmarks/precision_audit.py --algo qvpo --model logs/qvpo/Hopper-v5_1/rl_model_100000_steps.zip \\
        --buffer logs/qvpo/Hopper-v5_1/rl_model_replay_buffer_100000_steps.pkl
    python benchmarks/precision_audit.py --algo sdac --model sdac_ip.zip --env InvertedPendulum-v5

It needs hardware bf16 (AVX512-BF16 or AMX, or CUDA); elsewhere the bf16 column would be fp32 and the
script stops. One thread by default (``--threads``). ``--bf16-parts chains`` (or ``scoring``) runs only
that part in bf16 in the bf16 column, to find which part a difference comes from.
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from sb3_diffusion import QVPO, SDAC
from sb3_diffusion.common.hot_path import HotPath
from sb3_diffusion.common.kernels import fast_bf16_available
from sb3_diffusion.common.networks import min_q

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_small_path import cpu_model

ALGOS = {"sdac": SDAC, "qvpo": QVPO}


def rollout_states(model: Any, env_id: str, steps: int, seed: int) -> dict[str, th.Tensor]:
    """Transitions of the model's behaviour policy (exploration included), as replay-buffer tensors."""
    import gymnasium as gym

    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list[np.ndarray]] = {key: [] for key in ("obs", "actions", "rewards", "next_obs", "dones")}
    for _ in range(steps):
        action, _ = model.predict(obs, deterministic=False)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, model.policy.scale_action(action), reward, next_obs, terminated), strict=True):
            rows[key].append(np.asarray(value, dtype=np.float32))
        obs = env.reset()[0] if terminated or truncated else next_obs
    return {key: th.as_tensor(np.stack(values)) for key, values in rows.items()}


def buffer_states(path: Path, model: Any) -> dict[str, th.Tensor]:
    model.load_replay_buffer(str(path))
    buffer = model.replay_buffer
    size = buffer.buffer_size if buffer.full else buffer.pos
    env_index = 0  # the first environment's transitions

    def column(array: np.ndarray) -> th.Tensor:
        return th.as_tensor(np.asarray(array[:size, env_index], dtype=np.float32))

    return {
        "obs": column(buffer.observations),
        "actions": column(buffer.actions),
        "rewards": column(buffer.rewards),
        "next_obs": column(buffer.next_observations),
        "dones": column(buffer.dones * (1 - buffer.timeouts)),
    }


class Audit:
    """The quantities of one batch in fp32 (reference), bf16 (same noise) and fp32 (fresh noise)."""

    def __init__(self, model: Any, compile_mode: str, parts: tuple[str, ...] = ("chains", "scoring")):
        self.model, self.policy = model, model.policy
        paths = {precision: HotPath(compile_mode, precision) for precision in ("fp32", "bf16")}
        # the bf16 column runs in bf16 only the parts asked for (the others in fp32)
        self.chain_paths = {"fp32": paths["fp32"], "bf16": paths["bf16" if "chains" in parts else "fp32"]}
        self.score_paths = {"fp32": paths["fp32"], "bf16": paths["bf16" if "scoring" in parts else "fp32"]}
        self.totals: dict[str, dict[str, list[float]]] = {}

    def add(self, quantity: str, column: str, value: float) -> None:
        self.totals.setdefault(quantity, {}).setdefault(column, []).append(value)

    def best_of_k(
        self, precision: str, actor: Any, critic: Any, obs: th.Tensor, noise: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor]:
        candidates = self.chain_paths[precision].sample(actor, obs, noise.shape[2], noise)
        q_values = self.score_paths[precision].min_q(critic, obs, candidates)
        best = q_values.argmax(dim=1)
        return candidates, best

    @staticmethod
    def pick(candidates: th.Tensor, index: th.Tensor) -> th.Tensor:
        return candidates[th.arange(candidates.shape[0]), index]

    def compare(self, quantity: str, compute: Callable[[str, bool], th.Tensor], scale: float) -> None:
        """RMS differences of ``compute(precision, fresh)`` from the fp32 reference, over ``scale``."""
        reference = compute("fp32", False)
        bf16 = compute("bf16", False)
        fresh = compute("fp32", True)
        self.add(quantity, "bf16", float((bf16 - reference).square().mean().sqrt()) / scale)
        self.add(quantity, "fresh", float((fresh - reference).square().mean().sqrt()) / scale)

    def batch(self, data: dict[str, th.Tensor], seed: int) -> None:
        policy, model = self.policy, self.model
        obs, next_obs = data["obs"], data["next_obs"]
        actor, critic = policy.acting_actor, policy.critic
        batch_size = obs.shape[0]
        k_b = policy.n_behavior_candidates
        th.manual_seed(seed)
        noise, fresh_noise = (actor.draw_chain_noise(batch_size, k_b) for _ in range(2))

        # the behaviour chain and the scoring of its candidates
        ref_candidates, ref_best = self.best_of_k("fp32", actor, critic, obs, noise)
        bf16_candidates, bf16_best = self.best_of_k("bf16", actor, critic, obs, noise)
        fresh_candidates, fresh_best = self.best_of_k("fp32", actor, critic, obs, fresh_noise)
        spread = float(ref_candidates.std(dim=1).mean())
        self.add("chain", "bf16", float((bf16_candidates - ref_candidates).square().mean().sqrt()) / spread)
        self.add("chain", "fresh", float((fresh_candidates - ref_candidates).square().mean().sqrt()) / spread)
        q_ref = self.score_paths["fp32"].min_q(critic, obs, ref_candidates)
        q_bf16 = self.score_paths["bf16"].min_q(critic, obs, ref_candidates)
        q_spread = float(q_ref.std(dim=1).mean())
        self.add("scoring", "bf16", float((q_bf16 - q_ref).abs().mean()) / q_spread)
        if k_b > 1:
            chosen = {name: self.pick(c, i) for name, c, i in (("ref", ref_candidates, ref_best),
                      ("bf16", bf16_candidates, bf16_best), ("fresh", fresh_candidates, fresh_best))}  # fmt: skip
            q_chosen = {name: self.score_paths["fp32"].min_q(critic, obs, a[:, None])[:, 0] for name, a in chosen.items()}
            self.add("behaviour: choice changed", "bf16", float((bf16_best != ref_best).float().mean()))
            for name in ("bf16", "fresh"):
                change = (q_chosen[name] - q_chosen["ref"]) / q_spread
                self.add("behaviour: |Q regret|", name, float(change.abs().mean()))
                self.add("behaviour: Q regret, signed", name, float(change.mean()))

        # the TD target
        with th.no_grad():
            q_data = th.min(*critic(obs, data["actions"]))[:, 0]
        td_noise = {}

        def td_target(precision: str, fresh: bool) -> th.Tensor:
            key = "fresh" if fresh else "ref"
            if key not in td_noise:
                td_noise[key] = model.actor_target.draw_chain_noise(batch_size, self.n_target)
            candidates, best = self.best_of_k(precision, self.target_actor, model.critic_target, next_obs, td_noise[key])
            next_actions = self.pick(candidates, best)
            # the algorithms evaluate the chosen action with the plain fp32 min_q: only the choice is bf16
            next_q = min_q(model.critic_target, next_obs, next_actions)
            reward_scale = getattr(model, "reward_scale", 1.0)  # SDAC's
            return reward_scale * data["rewards"] + (1 - data["dones"]) * model.gamma * next_q

        reference = td_target("fp32", False)
        td_error = float((reference - q_data).square().mean().sqrt())
        for name, change in (("bf16", td_target("bf16", False) - reference), ("fresh", td_target("fp32", True) - reference)):
            self.add("td_target (over the TD error)", name, float(change.abs().mean()) / td_error)
            self.add("td_target, signed (over the TD error)", name, float(change.mean()) / td_error)
        self.actor_target(obs)

    # algorithm-specific: the targets of the actor's loss
    n_target = 1
    target_actor: Any = None

    def actor_target(self, obs: th.Tensor) -> None:
        raise NotImplementedError


class QVPOAudit(Audit):
    def __init__(self, model: QVPO, compile_mode: str, parts: tuple[str, ...]):
        super().__init__(model, compile_mode, parts)
        self.n_target, self.target_actor = model.n_target_candidates, model.actor_target

    def actor_target(self, obs: th.Tensor) -> None:
        model = self.model
        noises = [model.actor.draw_chain_noise(obs.shape[0], model.n_policy_samples) for _ in range(2)]
        results = {}
        for name, precision, noise in (("ref", "fp32", noises[0]), ("bf16", "bf16", noises[0]), ("fresh", "fp32", noises[1])):
            samples = self.chain_paths[precision].sample(model.actor, obs, noise.shape[2], noise)
            q_values = self.score_paths[precision].min_q(model.critic, obs, samples)
            results[name] = model.policy_weights(q_values)
        ref_weights, ref_best = results["ref"]
        mean_weight = float(ref_weights.mean())
        self.add("actor: best sample changed", "bf16", float((results["bf16"][1] != ref_best).float().mean()))
        for name in ("bf16", "fresh"):
            change = (results[name][0] - ref_weights) / mean_weight
            self.add("actor: |w - w_ref| / mean w", name, float(change.abs().mean()))
            self.add("actor: (w - w_ref) / mean w, signed", name, float(change.mean()))


class SDACAudit(Audit):
    def __init__(self, model: SDAC, compile_mode: str, parts: tuple[str, ...]):
        super().__init__(model, compile_mode, parts)
        n_target = model.n_candidates if model.n_target_candidates is None else model.n_target_candidates
        self.n_target, self.target_actor = n_target, model.actor

    def actor_target(self, obs: th.Tensor) -> None:
        model, schedule = self.model, self.model.actor.schedule
        noise = model.actor.draw_chain_noise(obs.shape[0], model.n_candidates)
        candidates, best = self.best_of_k("fp32", model.actor, model.critic, obs, noise)
        actions = self.pick(candidates, best)
        t = th.randint(schedule.n_steps, (obs.shape[0],))
        a_t = schedule.q_sample(actions, t, th.randn_like(actions))
        shape = (obs.shape[0], model.n_reverse_samples, actions.shape[1])
        eps = {"ref": th.randn(shape), "fresh": th.randn(shape)}
        lambda_ = model.lambda_

        def mean_noise(precision: str, fresh: bool) -> th.Tensor:
            e = eps["fresh" if fresh else "ref"]
            a_0 = schedule.predict_x0(a_t[:, None, :], t, e).clamp_(-1.0, 1.0)
            q_values = self.score_paths[precision].min_q(model.critic, obs, a_0)
            if model.q_normalization:
                q_values = q_values / max(model.q_spread, 1e-8)
            weights = th.softmax(q_values * (model.q_weight_scale / lambda_), dim=1)
            return (weights[:, :, None] * e).sum(dim=1)

        self.compare("actor: weighted mean noise (RMS)", mean_noise, 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", required=True, choices=sorted(ALGOS))
    parser.add_argument("--model", type=Path, required=True, help="a saved model (.zip)")
    parser.add_argument("--buffer", type=Path, help="its replay buffer (.pkl); without one, --env rollouts")
    parser.add_argument("--env", help="environment id for rollouts (when there is no --buffer)")
    parser.add_argument("--rollout-steps", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile-mode", default="auto", choices=["auto", "on", "off"])
    parser.add_argument(
        "--bf16-parts",
        nargs="+",
        default=["chains", "scoring"],
        choices=["chains", "scoring"],
        help="what the bf16 column runs in bf16 (the rest in fp32): which part a difference comes from",
    )
    parser.add_argument("--out", type=Path, help="CSV of the table")
    args = parser.parse_args(argv)
    if args.buffer is None and args.env is None:
        parser.error("give --buffer, or --env for rollouts of the model's policy")
    if not fast_bf16_available(th.device("cpu")):
        raise SystemExit("this CPU has no hardware bf16 (AVX512-BF16 or AMX): the bf16 column would be fp32")
    th.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    model = ALGOS[args.algo].load(args.model, device="cpu")
    model.policy.set_training_mode(False)
    data = buffer_states(args.buffer, model) if args.buffer else rollout_states(model, args.env, args.rollout_steps, args.seed)
    audit = (QVPOAudit if args.algo == "qvpo" else SDACAudit)(model, args.compile_mode, tuple(args.bf16_parts))
    generator = np.random.default_rng(args.seed)
    n = data["obs"].shape[0]
    for index in range(args.batches):
        rows = th.as_tensor(generator.choice(n, size=min(args.batch_size, n), replace=False))
        with th.no_grad():
            audit.batch({key: value[rows] for key, value in data.items()}, seed=args.seed * 1000 + index)
    print(f"{args.algo} {args.model.name}: {args.batches} batches of {args.batch_size} states from "
          f"{'its replay buffer' if args.buffer else f'{args.rollout_steps} rollout steps'}; "
          f"bf16 parts: {' and '.join(args.bf16_parts)}; CPU: {cpu_model()}")  # fmt: skip
    print("| quantity | bf16, same noise | fp32, fresh noise | bf16 / fresh |\n|---|---|---|---|")
    table = []
    for quantity, columns in audit.totals.items():
        bf16 = float(np.mean(columns["bf16"]))
        fresh = float(np.mean(columns["fresh"])) if "fresh" in columns else float("nan")
        ratio = bf16 / fresh if "fresh" in columns and fresh > 0 else float("nan")
        table.append(dict(quantity=quantity, bf16=bf16, fresh=fresh, ratio=ratio))
        fresh_cell = "-" if np.isnan(fresh) else f"{fresh:.3g}"
        ratio_cell = "-" if np.isnan(ratio) else f"{ratio:.3g}"
        print(f"| {quantity} | {bf16:.3g} | {fresh_cell} | {ratio_cell} |")
    if args.out:
        with open(args.out, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)


if __name__ == "__main__":
    main()
