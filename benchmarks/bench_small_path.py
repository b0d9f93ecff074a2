"""
The per-call costs behind the small configurations' speed (issue 9, item 7; docs/performance.md,
"Four more cuts"), each measured on its own, one thread, best of 5 blocks:

- Mish forward and backward: torch's ``F.mish`` against the library's ``Mish`` module (gradient steps);
- ``exp_`` on 32,768 float32 inputs by input range (the slow path below about -87.3);
- a pair of training-mode switches of the SDAC quick-start policy (``set_training_mode``);
- the actor's and critics' optimizer steps, one tensor at a time against multi-tensor (``foreach``);
- building one ``RowMLP`` (done once per chain and per scoring).

    python benchmarks/bench_small_path.py
"""

import platform
import subprocess
import time

import numpy as np
import torch as th
from gymnasium import spaces
from torch.nn import functional as F

from sb3_diffusion.common.kernels import RowMLP
from sb3_diffusion.common.networks import Mish
from sb3_diffusion.sdac.policies import SDACPolicy


def best_us(fn, calls: int = 200, blocks: int = 5) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times) * 1e6


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), platform.processor())
    except OSError:
        return platform.processor()


def quick_start_policy(**kwargs) -> SDACPolicy:
    obs_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
    return SDACPolicy(obs_space, act_space, lambda _: 1e-3, net_arch=[64, 64], diffusion_steps=5, **kwargs)


def main() -> None:
    th.set_num_threads(1)
    print(f"{cpu_model()}; torch {th.__version__}; 1 thread")

    print("\nMish forward + backward (us)        F.mish   Mish module")
    mine = Mish()  # F.mish up to SMALL_ACTIVATION_ELEMENTS elements, the one-exp form above
    for rows, width in [(32, 64), (64, 64), (128, 64), (256, 64), (2048, 64), (256, 256), (4096, 256)]:
        x = th.randn(rows, width, requires_grad=True)
        grad = th.randn(rows, width)
        times = [best_us(lambda f=f, x=x, g=grad: th.autograd.grad(f(x), x, g), calls=100) for f in (F.mish, mine)]
        print(f"  {rows:5d} x {width:3d}                    {times[0]:8.0f}   {times[1]:8.0f}")

    print("\nexp_ on 32,768 float32 inputs, by input range (us)")
    y = th.empty(512, 64)
    for low, high in [(-1, 1), (-87, -20), (-103, -87.4), (-300, -110)]:
        x = th.empty(512, 64).uniform_(low, high)
        print(f"  [{low}, {high}]".ljust(22) + f"{best_us(lambda x=x: y.copy_(x).exp_()):8.1f}")

    policy = quick_start_policy()
    pair = best_us(lambda: (policy.set_training_mode(False), policy.set_training_mode(True)), calls=2000)
    print(f"\ntraining-mode switches, one pair (us): {pair:.1f}")

    print("\nactor + critic optimizer steps (us)   one tensor at a time   multi-tensor")
    steps = []
    for foreach in (False, True):
        policy = quick_start_policy(optimizer_kwargs=dict(foreach=foreach))
        optimizers = [policy.actor.optimizer, policy.critic.optimizer]
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = th.zeros_like(param)
        steps.append(best_us(lambda o=optimizers: [optimizer.step() for optimizer in o], calls=500))
    print(f"  SDAC quick start                        {steps[0]:8.0f}             {steps[1]:8.0f}")

    body = list(policy.actor.noise_net.body)
    build = best_us(lambda: RowMLP(policy.actor.noise_net.action_in.weight, body[0::2], body[1::2], max_rows=64), calls=2000)
    print(f"\nbuilding one RowMLP of the quick start's noise network (us): {build:.1f}")


if __name__ == "__main__":
    main()
