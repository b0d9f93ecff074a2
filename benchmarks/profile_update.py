"""
Where the time of an update goes: ``torch.profiler`` over a few updates of each algorithm at the
official settings of an environment's shapes, in each precision, the operators sorted by their own
CPU time. The benchmark (``bench_updates.py``) says how far an update is from its floor; this says
which kernels make up the difference.

    python benchmarks/profile_update.py --algos sdac qvpo --env Hopper-v5 --precisions bf16 fp32
    python benchmarks/profile_update.py --algos sdac --device cuda --rows 30

Same model set-up as the benchmark (a replay buffer of random transitions of the right shapes),
after ``--warmup`` untimed updates (compilation, CUDA graph capture).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch as th
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_updates import PRECISIONS, fill_buffer, make_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sdac", "qvpo"], choices=["sdac", "qvpo"], help="diffusion algorithms")
    parser.add_argument("--env", default="Hopper-v5", help="environment whose shapes are used")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=PRECISIONS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=4, help="untimed updates first")
    parser.add_argument("--updates", type=int, default=2, help="profiled updates (SDAC: a multiple of its policy delay)")
    parser.add_argument("--rows", type=int, default=22, help="operators listed")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    sort_by = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    for algo in args.algos:
        for precision in args.precisions:
            model = make_model(algo, args.env, args.device, precision)
            fill_buffer(model, 10_000, np.random.default_rng(0))
            model.train(gradient_steps=args.warmup, batch_size=model.batch_size)
            with profile(activities=activities) as prof:
                model.train(gradient_steps=args.updates, batch_size=model.batch_size)
            header = f"{algo} {precision}, {args.env} shapes, {args.device}, {args.threads} thread(s)"
            print(f"=== {header}, {args.updates} updates")
            print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
