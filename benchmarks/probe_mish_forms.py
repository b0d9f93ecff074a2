"""
Why inductor's 512-bit code of the clamped Mish is slow on some Intel CPUs, and whether a form of the
same function without the slow part would speed up the updates (docs/performance.md, "Vector width of
the compiled kernels").

Two written forms of the exact one-``exp`` Mish, the same float32 values bit for bit:

- ``clamp``: ``networks.mish_expression``, the form the compiled kernels use: ``exp(clamp(x, -87, 20))``.
  Inductor writes ``clamp`` as NaN-propagating maximum and minimum (a compare into a mask register and
  a blend each), before the call of the vectorised ``exp``;
- ``relu``: the lower bound as ``x + relu(-87 - x)`` (a plain ``max`` with no mask), then selects after
  the ``exp`` that put ``e^-87`` below -87 and ``e^20`` above 20 (the values the clamped form has there).

For each vector width and dtype, one thread, a fused out-of-place bias+Mish on a 2048 x 256 tensor:
G elements/s of each form, with 0%, 0.1% and 1% of the inputs at -95 (where an unclamped ``exp``
returns a denormal and leaves its fast path), and whether the two forms agree bit for bit.

    python benchmarks/probe_mish_forms.py                      # fp32 and bf16, 256 and 512 bits
    python benchmarks/probe_mish_forms.py --dtypes fp32 --simdlen 512
"""

import argparse
import time

import torch as th

from sb3_diffusion.common.networks import MISH_EXP_MIN, mish_expression

DTYPES = {"fp32": th.float32, "bf16": th.bfloat16}
# e^-87 and e^20 in float32, as the vectorised exp computes them (checked below)
E_AT_MIN = 1.6458114537543937e-38
E_AT_MAX = 485165184.0


def mish_relu_clamp(x: th.Tensor) -> th.Tensor:
    """The ``relu`` form: no compare or select before the ``exp``; the clamped form's values."""
    e = (x + th.relu(MISH_EXP_MIN - x)).exp()
    e = th.where(x > 20.0, E_AT_MAX, th.where(x < MISH_EXP_MIN, E_AT_MIN, e))
    n = e * (e + 2.0)
    return x * (n / (n + 2.0))


FORMS = {"clamp": mish_expression, "relu": mish_relu_clamp}


def rate(fn, x: th.Tensor, bias: th.Tensor, calls: int = 100, repeats: int = 5) -> float:
    """Best G elements/s over ``repeats`` timings of ``calls`` calls."""
    fn(x, bias)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x, bias)
        best = min(best, (time.perf_counter() - start) / calls)
    return x.numel() / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--simdlen", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.0, 0.001, 0.01])
    args = parser.parse_args()
    th.set_num_threads(1)
    th._dynamo.config.recompile_limit = 64  # one lambda, compiled for every form, width and dtype
    at_clamps = th.tensor([MISH_EXP_MIN, 20.0]).repeat_interleave(64).exp()
    assert (at_clamps[:64] == E_AT_MIN).all() and (at_clamps[64:] == E_AT_MAX).all(), "exp at the clamps differs"

    g = th.Generator().manual_seed(0)
    base = th.randn(2048, 256, generator=g) * 3
    bias = th.randn(256, generator=g)
    inputs = {}
    for fraction in args.fractions:
        x = base.clone()
        x[th.rand(x.shape, generator=g) < fraction] = -95.0
        inputs[fraction] = x - bias  # so that x + bias is -95 there
    specials = th.tensor([float("inf"), -float("inf"), -1e30, -1e8, -174.1, -100.0, -87.3, -87.0, 20.0, 20.5, 89.0, 3e38])
    sweep = th.cat([th.linspace(-200, 40, 1 << 16), specials, th.randn(1 << 14, generator=g) * 30])
    sweep = sweep[: sweep.numel() // 256 * 256].view(-1, 256)

    print(f"fused bias+Mish, out of place, 2048 x 256, one thread; G elements/s by share of inputs at -95 {args.fractions}")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for simdlen in args.simdlen:
            outputs = {}
            for name, form in FORMS.items():
                fn = th.compile(lambda x, b, form=form: form(x + b), dynamic=False, options={"cpp.simdlen": simdlen})
                rates = [rate(fn, x.to(dtype), bias.to(dtype)) for x in inputs.values()]
                outputs[name] = fn(sweep.to(dtype), th.zeros(256, dtype=dtype))
                print(f"  {dtype_name} {simdlen:3d}-bit {name:5s}: " + ", ".join(f"{r:.2f}" for r in rates))
            a, b = (out.view(th.int16 if dtype == th.bfloat16 else th.int32) for out in outputs.values())
            print(f"  {dtype_name} {simdlen:3d}-bit: the two forms agree bit for bit: {th.equal(a, b)}")


if __name__ == "__main__":
    main()
