"""
The hot operations of an update in fp32 and in bf16, interleaved in one process, against the floor of
each precision: a cheap companion of ``bench_updates.py`` (which times whole updates) for machines
that are busy or slow.

At Hopper-v5 shapes with the official networks (3 x 256 Mish, T = 20) it times, per precision:

- ``QVPO N_d chain``: QVPO's actor-update samples, ``--states`` states x 64 reverse chains of 20 steps;
- ``SDAC best-of-32``: 32 chains per state and their scoring by the twin critics (acting, TD target, a_new);
- ``SDAC reverse-sample scoring``: the critics on 64 candidates per state (the actor update's weights).

Each operation runs through the policy's hot path on the path ``"auto"`` gives it at 256 states
(``chunked_compiled`` on CPU from 32 states up), fp32 and bf16 alternating, ``--repeats`` times; the median process CPU
time (one thread) is set against the floor: matmul FLOPs and Mish elements counted on the real code,
each at the rate of its own dtype, the rates measured in the same run. ``--states`` below 256 scales
the work down (the per-row cost and so the ratios do not depend on it).

Usage::

    python benchmarks/bench_precision.py                     # 256 states, 5 repeats
    python benchmarks/bench_precision.py --states 32 --repeats 3
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_updates import MATMUL_SHAPE, _cpu_bf16_flags, _loadavg, op_counter

OBS_DIM, ACT_DIM = 11, 3  # Hopper-v5


def cpu_time(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def rates(repeats: int) -> dict[str, dict[str, float]]:
    """Best matmul FLOP/s and best exact Mish elements/s per dtype, in process CPU time."""
    import torch as th

    return {name: _rates(dtype, repeats) for name, dtype in (("fp32", th.float32), ("bf16", th.bfloat16))}


def _rates(dtype: Any, repeats: int) -> dict[str, float]:
    import torch as th

    from sb3_diffusion.common import kernels

    m, k, n = MATMUL_SHAPE
    generator = th.Generator().manual_seed(0)
    a, w = th.randn(m, k, generator=generator).to(dtype), th.randn(n, k, generator=generator).to(dtype)
    out = th.empty(m, n, dtype=dtype)
    matmuls = [lambda: th.mm(a, w.t(), out=out)]
    onednn = getattr(th.ops.mkldnn, "_linear_pointwise", None)
    if onednn is not None:
        matmuls.append(lambda: onednn(a, w, None, "none", [], ""))
    best = min(min(cpu_time(fn) for _ in range(repeats)) for fn in matmuls)
    x, bias = a.clone(), th.zeros(k, dtype=dtype)
    with th.inference_mode():
        copy = min(cpu_time(lambda: x.copy_(a)) for _ in range(repeats))
        kernels.COMPILED("bias_mish", x.copy_(a), bias)  # compile (or load) first
        mish = min(cpu_time(lambda: kernels.COMPILED("bias_mish", x.copy_(a), bias)) for _ in range(repeats))
    return dict(matmul=2.0 * m * k * n / best, mish=a.numel() / max(mish - copy, 1e-9))


def make_policies(algo: str) -> dict[str, Any]:
    """The algorithm's policy at its official settings in fp32 and in bf16, with the same weights."""
    import numpy as np
    from gymnasium import spaces

    from sb3_diffusion.qvpo.policies import QVPOPolicy
    from sb3_diffusion.sdac.policies import SDACPolicy

    cls = {"sdac": SDACPolicy, "qvpo": QVPOPolicy}[algo]
    obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    policies = {p: cls(obs_space, act_space, lambda _: 3e-4, precision=p) for p in ("fp32", "bf16")}
    policies["bf16"].load_state_dict(policies["fp32"].state_dict())
    return policies


def operations(states: int) -> dict[str, tuple[str, Callable[[Any, Any], Any]]]:
    def qvpo_chain(policy: Any, obs: Any) -> Any:
        return policy.sample(obs, 64)

    def sdac_best_of_32(policy: Any, obs: Any) -> Any:
        return policy.best_of_k(obs, 32)

    def sdac_scoring(policy: Any, obs: Any) -> Any:
        import torch as th

        candidates = th.rand(obs.shape[0], 64, ACT_DIM, generator=th.Generator().manual_seed(1)) * 2 - 1
        with th.no_grad():
            return policy.min_q(obs, candidates)

    return {
        f"QVPO N_d chain ({states} x 64 x 20 steps)": ("qvpo", qvpo_chain),
        f"SDAC best-of-32 ({states} x 32 chains + scoring)": ("sdac", sdac_best_of_32),
        f"SDAC reverse-sample scoring ({states} x 64)": ("sdac", sdac_scoring),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=int, default=256, help="states per call (256: the official batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch as th

    from sb3_diffusion.common.kernels import fast_bf16_available

    th.set_num_threads(args.threads)
    load_before = _loadavg()
    measured = rates(args.repeats)
    obs = th.randn(args.states, OBS_DIM, generator=th.Generator().manual_seed(0))
    policies = {algo: make_policies(algo) for algo in ("sdac", "qvpo")}
    rows = []
    for name, (algo, op) in operations(args.states).items():
        counts = {}
        for precision, policy in policies[algo].items():
            previous = os.environ.get("SB3_DIFFUSION_COMPILE")
            os.environ["SB3_DIFFUSION_COMPILE"] = "off"  # count on the eager kernels (the same matmuls)
            with op_counter() as counter:
                op(policy, obs)
            if previous is None:
                del os.environ["SB3_DIFFUSION_COMPILE"]
            else:
                os.environ["SB3_DIFFUSION_COMPILE"] = previous
            counts[precision] = counter
            op(policy, obs)  # warm-up (compiles what compiles)
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(args.repeats):  # interleaved: a changing load hits both alike
            for precision, policy in policies[algo].items():
                times[precision].append(cpu_time(lambda policy=policy, op=op: op(policy, obs)))
        for precision in ("fp32", "bf16"):
            c = counts[precision]
            floor = (c.flops - c.flops_bf16) / measured["fp32"]["matmul"] + c.flops_bf16 / measured["bf16"]["matmul"]
            floor += (c.activations - c.activations_bf16) / measured["fp32"]["mish"] + c.activations_bf16 / measured["bf16"][
                "mish"
            ]
            seconds = statistics.median(times[precision])
            rows.append((name, precision, seconds, floor, c))
    print(
        f"\n## Hot operations in fp32 and bf16 ({_cpu_bf16_flags()}; hardware bf16: {fast_bf16_available(th.device('cpu'))})\n"
    )
    command = f"--states {args.states} --repeats {args.repeats} --threads {args.threads}"
    print(f"Command: `python benchmarks/bench_precision.py {command}`  ")
    print(f"torch {th.__version__}, {args.threads} thread(s), load average before / after: {load_before} / {_loadavg()}\n")
    for precision, values in measured.items():
        print(
            f"- {precision}: matmul {MATMUL_SHAPE[0]}x{MATMUL_SHAPE[1]} @ {MATMUL_SHAPE[1]}x{MATMUL_SHAPE[2]} "
            f"{values['matmul'] / 1e9:.0f} GFLOP/s, compiled bias+Mish {values['mish'] / 1e9:.2f} G elements/s (CPU time)"
        )
    columns = ["operation", "precision", "CPU ms (median)", "bf16 / fp32 time", "matmul GFLOP (bf16 part)"]
    columns += ["Mish M elements (bf16 part)", "floor ms", "time / floor"]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    fp32_times = {name: seconds for name, precision, seconds, _, _ in rows if precision == "fp32"}
    for name, precision, seconds, floor, c in rows:
        ratio = f"{seconds / fp32_times[name]:.2f}" if precision == "bf16" else ""
        print(
            f"| {name} | {precision} | {1e3 * seconds:.0f} | {ratio} | {c.flops / 1e9:.1f} ({c.flops_bf16 / 1e9:.1f}) | "
            f"{c.activations / 1e6:.0f} ({c.activations_bf16 / 1e6:.0f}) | {1e3 * floor:.0f} | {seconds / floor:.2f} |"
        )


if __name__ == "__main__":
    main()
