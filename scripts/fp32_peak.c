/* The host's fp32 FMA peak, measured: the denominator of the GFLOP/s figures in
 * docs/benchmarks.md. Each thread runs 20 independent chains of fused multiply-adds (enough to
 * hide the FMA latency on every x86 core we know) for a fixed count and reports GFLOP/s.
 *
 *   gcc -O3 -march=native -pthread scripts/fp32_peak.c -o /tmp/fp32_peak && /tmp/fp32_peak 2
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 20
#define ITERS 200000000L

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM _mm512_reduce_add_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(__m256 v) { float f[8]; _mm256_storeu_ps(f, v); return f[0]; }
#endif

static void *run(void *out) {
  vec acc[CHAINS];
  vec a = SET1(0.999999f), b = SET1(1e-7f);
  for (int i = 0; i < CHAINS; i++) acc[i] = SET1((float)i);
  for (long n = 0; n < ITERS; n++) {
#pragma GCC unroll 32  /* keeps every accumulator in a register */
    for (int i = 0; i < CHAINS; i++) acc[i] = FMA(acc[i], a, b);
  }
  vec s = acc[0];
  for (int i = 1; i < CHAINS; i++) s = ADD(s, acc[i]);
  *(float *)out = SUM(s);  /* keeps the work alive */
  return NULL;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  pthread_t tid[64];
  float sink[64];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, run, &sink[t]);
  for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  double flops = 2.0 * LANES * CHAINS * (double)ITERS * threads;
  printf("%d threads, %d-lane FMA: %.1f GFLOP/s (%.2f s, sink %g)\n", threads, LANES,
         flops / s / 1e9, s, sink[0]);
  return 0;
}
