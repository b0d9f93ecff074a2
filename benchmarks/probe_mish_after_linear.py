"""
Does a compiled bias+Mish pass cost more right after a oneDNN linear (AMX on CPUs that have it) than
alone? One thread, 256-wide layers, by chunk rows: the Mish pass alone, the linear alone, the two in
a row, and three such layers in a row, against the sums of the parts (session 8's AMX question in
docs/precision.md).

    python benchmarks/probe_mish_after_linear.py --dtypes bf16 fp32 --rows 1024 2048 4096 8192
"""

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch as th

from sb3_diffusion.common.kernels import COMPILED, ONEDNN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_updates import _timed

DTYPES = {"fp32": th.float32, "bf16": th.bfloat16}
WIDTH = 256


def median_seconds(fn: Callable[[], object], repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    return statistics.median(_timed(fn, th.device("cpu"))[0] for _ in range(repeats))


def probe(dtype: th.dtype, rows: int) -> str:
    weight = (th.randn(WIDTH, WIDTH) * 0.06).to(dtype)
    bias = (th.randn(WIDTH) * 0.1).to(dtype)
    zero = th.zeros(WIDTH, dtype=dtype)
    source = th.randn(rows, WIDTH).to(dtype)
    work = th.empty_like(source)

    def copy_only() -> None:
        work.copy_(source)

    def mish_after_copy() -> None:
        work.copy_(source)
        COMPILED("bias_mish", work, bias)

    def linear_only() -> None:
        ONEDNN.linear(source, weight, zero)

    def layers(count: int) -> None:
        h = source
        for _ in range(count):
            h = ONEDNN.linear(h, weight, zero)
            COMPILED("bias_mish", h, bias)

    t_copy, t_mish = median_seconds(copy_only), median_seconds(mish_after_copy)
    t_linear = median_seconds(linear_only)
    t_one, t_three = median_seconds(lambda: layers(1)), median_seconds(lambda: layers(3))
    t_mish -= t_copy
    elements = rows * WIDTH
    parts = t_linear + t_mish
    return (
        f"{dtype!s:15s} rows {rows:6d}: mish alone {elements / t_mish / 1e9:5.2f} G/s ({t_mish * 1e6:7.0f} us), "
        f"linear {2 * elements * WIDTH / t_linear / 1e9:6.0f} GFLOP/s ({t_linear * 1e6:6.0f} us), "
        f"linear+mish {t_one * 1e6:7.0f} us (sum {parts * 1e6:7.0f}), "
        f"3 layers {t_three * 1e6:7.0f} us (3 x sum {3 * parts * 1e6:7.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384])
    args = parser.parse_args()
    th.set_num_threads(1)
    for name in args.dtypes:
        for rows in args.rows:
            print(probe(DTYPES[name], rows), flush=True)


if __name__ == "__main__":
    main()
