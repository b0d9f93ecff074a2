"""
Update and action speed of the diffusion algorithms beside SB3's SAC, against the hardware floor.

One run prints, for each environment's shapes (default Hopper-v5 and Humanoid-v5) and each
algorithm at its official settings:

- milliseconds per update: the median over ``--repeats`` updates after warm-up, per kind of update
  (SDAC alternates an actor-step update and a critic-only update, ``policy_delay=2``); "per update" is
  the mean over one policy-delay cycle, "actor step" is the heavier update alone;
- matmul FLOPs and activation (Mish) elements per update, counted on the real code (a dispatch mode
  sees every matmul and every exp/mish), with SDAC's analytic count beside it as a check;
- the matmul rate (16384x256 @ 256x256) and the best exact Mish rate, both measured in the same run,
  in fp32 and in bf16 (``--precisions``);
- the floor (FLOPs / matmul rate + activation elements / activation rate, each FLOP and element at
  the rate of its own dtype: a ``precision="bf16"`` update runs its sampling chains and scoring in
  bf16 and its gradient steps in fp32), the time over the floor, and the fraction of the matmul peak
  the update reaches (FLOPs / time / matmul rate);
- every algorithm in each precision of ``--precisions`` (default fp32 and bf16), timed in the same
  process one after the other, with the bf16 speed-up over fp32;
- milliseconds per action for one observation (the behaviour policy: best-of-32 for SDAC, best-of-4
  for QVPO, and the deterministic best-of-32) and rollout env steps per second (env step + action);
- all of it for each ``--threads`` count (one subprocess per count) and the speed-up between them;
- on CUDA, the projected wall time of a 1M-step SDAC Hopper run (200k updates, 5 envs);
- with ``--flowrl-src``, then the comparison with FlowRL at its own settings (``bench_flowrl.py``, which
  needs FlowRL's separate environment; see its docstring).

The replay buffer is filled with random transitions of the right shapes (the update's cost does not
depend on the data). The machine may be shared: the load average is printed, and every update is
paired with a matmul probe run just before it, so the "paired" ratio stays meaningful under load.

Usage::

    python benchmarks/bench_updates.py                       # 1 and 2 threads, Hopper and Humanoid
    python benchmarks/bench_updates.py --threads 1 --envs Hopper-v5 --algos sdac sac --repeats 5
    python benchmarks/bench_updates.py --device cuda --threads 8
    python benchmarks/bench_updates.py --threads 1 --algos sdac qvpo --precisions fp32 bf16
    python benchmarks/bench_updates.py --threads 1 --envs Hopper-v5 --flowrl-src /path/to/flowrl/v0.2.0   # + FlowRL
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_ENVS = ["Hopper-v5", "Humanoid-v5"]
DEFAULT_ALGOS = ["sdac", "qvpo", "sac"]
PRECISIONS = ["fp32", "bf16", "bf16_chains"]  # policy_kwargs precision; the default runs the first two
MATMUL_SHAPE = (16384, 256, 256)
# SDAC's official run: 1M env steps with 5 envs = 200k updates and 200k vector steps, after 30k warm-up steps
SDAC_RUN = dict(updates=200_000, vector_steps=200_000, n_envs=5, warmup_steps=30_000)


# --------------------------------------------------------------------------------------------------
# Worker: one thread count, everything measured in one process
# --------------------------------------------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch as th

    if device.type == "cuda":
        th.cuda.synchronize(device)


def _dtype(precision: str) -> Any:
    import torch as th

    return {"fp32": th.float32, "bf16": th.bfloat16}[precision]


def _timed(fn: Callable[[], Any], device: Any) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


class Probes:
    """The matmul and activation rates of this process, in each precision, measured on demand."""

    def __init__(self, device: Any, precisions: list[str]):
        import torch as th

        self.device = device
        self.precisions = precisions
        m, k, n = MATMUL_SHAPE
        generator = th.Generator().manual_seed(0)
        a = th.randn(m, k, generator=generator).to(device)
        w = th.randn(k, n, generator=generator).to(device)
        self.flops = 2.0 * m * k * n
        self.inputs: dict[str, th.Tensor] = {}
        # the best matmul torch offers for this shape in each dtype: torch.mm (MKL on CPU for fp32) and,
        # on CPU, oneDNN's linear (what the fast paths use for large chunks)
        self.implementations: dict[str, dict[str, Callable[[], Any]]] = {}
        onednn = getattr(th.ops.mkldnn, "_linear_pointwise", None) if th.backends.mkldnn.is_available() else None
        for precision in precisions:
            dtype = _dtype(precision)
            a_p, w_p = a.to(dtype), w.to(dtype)
            w_t = w_p.t().contiguous()  # (n, k): the nn.Linear layout
            out = th.empty(m, n, device=device, dtype=dtype)
            self.inputs[precision] = a_p
            found = {"torch.mm": lambda a_p=a_p, w_p=w_p, out=out: th.mm(a_p, w_p, out=out)}
            if device.type == "cpu" and onednn is not None:
                found["oneDNN linear"] = lambda a_p=a_p, w_t=w_t: onednn(a_p, w_t, None, "none", [], "")
            self.implementations[precision] = found
        self.rates: dict[str, list[float]] = {p: [] for p in precisions}  # best matmul FLOP/s (wall time) of every probe
        self.cpu_rates: dict[str, list[float]] = {p: [] for p in precisions}  # the same in process CPU time
        self.by_implementation: dict[str, list[float]] = {
            f"{p} {name}": [] for p, found in self.implementations.items() for name in found
        }

    def matmul(self, calls: int = 2) -> dict[str, float]:
        """Best matmul rate (FLOP/s, wall time) per precision over the implementations and ``calls`` calls."""
        result = {}
        for precision, found in self.implementations.items():
            best_wall, best_cpu = float("inf"), float("inf")
            for name, fn in found.items():
                timings = [_timed(fn, self.device) for _ in range(calls)]
                wall = min(w for w, _ in timings)
                self.by_implementation[f"{precision} {name}"].append(self.flops / wall)
                best_wall, best_cpu = min(best_wall, wall), min(best_cpu, min(max(c, 1e-9) for _, c in timings))
            self.rates[precision].append(self.flops / best_wall)
            self.cpu_rates[precision].append(self.flops / best_cpu)
            result[precision] = self.flops / best_wall
        return result

    def activations(self, repeats: int = 7) -> dict[str, dict[str, float]]:
        """Elements per second of the exact Mish implementations on a 16384x256 tensor, per precision."""
        return {precision: self._activations(self.inputs[precision], repeats) for precision in self.precisions}

    def _activations(self, source: Any, repeats: int) -> dict[str, float]:
        import torch as th
        from torch.nn import functional as F

        from sb3_diffusion.common import kernels
        from sb3_diffusion.common.networks import mish

        x = source.clone()
        bias = th.zeros(x.shape[1], device=self.device, dtype=x.dtype)
        scratch = (th.empty_like(x), th.empty_like(x))
        candidates: dict[str, Callable[[], Any]] = {
            "torch F.mish": lambda: F.mish(x),
            "one-exp in place (eager)": lambda: mish(x.copy_(source), out=x, scratch=scratch),
        }
        compiling = kernels.resolve_compile_mode("auto") != "off" and kernels.compiled_kernels_available()
        if self.device.type == "cpu" and compiling:
            candidates["one-exp fused bias+Mish (compiled)"] = lambda: kernels.COMPILED("bias_mish", x.copy_(source), bias)
        copy_time = statistics.median(_timed(lambda: x.copy_(source), self.device)[0] for _ in range(repeats))
        rates = {}
        with th.inference_mode():
            for name, fn in candidates.items():
                try:
                    fn()
                    seconds = statistics.median(_timed(fn, self.device)[0] for _ in range(repeats))
                except Exception as error:  # a failed compile leaves the eager ones
                    print(f"  {name}: unavailable ({error})", file=sys.stderr)
                    continue
                if "in place" in name or "compiled" in name:
                    seconds = max(seconds - copy_time, 1e-9)  # the refill copy is not part of the activation
                rates[name] = x.numel() / seconds
        return rates


def op_counter() -> Any:
    """
    A dispatch mode that counts matmul FLOPs and activation (exp/mish) elements, and the parts of them
    computed in bf16: it sees every matmul (oneDNN's linear included) and every exp/mish.
    """
    import torch as th
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = th.ops.aten
    matmuls = {aten.mm, aten.addmm, aten.addmm_, aten.bmm, aten.baddbmm, aten.baddbmm_}
    onednn_linear = getattr(th.ops.mkldnn, "_linear_pointwise", None)  # X (m, k), W (n, k)
    activations = {aten.exp, aten.exp_, aten.mish, aten.mish_}

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.flops = 0.0
            self.activations = 0.0
            self.flops_bf16 = 0.0  # the part of them computed in bf16
            self.activations_bf16 = 0.0
            self.backward_activations = 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            packet = func.overloadpacket
            if packet in matmuls:
                a, b = (args[0], args[1]) if packet in (aten.mm, aten.bmm) else (args[1], args[2])
                flops = 2.0 * a.numel() * b.shape[-1]
                self.flops += flops
                self.flops_bf16 += flops if a.dtype == th.bfloat16 else 0.0
            elif onednn_linear is not None and packet == onednn_linear:
                x, weight = args[0], (args[2] if func == onednn_linear.binary else args[1])
                flops = 2.0 * x.numel() * weight.shape[0]
                self.flops += flops
                self.flops_bf16 += flops if x.dtype == th.bfloat16 else 0.0
            elif packet in activations:
                self.activations += args[0].numel()
                self.activations_bf16 += args[0].numel() if args[0].dtype == th.bfloat16 else 0.0
            elif packet == aten.mish_backward:
                self.backward_activations += args[0].numel()
            return func(*args, **kwargs)

    return Counter()


def count_update(model: Any, updates: int) -> dict[str, float]:
    """Matmul FLOPs and activation elements of ``updates`` updates, counted on the eager code path."""
    previous = os.environ.get("SB3_DIFFUSION_COMPILE")
    os.environ["SB3_DIFFUSION_COMPILE"] = "off"  # the eager kernels do the same matmuls, and are visible
    try:
        with op_counter() as counter:
            model.train(gradient_steps=updates, batch_size=model.batch_size)
    finally:
        if previous is None:
            del os.environ["SB3_DIFFUSION_COMPILE"]
        else:
            os.environ["SB3_DIFFUSION_COMPILE"] = previous
    return dict(
        flops=counter.flops / updates,
        activations=counter.activations / updates,
        flops_bf16=counter.flops_bf16 / updates,
        activations_bf16=counter.activations_bf16 / updates,
        backward_activations=counter.backward_activations / updates,
    )


class _Shapes:
    """Multiply-accumulate counts of the pieces of an update, from the policy's shapes."""

    def __init__(self, model: Any):
        policy = model.policy
        actor = policy.actor
        net = actor.noise_net
        self.obs_dim, self.act_dim, self.arch = actor.features_dim, actor.action_dim, actor.net_arch
        self.steps = actor.sampling_steps
        critic_arch = [layer.out_features for layer in policy.critic.q_networks[0] if hasattr(layer, "out_features")][:-1]
        n_critics = policy.n_critics
        time_dim, time_hidden = net.time_embedding.dim, net.time_mlp[0].out_features
        self.time_mlp = 2 * time_dim * time_hidden
        self.time_table = actor.diffusion_steps * (self.time_mlp + time_dim * self.arch[0])
        self.noise_row = self.act_dim * self.arch[0] + self.mlp(self.arch, self.act_dim)  # per candidate and step
        self.noise_full = (self.obs_dim + self.act_dim + time_dim) * self.arch[0] + self.mlp(self.arch, self.act_dim)
        self.noise_full += self.time_mlp  # the training forward runs the time MLP per row
        self.critic_row = n_critics * (self.act_dim * critic_arch[0] + self.mlp(critic_arch, 1))  # per candidate
        self.critic_state = n_critics * self.obs_dim * critic_arch[0]
        self.critic_full = n_critics * ((self.obs_dim + self.act_dim) * critic_arch[0] + self.mlp(critic_arch, 1))

    @staticmethod
    def mlp(widths: list[int], out: int) -> float:
        return float(sum(a * b for a, b in itertools.pairwise(widths)) + widths[-1] * out)

    def chain(self, states: int, k: int) -> float:
        """k reverse chains per state: observation block once per state, time table once."""
        return states * (self.obs_dim * self.arch[0] + k * self.steps * self.noise_row) + self.time_table

    def scoring(self, states: int, k: int) -> float:
        """The critics on k candidates per state: observation block once per state."""
        return states * (self.critic_state + k * self.critic_row)


def sdac_analytic(model: Any) -> dict[str, float]:
    """
    SDAC's matmul FLOPs per update (mean over a policy-delay cycle) from the shapes alone: the noise
    network through the reverse chains, the critics scoring the candidates (observation blocks once
    per state), the TD target and the training passes (backward = 2x forward).
    """
    shapes = _Shapes(model)
    batch, k, n_rev = model.batch_size, model.n_candidates, model.n_reverse_samples

    def best_of(states: int) -> float:
        return shapes.chain(states, k) + shapes.scoring(states, k)

    critic_train = 3 * batch * shapes.critic_full
    target = batch * shapes.critic_full
    actor_train = 3 * batch * shapes.noise_full
    actor_update = best_of(2 * batch) + shapes.scoring(batch, n_rev) + target + critic_train + actor_train
    critic_update = best_of(batch) + target + critic_train
    delay = model.policy_delay
    return dict(flops=2.0 * (actor_update + (delay - 1) * critic_update) / delay, actor_step_flops=2.0 * actor_update)


def qvpo_analytic(model: Any) -> dict[str, float]:
    """
    QVPO's matmul FLOPs per update from the shapes alone: the EMA actor's best-of-K_t TD target scored
    by the target critics, the critic step, N_d samples per state scored by the critics, and the
    actor's weighted loss on (1 + N_e) rows per state (backward = 2x forward).
    """
    shapes = _Shapes(model)
    batch, k_t, n_d = model.batch_size, model.n_target_candidates, model.n_policy_samples
    rows = batch * (1 + model.n_uniform_samples)
    update = shapes.chain(batch, k_t) + shapes.scoring(batch, k_t) + batch * shapes.critic_full
    update += 3 * batch * shapes.critic_full + shapes.chain(batch, n_d) + shapes.scoring(batch, n_d)
    update += 3 * rows * shapes.noise_full
    return dict(flops=2.0 * update, actor_step_flops=2.0 * update)


ANALYTIC = {"sdac": sdac_analytic, "qvpo": qvpo_analytic}


def fill_buffer(model: Any, n: int, rng: np.random.Generator) -> None:
    buffer = model.replay_buffer
    obs_shape, act_dim = buffer.obs_shape, buffer.action_dim
    buffer.observations[:n] = rng.standard_normal((n, 1, *obs_shape)).astype(np.float32)
    if not buffer.optimize_memory_usage:
        buffer.next_observations[:n] = rng.standard_normal((n, 1, *obs_shape)).astype(np.float32)
    buffer.actions[:n] = rng.uniform(-1, 1, (n, 1, act_dim)).astype(np.float32)
    buffer.rewards[:n] = rng.standard_normal((n, 1)).astype(np.float32)
    buffer.dones[:n] = (rng.uniform(size=(n, 1)) < 0.01).astype(np.float32)
    buffer.pos, buffer.full = n, False


def make_model(algo: str, env_id: str, device: str, precision: str = "fp32", **kwargs: Any) -> Any:
    """
    A model with a small replay buffer that learns from the first step; ``kwargs`` are further
    arguments of the algorithm (a ``policy_kwargs`` entry is merged with the precision).
    """
    import gymnasium as gym
    from stable_baselines3.common.logger import configure

    env = gym.make(env_id)
    policy_kwargs = dict(precision=precision, **kwargs.pop("policy_kwargs", {}))
    common = dict(buffer_size=20_000, learning_starts=0, device=device, seed=0, verbose=0, **kwargs)
    if algo == "sac":
        from stable_baselines3 import SAC

        model = SAC("MlpPolicy", env, **common)
    elif algo == "sdac":
        from sb3_diffusion import SDAC

        model = SDAC("MlpPolicy", env, policy_kwargs=policy_kwargs, **common)
    elif algo == "qvpo":
        from sb3_diffusion import QVPO

        model = QVPO("MlpPolicy", env, policy_kwargs=policy_kwargs, **common)
    else:
        raise ValueError(f"Unknown algorithm {algo!r}")
    model.set_logger(configure(folder=None, format_strings=[]))
    return model


def time_actions(model: Any, env_id: str, repeats: int, device: Any) -> dict[str, float]:
    """Milliseconds per action for one observation, and rollout env steps per second."""
    import gymnasium as gym

    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    result: dict[str, float] = {}
    modes = {"behaviour": False}
    if algo_name(model) != "sac":
        modes["deterministic"] = True
    for name, deterministic in modes.items():
        for _ in range(3):
            model.predict(obs, deterministic=deterministic)
        times = [_timed(lambda d=deterministic: model.predict(obs, deterministic=d), device) for _ in range(repeats)]  # type: ignore[misc]
        result[f"{name}_action_ms"] = 1e3 * statistics.median(wall for wall, _ in times)
        result[f"{name}_action_cpu_ms"] = 1e3 * statistics.median(cpu for _, cpu in times)
    # Five observations at once (SDAC's five parallel envs), for the run projection
    batch = np.stack([obs] * SDAC_RUN["n_envs"])
    model.predict(batch)
    result["action5_ms"] = 1e3 * statistics.median(_timed(lambda: model.predict(batch), device)[0] for _ in range(repeats))

    def rollout(steps: int, act: bool) -> float:
        observation, _ = env.reset(seed=1)
        start = time.perf_counter()
        for _ in range(steps):
            action = model.predict(observation)[0] if act else env.action_space.sample()
            observation, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                observation, _ = env.reset()
        return steps / (time.perf_counter() - start)

    rollout(5, True)
    result["rollout_steps_per_s"] = rollout(max(repeats * 4, 100), True)
    result["env_step_ms"] = 1e3 / rollout(1000, False)
    return result


def algo_name(model: Any) -> str:
    return type(model).__name__.lower()


def measure_algo(algo: str, env_id: str, args: argparse.Namespace, probes: Probes, precision: str = "fp32") -> dict[str, Any]:
    import torch as th

    device = th.device(args.device)
    model = make_model(algo, env_id, args.device, precision)
    fill_buffer(model, 10_000, np.random.default_rng(0))
    delay = int(getattr(model, "policy_delay", 1))
    # SAC and QVPO update every step the same way; SDAC alternates actor and critic-only updates
    counts: dict[str, dict[str, float]] = {}
    for _ in range(delay):
        kind = next_kind(model, delay)  # before the update (the right side of an assignment runs first)
        counts[kind] = count_update(model, 1)
    weights = {"actor": 1.0 / delay, "critic": (delay - 1.0) / delay}
    counted = {key: sum(weights[kind] * values[key] for kind, values in counts.items()) for key in counts["actor"]}
    for _ in range(args.warmup * delay):
        model.train(gradient_steps=1, batch_size=model.batch_size)  # compiles what compiles
    by_kind: dict[str, list[tuple[float, float, dict[str, float]]]] = {}
    for _ in range(args.repeats * delay):
        kind = next_kind(model, delay)
        rates = probes.matmul()
        wall, cpu = _timed(lambda: model.train(gradient_steps=1, batch_size=model.batch_size), device)
        by_kind.setdefault(kind, []).append((wall, cpu, rates))
    medians = {kind: statistics.median(w for w, _, _ in values) for kind, values in by_kind.items()}
    cpu_medians = {kind: statistics.median(c for _, c, _ in values) for kind, values in by_kind.items()}
    # mean over one cycle: one actor update and delay-1 critic-only updates
    update = (medians["actor"] + (delay - 1) * medians.get("critic", 0.0)) / delay
    update_cpu = (cpu_medians["actor"] + (delay - 1) * cpu_medians.get("critic", 0.0)) / delay
    paired_rates = [rates["fp32"] for values in by_kind.values() for _, _, rates in values if "fp32" in rates]
    result: dict[str, Any] = dict(
        algo=algo,
        env=env_id,
        precision=precision if algo != "sac" else "fp32",
        compute_dtype=(str(model.policy.hot_path.compute_dtype(device)).replace("torch.", "") if algo != "sac" else "float32"),
        update_ms=1e3 * update,
        update_cpu_ms=1e3 * update_cpu,
        actor_update_ms=1e3 * medians["actor"],
        policy_delay=delay,
        paired_matmul_rate=statistics.median(paired_rates) if paired_rates else None,
        counts=counts,
        **counted,
    )
    if algo in ANALYTIC:
        result.update({f"analytic_{key}": value for key, value in ANALYTIC[algo](model).items()})
    if not args.skip_actions:
        result.update(time_actions(model, env_id, args.action_repeats, device))
    if hasattr(model, "policy") and hasattr(model.policy, "n_behavior_candidates"):
        result["behaviour_k"] = model.policy.n_behavior_candidates
        result["eval_k"] = model.policy.n_eval_candidates
    result["per_update"] = [(kind, wall, rates) for kind, values in by_kind.items() for wall, _, rates in values]
    return result


def next_kind(model: Any, delay: int) -> str:
    """Kind of the next update: "actor" when it includes the (delayed) actor step (updates 0, delay, 2 delay, ...)."""
    return "actor" if model._n_updates % delay == 0 else "critic"


def worker(args: argparse.Namespace) -> None:
    import torch as th

    from sb3_diffusion.common.kernels import fast_bf16_available

    th.set_num_threads(args.threads)
    device = th.device(args.device)
    # the rates of the dtypes the updates use: fp32 always (gradient steps), bf16 for any reduced precision
    probes = Probes(device, ["fp32"] + (["bf16"] if any(p != "fp32" for p in args.precisions) else []))
    probes.matmul(3)
    activation_rates = probes.activations()
    results = []
    for env_id in args.envs:
        for algo in args.algos:
            # SAC has no precision option: once; the diffusion algorithms in each precision, one after the other
            for precision in args.precisions if algo != "sac" else ["fp32"]:
                start = time.perf_counter()
                results.append(measure_algo(algo, env_id, args, probes, precision))
                print(
                    f"  [{args.threads} thread(s)] {env_id} {algo} {precision}: {time.perf_counter() - start:.0f} s",
                    file=sys.stderr,
                )
    for precision, rates in probes.activations().items():  # again at the end: the best of both
        for name, rate in rates.items():
            activation_rates[precision][name] = max(rate, activation_rates[precision].get(name, 0.0))
    output = dict(
        threads=args.threads,
        device=str(device),
        hardware_bf16=fast_bf16_available(device),
        cpu_flags=_cpu_bf16_flags(),
        matmul_rate={p: statistics.median(rates) for p, rates in probes.rates.items()},
        matmul_rate_max={p: max(rates) for p, rates in probes.rates.items()},
        matmul_cpu_rate={p: statistics.median(rates) for p, rates in probes.cpu_rates.items()},
        matmul_by_implementation={name: statistics.median(rates) for name, rates in probes.by_implementation.items()},
        activation_rates=activation_rates,
        results=results,
        loadavg=_loadavg(),
    )
    print("JSON:" + json.dumps(output))


# --------------------------------------------------------------------------------------------------
# Driver: one worker per thread count, then the tables
# --------------------------------------------------------------------------------------------------


def cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of /proc/cpuinfo ("flags", "vendor_id", "model name"), None where unknown."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _cpu_bf16_flags() -> str:
    """The CPU's bf16 features as /proc/cpuinfo names them (Linux), e.g. "avx512_bf16" or "amx_bf16 avx512_bf16"."""
    flags = cpuinfo_field("flags")
    if flags is None:
        return "n/a"
    return " ".join(sorted(f for f in flags.split() if "bf16" in f or f.startswith("amx"))) or "none"


def _cpu_vendor() -> str:
    """The CPU vendor as /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD"), or "" where unknown."""
    return cpuinfo_field("vendor_id") or ""


def mkl_generic_path(matmul_by_implementation: dict[str, float], vendor: str) -> bool:
    """
    Whether torch's fp32 matmul (MKL) looks like it runs MKL's generic code path: an AMD CPU on which
    ``torch.mm`` reaches less than 60% of oneDNN's fp32 linear on the same shape (docs/performance.md,
    "AMD CPUs: MKL's generic path"; on an Intel CPU or with the preload the two are within about 20%).
    """
    mm, onednn = matmul_by_implementation.get("fp32 torch.mm"), matmul_by_implementation.get("fp32 oneDNN linear")
    return vendor == "AuthenticAMD" and bool(mm and onednn) and mm < 0.6 * onednn


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as file:
            return " ".join(file.read().split()[:3])
    except OSError:
        return "n/a"


def floor_seconds(count: dict[str, float], matmul_rates: dict[str, float], activation_rates: dict[str, float]) -> float:
    """
    The floor of ``count`` (FLOPs and activation elements, with their bf16 parts): each matmul FLOP at
    the matmul rate of its dtype, each activation element at the best Mish rate of its dtype.
    """
    flops_bf16, activations_bf16 = count.get("flops_bf16", 0.0), count.get("activations_bf16", 0.0)
    seconds = (count["flops"] - flops_bf16) / matmul_rates["fp32"] + (
        count["activations"] - activations_bf16
    ) / activation_rates["fp32"]
    if flops_bf16 or activations_bf16:
        seconds += flops_bf16 / matmul_rates["bf16"] + activations_bf16 / activation_rates["bf16"]
    return seconds


def derive(run: dict[str, Any], result: dict[str, Any]) -> dict[str, float]:
    """Floor, ratio and fraction of the matmul peak of one result of one worker."""
    best_activation = {p: max(rates.values()) for p, rates in run["activation_rates"].items()}
    matmul_rate = run["matmul_rate"]
    floor = floor_seconds(result, matmul_rate, best_activation)
    actor_floor = floor_seconds(result["counts"]["actor"], matmul_rate, best_activation)
    # the same in process CPU time (meaningful with one thread): insensitive to time lost to other processes
    cpu_floor = floor_seconds(result, run["matmul_cpu_rate"], best_activation)
    # paired: each update against the matmul rates probed just before it (robust to a changing load)
    ratios = []
    for kind, wall, rates in result["per_update"]:
        ratios.append(wall / floor_seconds(result["counts"][kind], rates, best_activation))
    # the matmul rate of the update's dominant dtype, for the fraction of the peak
    dominant = "bf16" if result.get("flops_bf16", 0.0) > result["flops"] / 2 else "fp32"
    return dict(
        floor_ms=1e3 * floor,
        actor_floor_ms=1e3 * actor_floor,
        ratio=result["update_ms"] / 1e3 / floor,
        cpu_ratio=result["update_cpu_ms"] / 1e3 / cpu_floor,
        paired_ratio=statistics.median(ratios),
        peak_fraction=result["flops"] / (result["update_ms"] / 1e3) / matmul_rate[dominant],
    )


def run_worker(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads)]
    command += ["--envs", *args.envs, "--algos", *args.algos, "--device", args.device]
    command += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--action-repeats", str(args.action_repeats)]
    command += ["--precisions", *args.precisions] + (["--skip-actions"] if args.skip_actions else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"running {threads} thread(s): {' '.join(command[1:])}", file=sys.stderr)
    completed = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    for line in completed.stdout.splitlines():
        if line.startswith("JSON:"):
            return json.loads(line[5:])
    raise RuntimeError(f"worker for {threads} thread(s) printed no result:\n{completed.stdout}")


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def print_report(args: argparse.Namespace, runs: list[dict[str, Any]], load_before: str) -> None:
    import torch as th

    base = runs[0]
    cpu = platform.processor() or platform.machine()
    print(f"\n## Update and action speed ({cpu}, torch {th.__version__}, device {args.device})\n")
    print("Command: `python benchmarks/bench_updates.py " + " ".join(_command_args(args)) + "`  ")
    print(f"Load average before / after: {load_before} / {runs[-1]['loadavg']} ({os.cpu_count()} CPUs)  ")
    print(f"CPU bf16 features: {base['cpu_flags']}; hardware bf16 for precision='bf16': {base['hardware_bf16']}\n")
    m, k, n = MATMUL_SHAPE
    for run in runs:
        implementations = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in run["matmul_by_implementation"].items())
        matmul = "; ".join(
            f"{p} median {run['matmul_rate'][p] / 1e9:.0f} GFLOP/s (max {run['matmul_rate_max'][p] / 1e9:.0f}, "
            f"in CPU time {run['matmul_cpu_rate'][p] / 1e9:.0f})"
            for p in run["matmul_rate"]
        )
        mish = "; ".join(
            f"{p}: " + ", ".join(f"{name} {rate / 1e9:.2f} G/s" for name, rate in rates.items())
            for p, rates in run["activation_rates"].items()
        )
        print(
            f"- {run['threads']} thread(s): matmul {m}x{k} @ {k}x{n}, best implementation per probe: {matmul} "
            f"(medians by implementation: {implementations}). Mish elements/s: {mish}"
        )
        if args.device == "cpu" and mkl_generic_path(run["matmul_by_implementation"], _cpu_vendor()):
            print(
                "  Note: torch's fp32 matmul (MKL) runs at under 60% of oneDNN's here, as MKL does on AMD CPUs "
                "(its generic code path). SB3's networks and the gradient steps use it: see benchmarks/mkl_intel_path.c "
                'and docs/performance.md, section "AMD CPUs: MKL\'s generic path".'
            )
    by_key = {(r["env"], r["algo"], r["precision"]): r for r in base["results"]}
    others = {run["threads"]: {(r["env"], r["algo"], r["precision"]): r for r in run["results"]} for run in runs[1:]}
    t0 = base["threads"]
    actions = not args.skip_actions
    header = [
        "shapes",
        "algorithm",
        "precision",
        f"ms/update; CPU ms ({t0} thr)",
        "bf16 speed-up (same run; wall; CPU time)",
        "actor-step update ms",
        *[f"ms/update ({t} thr) [speed-up]" for t in others],
        "matmul GFLOP/update (bf16 part)",
        "Mish Melem/update (bf16 part)",
        f"floor ms ({t0} thr)",
        "time/floor (paired; CPU time)",
        "matmul peak fraction",
    ]
    if actions:
        header += ["action ms; CPU ms (behaviour, K)", "action ms; CPU ms (deterministic, K)", "rollout steps/s"]
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (env_id, algo, precision), result in by_key.items():
        derived = derive(base, result)
        flops = f"{result['flops'] / 1e9:.1f} ({result.get('flops_bf16', 0.0) / 1e9:.1f})"
        if "analytic_flops" in result:
            flops += f" (analytic {result['analytic_flops'] / 1e9:.1f})"
        fp32 = by_key.get((env_id, algo, "fp32"))
        speed_up = ""
        if precision != "fp32" and fp32:  # wall time; CPU time (the robust one on a shared machine, one thread)
            wall_ratio, cpu_ratio = fp32["update_ms"] / result["update_ms"], fp32["update_cpu_ms"] / result["update_cpu_ms"]
            speed_up = f"{wall_ratio:.2f}x; {cpu_ratio:.2f}x"
        cells = [
            env_id.split("-")[0],
            algo.upper() if algo != "sac" else "SB3 SAC",
            precision
            if result.get("compute_dtype", "float32") != "float32" or precision == "fp32"
            else f"{precision} (ran fp32)",
            f"{fmt(result['update_ms'])}; {fmt(result['update_cpu_ms'])}",
            speed_up,
            fmt(result["actor_update_ms"]) if result["policy_delay"] > 1 else "same",
        ]
        for table in others.values():
            other = table.get((env_id, algo, precision))
            cells.append(f"{fmt(other['update_ms'])} [{result['update_ms'] / other['update_ms']:.2f}x]" if other else "n/a")
        cells += [
            flops,
            f"{fmt(result['activations'] / 1e6)} ({fmt(result.get('activations_bf16', 0.0) / 1e6)})",
            fmt(derived["floor_ms"]),
            f"{derived['ratio']:.2f} ({derived['paired_ratio']:.2f}; {derived['cpu_ratio']:.2f})",
            f"{derived['peak_fraction']:.2f}",
        ]
        if actions:
            k_b = result.get("behaviour_k", 1)
            k_e = result.get("eval_k")
            cells += [
                f"{result['behaviour_action_ms']:.2f}; {result['behaviour_action_cpu_ms']:.2f} (K={k_b})",
                (
                    f"{result['deterministic_action_ms']:.2f}; {result['deterministic_action_cpu_ms']:.2f} (K={k_e})"
                    if k_e
                    else "n/a"
                ),
                fmt(result["rollout_steps_per_s"]),
            ]
        print("| " + " | ".join(cells) + " |")
    print(
        "\nms/update: median over repeated updates, mean over one policy-delay cycle (SDAC: one actor-step and one "
        "critic-only update). Floor: matmul FLOPs / median matmul rate + Mish elements / best Mish rate, same run, "
        "each at the rates of its own dtype (with precision='bf16' the sampling chains and the scoring of candidates "
        "are bf16, the gradient steps and the output layers fp32): the fp32 row's floor is the fp32 floor, the bf16 "
        "row's the bf16 floor. Paired: each update against the matmul rates probed just before it. CPU time: update "
        "and matmul probe in process CPU time (meaningful with one thread), insensitive to time lost to other processes."
    )
    sdac = by_key.get(("Hopper-v5", "sdac", "fp32"))
    if sdac is not None and actions:
        hours = projected_sdac_hours(sdac)
        print(
            f"\nProjected 1M-step SDAC Hopper run on this device ({t0} thread(s)): "
            f"{SDAC_RUN['updates']:,} x {sdac['update_ms']:.1f} ms (update) + {SDAC_RUN['vector_steps']:,} x "
            f"({sdac['action5_ms']:.2f} ms (best-of-32 for 5 states) + 5 x {sdac['env_step_ms']:.3f} ms (env step)) + "
            f"{SDAC_RUN['warmup_steps']:,} x {sdac['env_step_ms']:.3f} ms (warm-up) = {hours:.2f} h"
        )


def projected_sdac_hours(result: dict[str, Any]) -> float:
    """Wall time of SDAC's official 1M-step run from the measured pieces (updates, acting, env steps)."""
    seconds = SDAC_RUN["updates"] * result["update_ms"] / 1e3
    seconds += SDAC_RUN["vector_steps"] * (result["action5_ms"] + SDAC_RUN["n_envs"] * result["env_step_ms"]) / 1e3
    seconds += SDAC_RUN["warmup_steps"] * result["env_step_ms"] / 1e3
    return seconds / 3600


def _command_args(args: argparse.Namespace) -> list[str]:
    out = ["--threads", *map(str, args.threads), "--envs", *args.envs, "--algos", *args.algos]
    out += ["--precisions", *args.precisions] + (["--skip-actions"] if args.skip_actions else [])
    return [*out, "--repeats", str(args.repeats), "--device", args.device]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (one worker each)")
    parser.add_argument("--repeats", type=int, default=10, help="timed updates of each kind")
    parser.add_argument("--warmup", type=int, default=2, help="untimed policy-delay cycles first (compilation)")
    parser.add_argument("--action-repeats", type=int, default=30, help="timed actions")
    parser.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, help="environments whose shapes are used")
    parser.add_argument("--algos", nargs="+", default=DEFAULT_ALGOS, choices=DEFAULT_ALGOS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS[:2], choices=PRECISIONS, help="policy_kwargs precision")
    parser.add_argument("--skip-actions", action="store_true", help="time updates only (no actions, no rollout)")
    parser.add_argument("--json", default=None, help="also write the raw measurements to this file")
    parser.add_argument(
        "--flowrl-src",
        default=None,
        help="also run benchmarks/bench_flowrl.py (FlowRL's source folder; its environment: --flowrl-python) after the tables",
    )
    parser.add_argument("--flowrl-python", default=None, help="Python of FlowRL's environment")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
        return
    load_before = _loadavg()
    runs = [run_worker(args, threads) for threads in args.threads]
    if args.json:
        with open(args.json, "w") as file:
            json.dump(runs, file, indent=1)
    print_report(args, runs, load_before)
    if args.flowrl_src:  # the peer library at its own settings, same machine, right after
        command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_flowrl.py")]
        command += ["--flowrl-src", args.flowrl_src, "--repeats", str(args.repeats)]
        if args.flowrl_python:
            command += ["--flowrl-python", args.flowrl_python]
        print(f"\nrunning {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
