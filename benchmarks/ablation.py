"""
What each optimisation of the hot path buys: SDAC's update at the official settings, one thread,
with the optimisations switched on one after the other (each configuration in its own process).

Times are process CPU time (one thread), so that other processes sharing the machine distort the
comparison as little as possible; each line also gives the matmul rate probed in the same process.

Usage::

    python benchmarks/ablation.py                                  # Hopper-v5 and Humanoid-v5 shapes
    python benchmarks/ablation.py --baseline-src /tmp/sb3_diffusion_60def78   # plus the original code

``--baseline-src`` is a checkout of an older version of the package (for example
``git worktree add /tmp/base 60def78``), measured the same way as the first line.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STAGES = {
    "eager": "allocation-free chunked chains, eager in-place one-exp Mish, critics on repeated observations",
    "critic": "+ critics score the candidates with the observation block once per state",
    "compiled": "+ torch.compile'd fused bias+Mish kernels",
    "onednn": "+ oneDNN fp32 linear for the hidden layers (the default)",
}


def worker(stage: str, env_id: str, repeats: int) -> dict[str, float]:
    import gymnasium as gym
    import numpy as np
    import torch as th
    from stable_baselines3.common.logger import configure

    th.set_num_threads(1)
    from sb3_diffusion import SDAC

    if stage != "baseline":
        from sb3_diffusion.common import hot_path, kernels

        os.environ["SB3_DIFFUSION_COMPILE"] = "on" if stage in ("compiled", "onednn") else "off"
        if stage != "onednn":
            kernels.ONEDNN.available = False
        if stage == "eager":
            hot_path._critic_blocks = lambda critic: None  # type: ignore[assignment]  # the plain scoring
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_updates import fill_buffer

    model = SDAC("MlpPolicy", gym.make(env_id), buffer_size=20_000, seed=0, device="cpu")
    model.set_logger(configure(folder=None, format_strings=[]))
    fill_buffer(model, 10_000, np.random.default_rng(0))
    a, w = th.randn(16384, 256), th.randn(256, 256)
    out = th.empty(16384, 256)

    def cpu_time(fn) -> float:  # type: ignore[no-untyped-def]
        start = time.process_time()
        fn()
        return time.process_time() - start

    for _ in range(2):
        model.train(gradient_steps=model.policy_delay, batch_size=model.batch_size)
    updates, rates = [], []
    for _ in range(repeats):
        rates.append(2 * 16384 * 256 * 256 / min(cpu_time(lambda: th.mm(a, w, out=out)) for _ in range(2)))
        updates.append(cpu_time(lambda: model.train(gradient_steps=model.policy_delay, batch_size=model.batch_size)))
    return dict(update_ms=1e3 * statistics.median(updates) / model.policy_delay, mm_rate=statistics.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Hopper-v5", "Humanoid-v5"])
    parser.add_argument("--repeats", type=int, default=5, help="timed policy-delay cycles")
    parser.add_argument("--baseline-src", default=None, help="checkout of the code to compare with (first line)")
    parser.add_argument("--worker", nargs=2, metavar=("STAGE", "ENV"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("JSON:" + json.dumps(worker(args.worker[0], args.worker[1], args.repeats)))
        return
    stages = (["baseline"] if args.baseline_src else []) + list(STAGES)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for env_id in args.envs:
        for stage in stages:
            source = args.baseline_src if stage == "baseline" else here
            env = dict(os.environ, PYTHONPATH=source, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            command = [sys.executable, os.path.abspath(__file__), "--worker", stage, env_id, "--repeats", str(args.repeats)]
            output = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
            result = json.loads(next(line[5:] for line in output.splitlines() if line.startswith("JSON:")))
            results.setdefault(env_id, {})[stage] = result
            print(f"{env_id} {stage}: {result}", file=sys.stderr, flush=True)
    descriptions = {"baseline": f"original code ({args.baseline_src})", **STAGES}
    header = ["configuration"] + [f"{env_id}: CPU ms/update (matmul GFLOP/s)" for env_id in args.envs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for stage in stages:
        cells = [descriptions[stage]]
        for env_id in args.envs:
            result = results[env_id][stage]
            cells.append(f"{result['update_ms']:.0f} ({result['mm_rate'] / 1e9:.0f})")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
