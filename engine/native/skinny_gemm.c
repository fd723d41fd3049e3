/* cblas_sgemm for skinny products, preloaded ahead of OpenBLAS (engine/fast_blas.py).
 *
 * MLX's CPU backend runs every float32 matmul through cblas_sgemm. A decode step of an
 * LLM multiplies a few activation rows by each weight matrix; OpenBLAS's GEMM reads the
 * weights at a third of the memory bandwidth for such shapes (10 GB/s against 28-40 GB/s
 * for GEMV on this CPU), and decode is bound by reading the weights. This kernel reads
 * each weight row once and dots it with every activation row, so M rows cost about as
 * much as one, and each output element is summed in the same order whatever M is: a
 * batched or speculative verify forward gives bit-identical rows to a one-row forward.
 * It also takes a decode step's attention products, a few small ones per sequence and
 * KV head, which OpenBLAS answers slowly for their size (~8 us a call). And it takes
 * products whose weights are int8 (engine/int8_linear.py, marked by alpha), a quarter
 * of the bytes. Every other call goes to the next cblas_sgemm in link order (OpenBLAS).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
#if defined(__FMA__) || defined(__AVX2__)
#include <immintrin.h>
#endif

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

#ifndef SKINNY_MAX_M
#define SKINNY_MAX_M 16
#endif
#define SMALL_NN_WEIGHTS (1L << 18) /* values of an attention step, up to 1 MB */
#define LANES 8
#define MAX_MR 8 /* activation rows per tile */
#define MAX_NR 8 /* weight rows per tile */
#ifndef SKINNY_PARALLEL_WEIGHTS
#define SKINNY_PARALLEL_WEIGHTS (1L << 18) /* 1 MB of float32 weights */
#endif
/* alpha of a product with int8 weights (engine/int8_linear.py: MARK): 1 + 5 ulp. */
#define INT8_ALPHA 0x1.00000ap+0f
enum { F32, I8 }; /* weight formats */
#define PANEL_BYTES (32L << 20) /* int8 weights widened at a time for OpenBLAS */
#define TASKS_PER_THREAD 8 /* a parallel product's pieces (see skinny) */
/* How far ahead of its reads a tile of several activation rows asks for weights. Such a
 * tile computes long enough per cache line that the hardware prefetcher stops running
 * ahead, and its reads and its multiplies no longer overlap: 8 rows read the weights at
 * 12-14 GB/s, 20-24 with this (2-core Sapphire Rapids, docs/BENCHMARKS.md). One row is
 * bound by memory and the hardware keeps up; prefetching there gained nothing. */
#define PREFETCH_BYTES 4096

typedef float v8 __attribute__((vector_size(LANES * sizeof(float))));
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);

static sgemm_fn next_sgemm;
/* Read through ctypes by tests (did the fast path run?) and by `silica bench --profile`
 * (where decode time goes): calls and nanoseconds in this kernel and in OpenBLAS. */
long silica_skinny_calls, silica_skinny_ns, silica_blas_calls, silica_blas_ns;
long silica_int8_calls; /* products with int8 weights, also counted above */

static long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline v8 load8(const float *p) {
  v8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* Weights i..i+7 of w as float32. WF (a literal at every call) is their format:
 * int8 weights are integers, widened exactly; a row's scale is applied to its sum
 * (in store). */
static inline v8 loadw(const void *w, size_t i, const int WF) {
  if (WF == F32) return load8((const float *)w + i);
#if defined(__AVX2__)
  __m128i q = _mm_loadl_epi64((const __m128i *)((const int8_t *)w + i));
  return (v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
#else
  v8 v;
  for (int l = 0; l < LANES; l++) v[l] = ((const int8_t *)w)[i + l];
  return v;
#endif
}

static inline float weight(const void *w, size_t i, const int WF) {
  return WF == F32 ? ((const float *)w)[i] : ((const int8_t *)w)[i];
}

/* Row n of weights with rows ldw apart. */
static inline const void *wrow(const void *w, size_t n, int ldw, const int WF) {
  return (const char *)w + n * ldw * (WF == F32 ? sizeof(float) : 1);
}

/* An explicit fused multiply-add, so no tile's accumulation differs from another's by
 * the compiler's choice to contract (or not) a multiply and an add. */
static inline v8 fma8(v8 a, v8 b, v8 c) {
#if defined(__FMA__)
  return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  v8 r;
  for (int l = 0; l < LANES; l++) r[l] = __builtin_fmaf(a[l], b[l], c[l]);
  return r;
#endif
}

/* Every output element is summed the same way, whichever tile computes it: eight lanes
 * over k in steps of eight, a fixed pairwise lane reduction, then the k tail in order.
 * That is what makes row m's result independent of M and of the tiling. */
static inline float finish(v8 s, const float *x, const void *w, int k, int K,
                           const int WF) {
  float t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; k < K; k++) t = __builtin_fmaf(x[k], weight(w, k, WF), t);
  return t;
}

/* int8 products find their row's scale in C (engine/int8_linear.py puts it there). */
static inline void store(float *c, float value, float alpha, float beta, const int WF) {
  if (WF == I8)
    *c *= value;
  else
    *c = beta == 0.0f ? alpha * value : alpha * value + beta * *c;
}

/* An MR x NR tile: activation rows x[0..MR) against weight rows w[0..NR). MR and NR
 * are literal constants at every call, so the accumulators stay in registers (MR x NR
 * accumulators + MR + NR operands must fit the 16 vector registers). */
static inline __attribute__((always_inline)) void
tile(const int MR, const int NR, const int WF, const float *x, int ldx, const void *w,
     int ldw, int K, float alpha, float beta, float *c, int ldc) {
  v8 acc[MAX_MR][MAX_NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++) acc[i][j] = (v8){0};
  int k = 0;
  for (; k + LANES <= K; k += LANES) {
    v8 wv[MAX_NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; j++) {
      const char *row = wrow(w, j, ldw, WF);
      if (MR > 1)
        __builtin_prefetch(row + k * (WF == F32 ? sizeof(float) : 1) + PREFETCH_BYTES);
      wv[j] = loadw(row, k, WF);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      v8 xv = load8(x + (size_t)i * ldx + k);
#pragma GCC unroll 8
      for (int j = 0; j < NR; j++) acc[i][j] = fma8(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++)
      store(c + (size_t)i * ldc + j,
            finish(acc[i][j], x + (size_t)i * ldx, wrow(w, j, ldw, WF), k, K, WF),
            alpha, beta, WF);
}

/* The tile shape for M activation rows of length K: NR weight rows per step, taken by
 * blocks of up to MR activation rows. Measured on this 2-core Zen 3 (AVX2), with the
 * weights coming from memory as in decoding (docs/BENCHMARKS.md):
 * - One row is bound by memory and wants many weight streams (1 x 8).
 * - From 4 rows on, with short rows (K <= 1024, so a block of 8 activation rows stays
 *   in L1), one weight row against all of them (M x 1, one weight stream) reads the
 *   weights 15-30% faster than wider tiles.
 * - Otherwise the most accumulators that fit the 16 vector registers (3 x 4, 4 x 3)
 *   did best; there a block of activation rows outgrows L1, and reusing each load
 *   across several weight rows pays.
 * - int8 weights are widened in a register each, so up to 3 rows take narrower tiles
 *   (1 x 6, 2 x 4, 3 x 3): 6-20% faster than the float32 ones, interleaved. */
static void plan(int M, int K, int WF, int *nr, int *mr) {
  static const int NR[] = {0, 8, 6, 4, 3, 4, 4, 3, 3};
  if (WF == I8 && M <= 3) {
    static const int NR_I8[] = {0, 6, 4, 3};
    *nr = NR_I8[M];
    *mr = M;
    return;
  }
  if (M >= 4 && K <= 1024) {
    *nr = 1;
    *mr = MAX_MR;
    return;
  }
  *nr = M <= 8 ? NR[M] : 3;
  *mr = *nr == 8 ? 1 : *nr == 6 ? 2 : *nr == 4 ? 3 : 4;
}

/* One MR x NR tile with MR, NR known at run time (from plan): each case is a tile with
 * literal sizes, so its accumulators stay in registers. */
static void block(int MR, int NR, int WF, const float *x, int ldx, const void *w,
                  int ldw, int K, float alpha, float beta, float *c, int ldc) {
#define TILE(mr, nr)                                                                   \
  case mr * 16 + nr:                                                                   \
    if (WF == I8)                                                                      \
      tile(mr, nr, I8, x, ldx, w, ldw, K, alpha, beta, c, ldc);                        \
    else                                                                               \
      tile(mr, nr, F32, x, ldx, w, ldw, K, alpha, beta, c, ldc);                       \
    return;
  switch (MR * 16 + NR) {
    TILE(1, 8) TILE(2, 6) TILE(1, 6) TILE(3, 4) TILE(2, 4) TILE(1, 4)
    TILE(4, 3) TILE(3, 3) TILE(2, 3) TILE(1, 3)
    TILE(8, 1) TILE(7, 1) TILE(6, 1) TILE(5, 1) TILE(4, 1) TILE(3, 1) TILE(2, 1)
    TILE(1, 1)
  }
#undef TILE
  for (int i = 0; i < MR; i++) /* not reached: plan() only makes the shapes above */
    for (int j = 0; j < NR; j++)
      block(1, 1, WF, x + (size_t)i * ldx, ldx, wrow(w, j, ldw, WF), ldw, K, alpha, beta,
            c + (size_t)i * ldc + j, ldc);
}

/* Weight rows [n0, n1) against all M activation rows. */
static void rows(int n0, int n1, int M, const float *A, int lda, const void *B, int ldb,
                 int WF, int K, float alpha, float beta, float *C, int ldc) {
  int nr, mr, n = n0;
  plan(M, K, WF, &nr, &mr);
  for (; n + nr <= n1; n += nr)
    for (int m = 0; m < M; m += mr)
      block(M - m < mr ? M - m : mr, nr, WF, A + (size_t)m * lda, lda,
            wrow(B, n, ldb, WF), ldb, K, alpha, beta, C + (size_t)m * ldc + n, ldc);
  for (; n < n1; n++)
    for (int m = 0; m < M; m++)
      block(1, 1, WF, A + (size_t)m * lda, lda, wrow(B, n, ldb, WF), ldb, K, alpha, beta,
            C + (size_t)m * ldc + n, ldc);
}

/* C[m, n] = alpha * A[m, :] . B[n, :] + beta * C[m, n]  (A: M x K, B: N x K). Waking a
 * second thread costs more than a small matrix takes to read, so those run on one. The
 * weight rows are cut into TASKS_PER_THREAD tasks per thread, each a multiple of the
 * tile width, handed out as threads come free: while the engine serves, its Python
 * threads take a core now and then, and with a static split the other thread waited
 * at the barrier for the preempted one's share (8 streams decoded ~10% slower). */
static void skinny(int M, int N, int K, float alpha, const float *A, int lda,
                   const void *B, int ldb, int WF, float beta, float *C, int ldc) {
  if ((long)N * K < SKINNY_PARALLEL_WEIGHTS) {
    rows(0, N, M, A, lda, B, ldb, WF, K, alpha, beta, C, ldc);
    return;
  }
  int nr, mr;
  plan(M, K, WF, &nr, &mr);
  int split = TASKS_PER_THREAD * omp_get_max_threads();
  int per = (N + split - 1) / split;
  int chunk = (per + nr - 1) / nr * nr;
  int tasks = (N + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int t = 0; t < tasks; t++) {
    int n0 = t * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
    rows(n0, n1, M, A, lda, B, ldb, WF, K, alpha, beta, C, ldc);
  }
}

/* C = alpha * A B + beta * C with B K x N (not transposed) and few, short rows: an
 * attention step's probabilities times its values. Each output vector sums B's rows
 * scaled by A's entries in k order, so left padding (zero probabilities first) leaves a
 * row's result bit-identical to the same row alone. */
static void small_nn(int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
  for (int m = 0; m < M; m++) {
    const float *a = A + (size_t)m * lda;
    float *c = C + (size_t)m * ldc;
    int n = 0;
    for (; n + 8 * LANES <= N; n += 8 * LANES) {
      v8 acc[8] = {{0}};
      for (int k = 0; k < K; k++) {
        v8 s = (v8){0} + a[k];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
          acc[j] = fma8(s, load8(B + (size_t)k * ldb + n + j * LANES), acc[j]);
      }
      for (int j = 0; j < 8 * LANES; j++)
        store(c + n + j, acc[j / LANES][j % LANES], alpha, beta, F32);
    }
    for (; n + LANES <= N; n += LANES) {
      v8 acc = {0};
      for (int k = 0; k < K; k++)
        acc = fma8((v8){0} + a[k], load8(B + (size_t)k * ldb + n), acc);
      for (int j = 0; j < LANES; j++) store(c + n + j, acc[j], alpha, beta, F32);
    }
    for (; n < N; n++) {
      float t = 0.0f;
      for (int k = 0; k < K; k++) t = __builtin_fmaf(a[k], B[(size_t)k * ldb + n], t);
      store(c + n, t, alpha, beta, F32);
    }
  }
}

/* Which products this file computes: row-major, A not transposed, at most
 * SKINNY_MAX_M rows; B transposed (weights, or an attention step's keys), or B not
 * transposed and small (an attention step's values). Small ones run on this thread:
 * waking OpenBLAS's or OpenMP's threads costs more than they take. */
static int taken(int order, int trans_a, int trans_b, int M, int N, int K) {
  if (order != ROW_MAJOR || trans_a != NO_TRANS || M < 1 || M > SKINNY_MAX_M) return 0;
  return trans_b == TRANS || (trans_b == NO_TRANS && (long)N * K <= SMALL_NN_WEIGHTS);
}

static sgemm_fn blas(void) {
  if (!next_sgemm) next_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
  return next_sgemm;
}

/* Many rows (a prompt) are bound by compute, not by reading weights: OpenBLAS takes
 * them, widened to float32 times the scales C holds, in panels of weight rows as large
 * as PANEL_BYTES allows (OpenBLAS repacks A for every call). */
static void widened(int M, int N, int K, const float *A, const int8_t *B, int ldb,
                    float *C, int ldc) {
  long fit = PANEL_BYTES / ((long)sizeof(float) * K);
  int rows = fit < 1 ? 1 : fit < N ? (int)fit : N;
  float *panel = malloc(sizeof(float) * rows * (size_t)K);
  if (!panel) {
    fprintf(stderr, "skinny_gemm: out of memory widening int8 weights\n");
    abort();
  }
  for (int n0 = 0; n0 < N; n0 += rows) {
    int n = N - n0 < rows ? N - n0 : rows;
#pragma omp parallel for schedule(static)
    for (int j = 0; j < n; j++)
      for (int k = 0; k < K; k++)
        panel[(size_t)j * K + k] = B[(size_t)(n0 + j) * ldb + k] * C[n0 + j];
    blas()(ROW_MAJOR, NO_TRANS, TRANS, M, n, K, 1.0f, A, K, panel, K, 0.0f, C + n0, ldc);
  }
  free(panel);
}

/* C[m, n] *= A[m, :] . B[n, :] for m < M4 / 4, B's rows int8 and C holding row n's
 * scale on entry. MLX has no product of float32 by int8 that reads at memory speed,
 * so engine/int8_linear.py passes B's bytes as float32 slots (N x K4), A reshaped to
 * match (M4 x K4, each real row 4 of these), and marks the call by alpha. The real
 * shapes are read back here; C's first M4 / 4 rows get the results, the rest is left. */
static void int8_product(int order, int trans_a, int trans_b, int M4, int N, int K4,
                         const float *A, int lda4, const float *B, int ldb4, float *C,
                         int ldc) {
  if (order != ROW_MAJOR || trans_a != NO_TRANS || trans_b != TRANS || M4 % 4 ||
      lda4 != K4) {
    fprintf(stderr, "skinny_gemm: an int8 product in a layout engine/int8_linear.py "
                    "does not make (order %d, trans %d/%d, M %d, K %d, lda %d)\n",
            order, trans_a, trans_b, M4, K4, lda4);
    abort();
  }
  int M = M4 / 4, K = 4 * K4, ldb = 4 * ldb4;
  if (M <= SKINNY_MAX_M)
    skinny(M, N, K, 1.0f, A, K, B, ldb, I8, 1.0f, C, ldc);
  else
    widened(M, N, K, A, (const int8_t *)B, ldb, C, ldc);
  __atomic_add_fetch(&silica_int8_calls, 1, __ATOMIC_RELAXED);
}

void cblas_sgemm(int order, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C,
                 int ldc) {
  int int8 = alpha == INT8_ALPHA;
  if (int8 || taken(order, trans_a, trans_b, M, N, K)) {
    long start = now_ns();
    if (int8)
      int8_product(order, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc);
    else if (trans_b == NO_TRANS)
      small_nn(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
      skinny(M, N, K, alpha, A, lda, B, ldb, F32, beta, C, ldc);
    __atomic_add_fetch(&silica_skinny_ns, now_ns() - start, __ATOMIC_RELAXED);
    __atomic_add_fetch(&silica_skinny_calls, 1, __ATOMIC_RELAXED);
    return;
  }
  long start = now_ns();
  blas()(order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  __atomic_add_fetch(&silica_blas_ns, now_ns() - start, __ATOMIC_RELAXED);
  __atomic_add_fetch(&silica_blas_calls, 1, __ATOMIC_RELAXED);
}
