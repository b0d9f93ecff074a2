"""Mish on AMX hosts: compiled bias+Mish alone against interleaved with oneDNN (AMX) bf16 linears, by chunk size."""
import time, sys
import torch as th
from sb3_diffusion.common.kernels import COMPILED, ONEDNN
th.set_num_threads(1)
def timeit(fn, n=30):
    for _ in range(3): fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    ts.sort(); return ts[len(ts) // 2]
W = 256
for dt in (th.bfloat16, th.float32):
    w = (th.randn(W, W) * 0.06).to(dt); b = (th.randn(W) * 0.1).to(dt); zero = th.zeros(W, dtype=dt)
    for rows in (1024, 2048, 4096, 8192, 16384):
        x = th.randn(rows, W).to(dt); h = th.empty(rows, W, dtype=dt)
        x0 = x.clone()
        def mish_only():
            h.copy_(x0); COMPILED("bias_mish", h, b)
        def copy_only():
            h.copy_(x0)
        def lin_only():
            ONEDNN.linear(x, w, zero)
        def both():
            y = ONEDNN.linear(x, w, zero); COMPILED("bias_mish", y, b)
        def both3():  # three layers in a row, as in the chain
            y = x
            for _ in range(3):
                y = ONEDNN.linear(y, w, zero); COMPILED("bias_mish", y, b)
        tc, tm, tl, tb, t3 = timeit(copy_only), timeit(mish_only), timeit(lin_only), timeit(both), timeit(both3)
        el = rows * W
        print(f"{str(dt):15s} rows {rows:6d}: mish alone {el/(tm-tc)/1e9:5.2f} G/s ({(tm-tc)*1e6:7.0f} us), "
              f"linear {2*el*W/tl/1e9:6.0f} GFLOP/s ({tl*1e6:6.0f} us), linear+mish {tb*1e6:7.0f} us "
              f"(sum {(tl+tm-tc)*1e6:7.0f}), 3 layers {t3*1e6:7.0f} us (3 x sum {3*(tl+tm-tc)*1e6:7.0f})", flush=True)
