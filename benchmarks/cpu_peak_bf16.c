/*
 * Peak of one core's fp32 FMA (VFMADD231PS zmm) and bf16 dot product (VDPBF16PS zmm, AVX512-BF16),
 * 12 independent accumulators each, timed in process CPU time. Shows whether bf16 arithmetic
 * without AMX can be faster than fp32 on this CPU (docs/precision.md).
 *
 *     gcc -O2 -mavx512f -mavx512bf16 benchmarks/cpu_peak_bf16.c -o /tmp/cpu_peak_bf16 && /tmp/cpu_peak_bf16
 *
 * FLOPs: an fp32 FMA is 2 per lane (16 lanes); a VDPBF16PS is 2 multiply-adds per fp32 lane (64).
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define ACCUMULATORS 12

int main(void) {
    const long iterations = 100000000;
    __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
#define DECLARE(i) __m512 c##i = _mm512_set1_ps((float)i);
    EACH(DECLARE)
    double start = cpu_seconds();
    for (long i = 0; i < iterations; i++) {
#define FMA(i) c##i = _mm512_fmadd_ps(a, b, c##i);
        EACH(FMA)
        __asm__ volatile("" : "+v"(a)); /* keep the loop */
    }
    double fp32_seconds = cpu_seconds() - start;
    __m512bh ab = (__m512bh)_mm512_set1_epi16(0x3f80), bb = (__m512bh)_mm512_set1_epi16(0x3f80);
    start = cpu_seconds();
    for (long i = 0; i < iterations; i++) {
#define DOT(i) c##i = _mm512_dpbf16_ps(c##i, ab, bb);
        EACH(DOT)
        __asm__ volatile("" : "+v"(ab));
    }
    double bf16_seconds = cpu_seconds() - start;
    __m512 sum = _mm512_setzero_ps();
#define SUM(i) sum = _mm512_add_ps(sum, c##i);
    EACH(SUM)
    float out[16];
    _mm512_storeu_ps(out, sum);
    double fp32 = iterations * ACCUMULATORS * 32.0 / fp32_seconds / 1e9;
    double bf16 = iterations * ACCUMULATORS * 64.0 / bf16_seconds / 1e9;
    printf("fp32 VFMADD231PS zmm: %.1f GFLOP/s; bf16 VDPBF16PS zmm: %.1f GFLOP/s; bf16 / fp32 = %.2f (checksum %g)\n",
           fp32, bf16, bf16 / fp32, out[0]);
    return 0;
}
