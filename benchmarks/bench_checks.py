"""
What the long-run checks cost: non-finite transitions, losses and gradients (sb3_diffusion.common.safety).

For each algorithm, at the official settings on Hopper-v5 shapes and at the Pendulum-v1 quick-start
config (updates about a hundred times cheaper, where a fixed cost would show most):

- the checks' own cost, timed directly on the model's real tensors: one loss check (``isfinite`` of a
  scalar and one sync), one gradient check (the optimizer pre-step hook over all the gradients of that
  optimizer), one transition check (rewards, observations and next observations of all environments);
- how many of each one update does (counted during real updates), so the checks' cost per update and
  its fraction of the update time;
- the update time with the checks and without them (the loss check and the hooks switched off),
  interleaved blocks of updates, median process CPU milliseconds, with the spread of the blocks: the
  difference is expected to stay inside that spread.

Usage::

    python benchmarks/bench_checks.py                       # 1 thread, Hopper-v5 and the Pendulum config
    python benchmarks/bench_checks.py --threads 2 --repeats 10 --quick-repeats 400
"""

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_updates import fill_buffer, make_model


def quick_model(algo: str) -> Any:
    """The shipped RL Zoo Pendulum-v1 config of ``algo`` (quick start), learning from step 0."""
    import yaml
    from stable_baselines3.common.logger import configure

    from sb3_diffusion import QVPO, SDAC
    from sb3_diffusion.zoo import config_path

    with open(config_path(algo)) as file:
        entry = dict(yaml.safe_load(file)["Pendulum-v1"])
    for key in ("n_timesteps", "policy", "n_envs", "normalize"):
        entry.pop(key, None)
    entry.update(learning_starts=0, buffer_size=20_000, device="cpu", seed=0)
    model = {"sdac": SDAC, "qvpo": QVPO}[algo]("MlpPolicy", "Pendulum-v1", **entry)
    model.set_logger(configure(folder=None, format_strings=[]))
    return model


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e6 * (time.perf_counter() - start) / calls


class Switch:
    """Turns the loss check and the gradient hooks off and on again."""

    def __init__(self, model: Any):
        from sb3_diffusion.common import safety

        model._install_gradient_checks()  # done by learn(); the benchmark calls train() directly
        self.safety, self.check_loss = safety, safety.check_loss
        self.optimizers = self._optimizers(model)
        self.hooks = [dict(o._optimizer_step_pre_hooks) for o in self.optimizers]

    @staticmethod
    def _optimizers(model: Any) -> list:
        import torch as th
        from stable_baselines3.common.save_util import recursive_getattr

        names = model._get_torch_save_params()[0]
        return [o for o in (recursive_getattr(model, name) for name in names) if isinstance(o, th.optim.Optimizer)]

    def set(self, on: bool) -> None:
        self.safety.check_loss = self.check_loss if on else (lambda *args, **kwargs: None)
        for optimizer, hooks in zip(self.optimizers, self.hooks, strict=True):
            optimizer._optimizer_step_pre_hooks.clear()
            if on:
                optimizer._optimizer_step_pre_hooks.update(hooks)


def count_checks(model: Any, switch: Switch, updates: int) -> tuple[float, float]:
    """(loss checks, gradient checks) per update, counted over ``updates`` real updates."""
    counts = {"loss": 0, "gradient": 0}

    def loss(*args: Any, **kwargs: Any) -> None:
        counts["loss"] += 1
        switch.check_loss(*args, **kwargs)

    def gradient(optimizer: Any, args: Any, kwargs: Any) -> None:
        counts["gradient"] += 1

    switch.set(True)
    switch.safety.check_loss = loss
    handles = [optimizer.register_step_pre_hook(gradient) for optimizer in switch.optimizers]
    model.train(gradient_steps=updates, batch_size=model.batch_size)
    for handle in handles:
        handle.remove()
    switch.set(True)
    return counts["loss"] / updates, counts["gradient"] / updates


def measure(label: str, model: Any, repeats: int, block: int, n_envs: int) -> dict[str, Any]:
    import torch as th

    from sb3_diffusion.common import safety

    fill_buffer(model, 10_000, np.random.default_rng(0))
    switch = Switch(model)
    model.train(gradient_steps=2 * block, batch_size=model.batch_size)  # warm-up, compilation
    losses, gradients = count_checks(model, switch, 2 * max(block, 2))

    # Direct costs, on real tensors: a scalar loss, the gradients of the last update
    loss = th.tensor(0.5, device=model.device)
    loss_us = per_call_us(lambda: safety.check_loss("critic loss", loss, 1, 1), 20_000)
    gradient_us = []
    for optimizer, hooks in zip(switch.optimizers, switch.hooks, strict=True):
        if any(p.grad is not None for group in optimizer.param_groups for p in group["params"]):
            for hook in hooks.values():
                gradient_us.append(per_call_us(lambda h=hook, o=optimizer: h(o, (), {}), 2_000))
    gradient_mean_us = statistics.mean(gradient_us)
    obs_shape = model.observation_space.shape
    rng = np.random.default_rng(1)
    next_obs = rng.standard_normal((n_envs, *obs_shape)).astype(np.float32)
    rewards, dones = rng.standard_normal(n_envs).astype(np.float32), np.zeros(n_envs, dtype=bool)
    infos = [{} for _ in range(n_envs)]
    # After the first step of a learn() call the observations an action was chosen at are not checked again
    transition_us = per_call_us(lambda: safety.check_transition(None, next_obs, rewards, dones, infos, 1, 1, None), 20_000)

    # Update time (process CPU time: steadier than wall time on a shared machine), checks on and off,
    # interleaved blocks in alternating order; the spread is the half interquartile range of the blocks
    times: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(repeats):
        for on in (True, False) if repeat % 2 == 0 else (False, True):
            switch.set(on)
            start = time.process_time()
            model.train(gradient_steps=block, batch_size=model.batch_size)
            times[on].append((time.process_time() - start) / block)
    switch.set(True)
    on_ms, off_ms = (1e3 * statistics.median(times[on]) for on in (True, False))
    quartiles = statistics.quantiles(times[False], n=4) if repeats >= 2 else [0.0, 0.0, 0.0]
    spread = 0.5 * (quartiles[2] - quartiles[0]) / statistics.median(times[False])
    # Adjacent blocks paired: their ratio cancels the slow drifts of a shared machine's load
    paired = statistics.median(on / off for on, off in zip(times[True], times[False], strict=True)) - 1.0
    checks_us = losses * loss_us + gradients * gradient_mean_us
    return dict(
        label=label,
        parameters=sum(p.numel() for p in model.policy.parameters()),
        loss_us=loss_us,
        gradient_us=gradient_mean_us,
        transition_us=transition_us,
        n_envs=n_envs,
        losses=losses,
        gradients=gradients,
        checks_us=checks_us,
        on_ms=on_ms,
        off_ms=off_ms,
        fraction=checks_us / (1e3 * off_ms),
        spread=spread,
        paired=paired,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algos", nargs="+", default=["sdac", "qvpo"], choices=["sdac", "qvpo"])
    parser.add_argument("--repeats", type=int, default=6, help="blocks of updates per arm, official settings")
    parser.add_argument("--quick-repeats", type=int, default=40, help="blocks of updates per arm, Pendulum config")
    parser.add_argument("--no-official", action="store_true", help="only the Pendulum quick-start config")
    args = parser.parse_args()
    import torch as th

    th.set_num_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"torch {th.__version__}, {args.threads} thread(s), {machine}, load {os.getloadavg()}")
    rows = []
    for algo in args.algos:
        if not args.no_official:
            n_envs = 5 if algo == "sdac" else 1  # the official configs
            rows.append(
                measure(f"{algo.upper()} official, Hopper-v5", make_model(algo, "Hopper-v5", "cpu"), args.repeats, 2, n_envs)
            )
        rows.append(measure(f"{algo.upper()} Pendulum-v1 quick start", quick_model(algo), args.quick_repeats, 10, 1))
    print(f"load after: {os.getloadavg()}")
    header = (
        "| config | parameters | loss check (us) | gradient check (us / optimizer step) | checks per update (loss, grad) "
        "| checks (us / update) | update, checks on (CPU ms) | checks off (CPU ms) +- half IQR "
        "| on / off - 1, paired blocks (median) | checks / update time "
        "| transition check (us / env step, n_envs) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        print(
            f"| {row['label']} | {row['parameters']:,} | {row['loss_us']:.1f} | {row['gradient_us']:.1f} "
            f"| {row['losses']:.2f}, {row['gradients']:.2f} | {row['checks_us']:.0f} | {row['on_ms']:.1f} "
            f"| {row['off_ms']:.1f} +- {100 * row['spread']:.1f}% | {100 * row['paired']:+.1f}% "
            f"| {100 * row['fraction']:.3f}% "
            f"| {row['transition_us']:.1f} ({row['n_envs']}) |"
        )


if __name__ == "__main__":
    main()
