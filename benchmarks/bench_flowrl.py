"""
QVPO and SDAC update speed against FlowRL's (JAX, jit-compiled by XLA), in the same run, one thread each.

FlowRL (https://github.com/typoverflow/flow-rl, 0.2.0 on PyPI) ships its own QVPO and SDAC. This
script times one update step of each at FlowRL's Hopper-v5 settings (observations 11, actions 3,
batch 256, replay data random) beside ours at the closest settings we offer:

- FlowRL runs in a subprocess with the Python of a separate environment (``--flowrl-python``; ours
  has no JAX), pinned to one CPU (so its XLA threads share one core), with XLA's default flags
  (``--xla-flags`` sets others). XLA's own single-thread setting
  (``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``, this script's default until
  2026-11-22) made FlowRL's SDAC update 1.8x slower on one pinned CPU (1.33 s against 0.73 s; QVPO
  1.71 s either way), so it is not the default: the comparison takes FlowRL at its faster setting. Its update functions are
  jit-compiled, warmed up, and each timed update ends with ``jax.block_until_ready`` on the new
  parameters and metrics.
- Ours runs in this process with ``torch.set_num_threads(1)``, pinned to the same CPU, through
  ``model.train(gradient_steps=1)`` (the replay sampling included), after warm-up (compilation).
- The measurements alternate, one update of each configuration per round, so that both see the same
  load on a shared machine; the table gives medians of wall time and of process CPU time (the more
  robust figure when other processes compete for the CPU) and the ratio ours / FlowRL of each.
- Matmul FLOPs per update: ours counted on the real code (``bench_updates.op_counter``), FlowRL's
  from XLA's cost analysis of its compiled update (all FLOPs, so slightly more than its matmuls).
- ``--profile``: where ours spends an update, by phase (sampling chains, the critics' scoring of
  candidates, the rest) and by torch operation (``torch.profiler``, self CPU time).

Setting FlowRL up. Its 0.2.0 sdist pins CUDA JAX and, as published on PyPI, lacks the subpackages
without an ``__init__.py`` (``flowrl/flow``, ``module``, ``functional``, ``config``, ...), so QVPO and
SDAC cannot be imported from it. Install its dependencies into a separate environment and put the
source of its ``v0.2.0`` tag on the path with ``--flowrl-src`` (the files the sdist has are identical
to the tag's; the C++ extension of its setup.py is not needed by QVPO and SDAC)::

    python -m venv /work/flowrl-venv
    /work/flowrl-venv/bin/pip install jax==0.5.3 jaxlib==0.5.3 flax==0.10.5 distrax==0.1.5 \\
        orbax-checkpoint==0.11.23 optax hydra-core tensorboardX pyyaml numpy
    git clone --branch v0.2.0 --depth 1 https://github.com/typoverflow/flow-rl /work/flowrl-src/v0.2.0

Usage::

    python benchmarks/bench_flowrl.py --flowrl-src /work/flowrl-src/v0.2.0 --out results/bench_flowrl.csv
    python benchmarks/bench_flowrl.py --flowrl-src /work/flowrl-src/v0.2.0 --algos sdac --repeats 5 --profile
"""

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENV_ID = "Hopper-v5"
OBS_DIM, ACT_DIM, BATCH_SIZE = 11, 3, 256
BUFFER_TRANSITIONS = 10_000
DEFAULT_FLOWRL_PYTHON = "/work/flowrl-venv/bin/python"

# FlowRL 0.2.0 at Hopper-v5: examples/online/config/mujoco/algo/{qvpo,sdac}.yaml and config.yaml (batch 256)
# at tag v0.2.0. Both noise networks: Mish MLP on concat(a_t, time MLP(learnable Fourier embedding of size
# time_dim), observation MLP (128, 128) Mish); continuous-time cosine schedule sampled at `steps` points;
# twin critics (obs, action) -> MLP(critic_hidden_dims) -> 1.


def _flowrl_diffusion(hidden_dims: list[int]) -> dict[str, Any]:
    """FlowRL's diffusion settings at Hopper-v5 (the same for QVPO and SDAC but for the noise net's widths)."""
    return dict(
        time_dim=64,
        mlp_hidden_dims=hidden_dims,
        lr=3e-4,
        end_lr=None,
        lr_decay_steps=None,
        lr_decay_begin=None,
        steps=20,
        clip_sampler=True,
        x_min=-1.0,
        x_max=1.0,
        solver="ddpm",
    )


FLOWRL_SETTINGS: dict[str, dict[str, Any]] = {
    "qvpo": dict(
        name="qvpo",
        critic_hidden_dims=[256, 256],
        critic_activation="relu",
        critic_lr=3e-4,
        discount=0.99,
        num_behavior_samples=1,  # num_behavior_samples_dict["Hopper-v5"]: best-of-1 in the TD target and acting
        num_evaluate_samples=32,
        num_train_samples=64,
        reweight="adv",
        entropy_coef=0.01,
        ema=0.005,
        clip_grad_norm=None,
        diffusion=_flowrl_diffusion([256, 256]),
    ),
    "sdac": dict(
        name="sdac",
        critic_hidden_dims=[256, 256],
        critic_activation="relu",
        critic_lr=3e-4,
        discount=0.99,
        num_samples=10,  # best-of-10 for evaluation actions only; the update samples one a' per state
        num_reverse_samples=500,
        ema=0.005,
        temp=0.05,  # fixed temperature: softmax(Q / 0.05)
        diffusion=_flowrl_diffusion([256, 256, 256]),
    ),
}

# Ours, at the closest settings we offer. Every configuration does the work of one FlowRL update per
# update (policy_delay=1: an actor step every update, as FlowRL); what still differs is listed in
# DIFFERENCES and in docs/performance.md.
_QVPO = dict(
    n_target_candidates=1,  # FlowRL's best-of-1 TD target
    n_behavior_candidates=1,
    n_policy_samples=64,
    n_uniform_samples=10,
    actor_learning_rate=3e-4,
    policy_kwargs=dict(net_arch=dict(pi=[256, 256], qf=[256, 256]), diffusion_steps=20),
)
_SDAC = dict(
    n_candidates=10,  # best-of-10 for the actor's policy action (FlowRL regresses on the replay action)
    n_target_candidates=1,  # FlowRL's a': one sample of the online actor
    n_reverse_samples=500,
    policy_delay=1,
    lambda_lr=0.0,  # fixed temperature ...
    lambda_init=0.25,  # ... with q_weight_scale / lambda = 5 / 0.25 = 1 / 0.05, FlowRL's softmax(Q / 0.05)
    reward_scale=1.0,
    actor_lr_decay_steps=0,
    policy_kwargs=dict(net_arch=dict(pi=[256, 256, 256], qf=[256, 256]), diffusion_steps=20),
)


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    policy_kwargs = changes.pop("policy_kwargs", {})
    merged.update(changes)
    merged["policy_kwargs"] = {**merged.get("policy_kwargs", {}), **policy_kwargs}
    return merged


# name -> (algorithm, keyword arguments, critic activation); the activation is applied in make_ours
OURS: dict[str, tuple[str, dict[str, Any], str]] = {
    "qvpo-mish": ("qvpo", _QVPO, "mish"),
    "qvpo-relu": ("qvpo", _QVPO, "relu"),
    "sdac-mish": ("sdac", _SDAC, "mish"),
    "sdac-relu": ("sdac", _SDAC, "relu"),
    # one policy sample per state for the actor's regression target (FlowRL: the replay action, no sampling)
    "sdac-k1-relu": ("sdac", _with(_SDAC, n_candidates=1, policy_kwargs=dict(n_eval_candidates=10)), "relu"),
    # the settings of issue 9's first measurement: policy_delay 2 and the best-of-10 TD target (not FlowRL's work)
    "sdac-issue-mish": ("sdac", _with(_SDAC, n_target_candidates=None, policy_delay=2), "mish"),
}
DEFAULT_OURS = ["qvpo-mish", "qvpo-relu", "sdac-mish", "sdac-relu", "sdac-k1-relu"]

DIFFERENCES = {
    "qvpo": [
        "noise network input: ours concat(obs, a_t, time MLP(32-dim sinusoid)), FlowRL concat(a_t, time MLP(64-dim "
        "learnable Fourier), obs MLP 11-128-128 Mish): FlowRL's first layer is 195 x 256 per row and step, ours "
        "3 x 256 per row (the observation and time blocks once per state and step)",
        "actor step on a second replay batch (ours, the official code) / on the critic's batch (FlowRL)",
        "actor weights min(Q1, Q2) (ours) / mean (FlowRL); uniform actions in [-1, 1] (ours) / [0, 1) (FlowRL)",
        "grad-norm clip 2 and Adam eps 1e-5 (ours, official) / none and 1e-8 (FlowRL); entropy weight "
        "0.02 -> 0.002 (ours) / 0.01 (FlowRL); actor lr 3e-4 in both here",
        "schedule: discrete cosine, T = 20 (ours) / continuous cosine at 20 points (FlowRL); same chain length",
    ],
    "sdac": [
        "actor's regression target: a policy sample a = best-of-n_candidates at s (ours, the official SDAC) / the "
        "replay action (FlowRL): ours samples n_candidates chains per state that FlowRL does not",
        "reverse samples: clamped N(a_t / sqrt(abar_t), (1/abar_t - 1) I) (ours, official) / truncated normal "
        "inside the box (FlowRL)",
        "noise network input as for QVPO (FlowRL: 195 x 256 first layer per row; ours 3 x 256 per row)",
        "exploration noise 0.1 lambda added to a' and a (ours) / none (FlowRL); no EMA actor in FlowRL's SDAC "
        "(ours keeps one for acting: one Polyak step per update)",
        "schedule: discrete linear 0.8 linspace(1e-4, 0.999, 20) (ours) / continuous cosine at 20 points (FlowRL)",
    ],
}


# ---------------------------------------------------------------------------------------------------
# FlowRL worker (runs in the FlowRL environment: JAX, no torch)
# ---------------------------------------------------------------------------------------------------


def _flowrl_agent(algo: str, seed: int = 0) -> Any:
    from flowrl.agent.online import QVPOAgent, SDACAgent
    from flowrl.config.online.algo.qvpo import QVPOConfig, QVPODiffusionConfig
    from flowrl.config.online.algo.sdac import SDACConfig, SDACDiffusionConfig

    settings = copy.deepcopy(FLOWRL_SETTINGS[algo])
    diffusion = settings.pop("diffusion")
    if algo == "qvpo":
        return QVPOAgent(OBS_DIM, ACT_DIM, QVPOConfig(**settings, diffusion=QVPODiffusionConfig(**diffusion)), seed)
    return SDACAgent(OBS_DIM, ACT_DIM, SDACConfig(**settings, diffusion=SDACDiffusionConfig(**diffusion)), seed)


class _FlowRLRunner:
    """One FlowRL agent and a random replay buffer of Hopper-v5 shapes."""

    def __init__(self, algo: str, seed: int = 0):
        import numpy as np
        from flowrl.types import Batch

        self.algo = algo
        self.agent = _flowrl_agent(algo, seed)
        rng = np.random.default_rng(seed)
        n = BUFFER_TRANSITIONS
        self.data = dict(
            obs=rng.standard_normal((n, OBS_DIM)).astype(np.float32),
            action=rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
            reward=rng.standard_normal((n, 1)).astype(np.float32),
            terminal=(rng.uniform(size=(n, 1)) < 0.01).astype(np.float32),
            next_obs=rng.standard_normal((n, OBS_DIM)).astype(np.float32),
            next_action=rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        )
        self.rng = rng
        self.batch_class = Batch
        self.step = 0

    def batch(self) -> Any:
        indices = self.rng.integers(0, BUFFER_TRANSITIONS, BATCH_SIZE)
        return self.batch_class(**{key: value[indices] for key, value in self.data.items()})

    def update(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one update, until its results are ready."""
        import jax

        batch = self.batch()
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = self.agent.train_step(batch, self.step)
        models = [getattr(self.agent, name) for name in self.agent.model_names]
        jax.block_until_ready((models, metrics))
        self.step += 1
        return time.perf_counter() - wall, time.process_time() - cpu

    def cost(self) -> dict[str, float]:
        """XLA's cost analysis of the compiled update function (FLOPs and transcendentals per update)."""
        import importlib

        module = importlib.import_module(f"flowrl.agent.online.{self.algo}")
        agent, batch = self.agent, self.batch()
        if self.algo == "qvpo":
            cfg = agent.cfg
            lowered = module.jit_update_qvpo.lower(
                agent.rng, agent.actor, agent.actor_target, agent.critic, agent.critic_target,
                agent.running_q_mean, agent.running_q_std, batch, discount=cfg.discount, reweight=cfg.reweight,
                num_behavior_samples=cfg.num_behavior_samples, num_train_samples=cfg.num_train_samples,
                ema=cfg.ema, entropy_coef=cfg.entropy_coef,
            )  # fmt: skip
        else:
            cfg = agent.cfg
            lowered = module.jit_update_sdac.lower(
                agent.rng, agent.actor, agent.critic, agent.critic_target, batch, discount=cfg.discount,
                solver=cfg.diffusion.solver, num_reverse_samples=cfg.num_reverse_samples, temp=cfg.temp, ema=cfg.ema,
            )  # fmt: skip
        analysis = lowered.compile().cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0]
        return {key: float(analysis.get(key, 0.0)) for key in ("flops", "transcendentals", "bytes accessed")}


def flowrl_worker() -> None:
    """Serve commands from the driver, one JSON line each: setup, warmup, time, cost, versions, quit."""
    import jax

    runners: dict[str, _FlowRLRunner] = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # anything else printed goes to stderr; stdout carries the replies
    for line in sys.stdin:
        request = json.loads(line)
        command, algo = request["cmd"], request.get("algo")
        try:
            if command == "versions":
                import flax
                import flowrl

                reply: Any = dict(jax=jax.__version__, flax=flax.__version__, flowrl=getattr(flowrl, "__version__", "?"))
                reply["devices"] = [str(device) for device in jax.devices()]
                reply["xla_flags"] = os.environ.get("XLA_FLAGS", "")
            elif command == "setup":
                start = time.perf_counter()
                runners[algo] = _FlowRLRunner(algo)
                runners[algo].update()  # compiles
                reply = dict(compile_s=time.perf_counter() - start)
            elif command == "time":
                reply = [runners[algo].update() for _ in range(request.get("n", 1))]
            elif command == "cost":
                reply = runners[algo].cost()
            elif command == "quit":
                break
            else:
                raise ValueError(f"unknown command {command!r}")
            out.write("JSON:" + json.dumps(dict(ok=True, reply=reply)) + "\n")
        except Exception as error:  # reported to the driver, which stops
            out.write("JSON:" + json.dumps(dict(ok=False, error=f"{type(error).__name__}: {error}")) + "\n")
        out.flush()


class FlowRLProcess:
    """The driver's handle on the FlowRL worker."""

    def __init__(self, python: str, source: str | None, cpu: int | None, cache_dir: str | None, xla_flags: str = ""):
        env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        if cache_dir:  # XLA's compilations kept on disk: minutes saved on the next run (QVPO's update is slow to compile)
            env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(cache_dir)
        env.pop("PYTHONPATH", None)  # FlowRL's own environment only (and its source, if given)
        if source:
            env["PYTHONPATH"] = os.path.abspath(source)
        command = [python, os.path.abspath(__file__), "--flowrl-worker"]
        preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=preexec
        )

    def call(self, command: str, **fields: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(dict(cmd=command, **fields)) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("JSON:"):
                answer = json.loads(line[5:])
                if not answer["ok"]:
                    raise RuntimeError(f"FlowRL worker: {answer['error']}")
                return answer["reply"]
        raise RuntimeError(f"FlowRL worker exited (code {self.process.wait()}); see its stderr above")

    def close(self) -> None:
        try:
            self.call("quit")
        except RuntimeError:
            pass
        self.process.wait(timeout=60)


# ---------------------------------------------------------------------------------------------------
# Ours (this process)
# ---------------------------------------------------------------------------------------------------


def make_ours(name: str, precision: str = "fp32") -> Any:
    import numpy as np
    from bench_updates import fill_buffer, make_model
    from torch import nn

    algo, kwargs, activation = OURS[name]
    kwargs = copy.deepcopy(kwargs)
    if activation == "relu":
        kwargs["policy_kwargs"]["critic_activation_fn"] = nn.ReLU
    model = make_model(algo, ENV_ID, "cpu", precision, **kwargs)
    fill_buffer(model, BUFFER_TRANSITIONS, np.random.default_rng(0))
    return model


class OursRunner:
    def __init__(self, name: str, precision: str):
        self.name = name
        self.algo = OURS[name][0]
        self.model = make_ours(name, precision)
        self.delay = int(getattr(self.model, "policy_delay", 1))

    def update(self) -> tuple[float, float]:
        """One update (for policy_delay > 1, the mean over one cycle): (wall seconds, CPU seconds)."""
        import torch as th

        from bench_updates import _timed

        times = [
            _timed(lambda: self.model.train(gradient_steps=1, batch_size=self.model.batch_size), th.device("cpu"))
            for _ in range(self.delay)
        ]
        return sum(w for w, _ in times) / self.delay, sum(c for _, c in times) / self.delay

    def flops(self) -> float:
        from bench_updates import count_update

        return count_update(self.model, self.delay)["flops"]


def profile_ours(runner: OursRunner, updates: int = 2, top: int = 14) -> dict[str, Any]:
    """Where an update of ours spends its time: by phase (timed separately) and by torch operation."""
    import torch as th
    from torch.profiler import ProfilerActivity, profile

    from bench_updates import _timed

    model, policy = runner.model, runner.model.policy
    cpu = th.device("cpu")
    data = model.replay_buffer.sample(model.batch_size)
    obs, next_obs = data.observations, data.next_observations
    phases: dict[str, float] = {}

    def median_ms(fn: Any, repeats: int = 3) -> float:
        fn()
        return 1e3 * statistics.median(_timed(fn, cpu)[1] for _ in range(repeats))  # CPU time: robust under load

    with th.no_grad():
        if runner.algo == "qvpo":
            n, k_t = model.n_policy_samples, model.n_target_candidates
            samples = policy.sample(obs, n)
            phases[f"TD target: best-of-{k_t} chain (EMA actor, 256 states)"] = median_ms(
                lambda: policy.best_of_k(next_obs, k_t, actor=model.actor_target, critic=model.critic_target)
            )
            phases[f"actor samples: {n} chains per state (256 x {n} rows x T)"] = median_ms(lambda: policy.sample(obs, n))
            phases[f"critics score the {n} samples (256 x {n} rows)"] = median_ms(
                lambda: policy.min_q(obs, samples, critic=model.critic)
            )
        else:
            k, k_t, n_rev = model.n_candidates, model.n_target_candidates or model.n_candidates, model.n_reverse_samples
            candidates = policy.sample(obs, k)
            phases[f"TD target: best-of-{k_t} chain (256 states)"] = median_ms(lambda: policy.best_of_k(next_obs, k_t))
            phases[f"policy action: {k} chains per state (256 x {k} rows x T)"] = median_ms(lambda: policy.sample(obs, k))
            if k > 1:
                phases[f"critics score the {k} candidates"] = median_ms(lambda: policy.min_q(obs, candidates))
            # the reverse samples of one actor step, as SDAC.reverse_sampling_target draws them
            target = model.reverse_sampling_target(obs, candidates[:, 0], model.lambda_)
            a_0 = model.actor.schedule.predict_x0(target.a_t[:, None, :], target.t, target.noise).clamp_(-1.0, 1.0)
            phases[f"critics score the {n_rev} reverse samples (256 x {n_rev} rows)"] = median_ms(
                lambda: policy.min_q(obs, a_0, critic=model.critic)
            )
    update_ms = 1e3 * statistics.median(runner.update()[1] for _ in range(3))
    phases["the rest: critic and actor gradient steps, Polyak, replay sampling, small ops"] = update_ms - sum(phases.values())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(updates):
            model.train(gradient_steps=1, batch_size=model.batch_size)
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    by_op = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    operations = [
        dict(op=event.key, self_ms=event.self_cpu_time_total / 1e3 / updates, share=event.self_cpu_time_total / total)
        for event in by_op
    ]
    return dict(update_cpu_ms=update_ms, phases=phases, operations=operations)


# ---------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cpu_model() -> str:
    from bench_updates import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["qvpo", "sdac"], choices=["qvpo", "sdac"])
    parser.add_argument("--ours", nargs="+", default=None, choices=sorted(OURS), help="our configurations")
    parser.add_argument("--repeats", type=int, default=8, help="timed updates of each configuration (rounds)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates of each first (compilation)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="ours: policy_kwargs precision")
    parser.add_argument("--flowrl-python", default=DEFAULT_FLOWRL_PYTHON, help="Python of the FlowRL environment")
    parser.add_argument("--flowrl-src", default=None, help="FlowRL's source folder (the extracted sdist), if not installed")
    parser.add_argument(
        "--jax-cache-dir", default=os.path.expanduser("~/.cache/bench_flowrl_jax"), help="XLA compilation cache ('' for none)"
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin both to this CPU (default: the last one)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the processes to one CPU")
    parser.add_argument("--xla-flags", default="", help="XLA_FLAGS of the FlowRL process (default: none, XLA's defaults)")
    parser.add_argument("--skip-flops", action="store_true", help="do not count FLOPs (saves a few updates)")
    parser.add_argument("--profile", action="store_true", help="also profile ours by phase and by operation")
    parser.add_argument("--out", default=None, help="write the table as CSV here")
    parser.add_argument("--flowrl-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flowrl_worker:
        flowrl_worker()
        return

    import torch as th

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_updates import _loadavg

    cpu = None if args.no_pin else (args.cpu if args.cpu is not None else max(os.sched_getaffinity(0)))
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    th.set_num_threads(1)
    load_before = _loadavg()
    flowrl = FlowRLProcess(args.flowrl_python, args.flowrl_src, cpu, args.jax_cache_dir or None, args.xla_flags)
    try:
        versions = flowrl.call("versions")
        print(f"FlowRL {versions['flowrl']}, JAX {versions['jax']}, {versions['devices']}", file=sys.stderr)
        runners, compile_s = set_up(args, flowrl)
        timings = alternate(args, flowrl, runners)
        flops: dict[str, float] = {}
        if not args.skip_flops:
            flops = {f"flowrl-{algo}": flowrl.call("cost", algo=algo)["flops"] for algo in args.algos}
            flops.update({name: runner.flops() for name, runner in runners.items()})
    finally:
        flowrl.close()
    profiles = {name: profile_ours(runner) for name, runner in runners.items()} if args.profile else {}
    load_after = _loadavg()
    rows = build_rows(args, timings, flops, list(runners), versions)
    print_report(args, rows, profiles, versions, load_before, load_after, cpu, compile_s)
    if args.out:
        write_csv(args.out, rows, dict(load_before=load_before, load_after=load_after, cpu_model=_cpu_model()))


def set_up(args: argparse.Namespace, flowrl: FlowRLProcess) -> tuple[dict[str, OursRunner], dict[str, float]]:
    """Compile FlowRL's updates and build and warm up ours; the seconds each took."""
    names = [name for name in (args.ours or DEFAULT_OURS) if OURS[name][0] in args.algos]
    runners: dict[str, OursRunner] = {}
    compile_s: dict[str, float] = {}
    for algo in args.algos:
        compile_s[f"flowrl-{algo}"] = flowrl.call("setup", algo=algo)["compile_s"]
        if args.warmup > 1:
            flowrl.call("time", algo=algo, n=args.warmup - 1)
        print(f"  FlowRL {algo}: compiled and warmed up in {compile_s[f'flowrl-{algo}']:.0f} s", file=sys.stderr)
        for name in (name for name in names if OURS[name][0] == algo):
            start = time.perf_counter()
            runners[name] = OursRunner(name, args.precision)
            for _ in range(args.warmup):
                runners[name].update()
            compile_s[name] = time.perf_counter() - start
            print(f"  ours {name}: built and warmed up in {compile_s[name]:.0f} s", file=sys.stderr)
    return runners, compile_s


def alternate(
    args: argparse.Namespace, flowrl: FlowRLProcess, runners: dict[str, OursRunner]
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of ``args.repeats`` updates of each configuration, one of each per round."""
    timings: dict[str, list[tuple[float, float]]] = {}
    started = time.perf_counter()
    for round_index in range(args.repeats):
        for algo in args.algos:
            wall, cpu_time = flowrl.call("time", algo=algo, n=1)[0]
            timings.setdefault(f"flowrl-{algo}", []).append((wall, cpu_time))
            for name, runner in runners.items():
                if runner.algo == algo:
                    timings.setdefault(name, []).append(runner.update())
        print(f"  round {round_index + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return timings


def build_rows(
    args: argparse.Namespace,
    timings: dict[str, list[tuple[float, float]]],
    flops: dict[str, float],
    ours_names: list[str],
    versions: dict[str, Any],
) -> list[dict[str, Any]]:
    rows = []
    for algo in args.algos:
        reference = timings[f"flowrl-{algo}"]
        ref_wall, ref_cpu = _median([w for w, _ in reference]), _median([c for _, c in reference])
        settings = FLOWRL_SETTINGS[algo]
        rows.append(
            dict(
                algo=algo,
                implementation=f"FlowRL {versions['flowrl']} (JAX {versions['jax']}, XLA CPU, jit)",
                configuration=f"flowrl-{algo}",
                critic_activation=settings["critic_activation"],
                ms_per_update=1e3 * ref_wall,
                cpu_ms_per_update=1e3 * ref_cpu,
                ratio_wall=1.0,
                ratio_cpu=1.0,
                paired_ratio=1.0,
                gflop_per_update=flops.get(f"flowrl-{algo}", float("nan")) / 1e9,
                updates=len(reference),
                settings=json.dumps(settings),
            )
        )
        for name in ours_names:
            if OURS[name][0] != algo:
                continue
            values = timings[name]
            wall, cpu_time = _median([w for w, _ in values]), _median([c for _, c in values])
            # each of our updates against the FlowRL update of the same round (the same load)
            paired = _median([c / r for (_, c), (_, r) in zip(values, reference, strict=False)])
            _, kwargs, activation = OURS[name]
            rows.append(
                dict(
                    algo=algo,
                    implementation=f"sb3_diffusion ({args.precision}, torch, 1 thread)",
                    configuration=name,
                    critic_activation=activation,
                    ms_per_update=1e3 * wall,
                    cpu_ms_per_update=1e3 * cpu_time,
                    ratio_wall=wall / ref_wall,
                    ratio_cpu=cpu_time / ref_cpu,
                    paired_ratio=paired,
                    gflop_per_update=flops.get(name, float("nan")) / 1e9,
                    updates=len(values),
                    settings=json.dumps(kwargs),
                )
            )
    return rows


def print_report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    profiles: dict[str, Any],
    versions: dict[str, Any],
    load_before: str,
    load_after: str,
    cpu: int | None,
    compile_s: dict[str, float],
) -> None:
    import torch as th

    print(f"\n## Update speed against FlowRL ({_cpu_model()}, {os.cpu_count()} CPUs)\n")
    command = f"python benchmarks/bench_flowrl.py --algos {' '.join(args.algos)} --repeats {args.repeats}"
    if args.ours:
        command += " --ours " + " ".join(args.ours)
    if args.flowrl_src:
        command += f" --flowrl-src {args.flowrl_src}"
    if args.precision != "fp32":
        command += f" --precision {args.precision}"
    print(f"Command: `{command}`  ")
    print(f"Load average before / after: {load_before} / {load_after}; both pinned to CPU {cpu}  ")
    print(
        f"Ours: torch {th.__version__}, 1 thread, precision {args.precision}. FlowRL {versions['flowrl']}: JAX "
        f"{versions['jax']}, flax {versions['flax']}, {versions['devices']}, XLA_FLAGS={versions['xla_flags']!r}  "
    )
    print(f"Hopper-v5 shapes (obs {OBS_DIM}, action {ACT_DIM}), batch {BATCH_SIZE}, random replay data\n")
    header = [
        "algorithm",
        "implementation",
        "configuration",
        "critics",
        "ms/update (wall)",
        "CPU ms/update",
        "ours / FlowRL (wall; CPU; paired CPU)",
        "GFLOP/update",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        ratio = (
            "1"
            if row["configuration"].startswith("flowrl")
            else f"{row['ratio_wall']:.2f}; {row['ratio_cpu']:.2f}; {row['paired_ratio']:.2f}"
        )
        cells = [
            row["algo"].upper(),
            row["implementation"],
            row["configuration"],
            row["critic_activation"],
            f"{row['ms_per_update']:,.0f}",
            f"{row['cpu_ms_per_update']:,.0f}",
            ratio,
            f"{row['gflop_per_update']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print(
        f"\nMedians over {args.repeats} updates of each, alternating (one update of every configuration per round). "
        "Ratio < 1: ours is faster. Paired: each of our updates over the FlowRL update of the same round, in CPU "
        "time. GFLOP: ours counted on the real code (matmuls), FlowRL's from XLA's cost analysis (all operations). "
        "First update / warm-up (compilation) seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in compile_s.items())
    )
    print("\nSettings:")
    for algo in args.algos:
        print(f"- FlowRL {algo}: {json.dumps(FLOWRL_SETTINGS[algo])}")
    for row in rows:
        if not row["configuration"].startswith("flowrl"):
            print(f"- ours {row['configuration']} (critics {row['critic_activation']}): {row['settings']}")
    print("\nWhat differs (besides the work the settings above match):")
    for algo in args.algos:
        for item in DIFFERENCES[algo]:
            print(f"- {algo.upper()}: {item}")
    for name, result in profiles.items():
        update_ms = result["update_cpu_ms"]
        print(f"\n### Where ours spends an update: {name} (process CPU ms, median of 3; update {update_ms:.0f} ms)\n")
        print("| phase | CPU ms | share |")
        print("|---|---|---|")
        for phase, ms in result["phases"].items():
            print(f"| {phase} | {ms:,.0f} | {ms / update_ms:.0%} |")
        print("\n| torch operation (self CPU time, profiler on) | ms/update | share |")
        print("|---|---|---|")
        for op in result["operations"]:
            print(f"| {op['op']} | {op['self_ms']:,.1f} | {op['share']:.0%} |")


def write_csv(path: str, rows: list[dict[str, Any]], context: dict[str, str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fields = [*rows[0].keys(), *context.keys()]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **context})
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
