/*
 * Lets MKL take its Intel code paths on an AMD CPU (for an LD_PRELOAD, not linked into anything).
 *
 * PyTorch's CPU wheels run fp32 matmuls (torch.mm, nn.Linear's addmm: SB3's networks and every
 * gradient step) through MKL. MKL asks the CPU for its vendor and, on an AMD CPU, runs a generic code
 * path: measured on an AMD EPYC of the Zen 5 generation (one thread, 512x1024 @ 1024x1024 and
 * 16384x256 @ 256x256), 79-95 GFLOP/s, against 183-213 with this preload, about what oneDNN reaches
 * on the same CPU.
 * docs/performance.md ("AMD CPUs: MKL's generic path") has the measurements and the caveats.
 *
 * Build and use (Linux, any C compiler):
 *
 *     gcc -shared -fPIC -O2 benchmarks/mkl_intel_path.c -o libmkl_intel_path.so
 *     LD_PRELOAD=$PWD/libmkl_intel_path.so python -m rl_zoo3.train --algo sdac --env Pendulum-v1
 *
 * It answers MKL's two internal queries: "is this an Intel CPU" (yes) and "is it a Knights Mill
 * Xeon Phi" (no, so that MKL does not pick that chip's instructions). MKL then chooses its kernels
 * from the instruction sets the CPU reports, as on an Intel CPU. Results stay fp32 results (the
 * summation order of a kernel differs, as between any two CPUs). These are MKL's internal symbols,
 * not an API: a future MKL may rename them, and the preload then does nothing.
 */

int mkl_serv_intel_cpu_true(void) { return 1; }

int mkl_serv_cpuisknm(void) { return 0; }
