/* The table lookup and the optimisers' updates of embedding rows, for fp32 tables
 * on the CPU (reference/row_kernels.py compiles this file at start-up and says why
 * these exist).
 *
 * The rows `rows` (duplicates included, in batch order) are named by n = B * T
 * ids: sample b's id of table t is rows[b * T + t]. Their vectors (the lookup's
 * output, the gradient the updates read) are laid out as a (B, T, dim) view of a
 * larger buffer: vector i is at `i / T * sample_stride + i % T * dim` elements from
 * the start, so a lookup can write into a stack that holds other vectors too, and
 * an update reads its gradient where the backward left it, without a copy. They
 * are fp32 or bf16 (`bf16` nonzero).
 *
 * The kernels run in torch's own OpenMP thread pool: this library is loaded after
 * torch, so its libgomp.so.1 is the one torch has loaded, and its parallel regions
 * reuse torch's threads instead of competing with them for the cores. No two
 * threads ever write the same row, and each row's result is the same whatever the
 * thread count.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* A table row is read far from the last one: fetch the row needed this many vectors ahead
 * (the lookup's loop is short enough for the CPU to overlap a few rows by itself; measured,
 * benchmarks/RESULTS.md). */
#define AHEAD 16
#define GATHER_AHEAD 2

static inline void prefetch_row(const float *row, int64_t dim) {
  for (int64_t j = 0; j < dim; j += 16) __builtin_prefetch(row + j, 1);
}

static inline void prefetch_row_to_read(const float *row, int64_t dim) {
  for (int64_t j = 0; j < dim; j += 16) __builtin_prefetch(row + j, 0);
}

typedef struct {
  void *base;
  int64_t per_sample, sample_stride, dim;
  int bf16;
} Vectors;

/* Fewer than 2^32 vectors (row_kernels.py checks): a 32-bit division, several times faster than
 * a 64-bit one, which cost the Adagrads 15% of a DLRMv2 update. */
static inline int64_t vector_offset(const Vectors *v, int64_t i) {
  if (v->per_sample == 1) return i * v->sample_stride;
  const uint32_t sample = (uint32_t)i / (uint32_t)v->per_sample;
  return (int64_t)sample * v->sample_stride + ((int64_t)i - (int64_t)sample * v->per_sample) * v->dim;
}

static inline float bf16_to_float(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Round to nearest even, NaN to the quiet NaN 0x7FC0: torch's conversion (c10::BFloat16). */
static inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  const uint16_t rounded = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : rounded;
}

/* sum = vector i of g (add: sum += it), in fp32. */
static inline void load_vector(float *sum, const Vectors *g, int64_t i, int add) {
  const int64_t at = vector_offset(g, i), dim = g->dim;
  if (g->bf16) {
    const uint16_t *src = (const uint16_t *)g->base + at;
    if (add) {
#pragma omp simd
      for (int64_t j = 0; j < dim; j++) sum[j] += bf16_to_float(src[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < dim; j++) sum[j] = bf16_to_float(src[j]);
    }
  } else {
    const float *src = (const float *)g->base + at;
    if (add) {
#pragma omp simd
      for (int64_t j = 0; j < dim; j++) sum[j] += src[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < dim; j++) sum[j] = src[j];
    }
  }
}

/* dst = src rounded to bf16. With AVX512_BF16 one instruction per 16 values: the loop stays
 * short, and the rows' loads overlap (the portable loop made the lookup 1.5x slower). It rounds
 * alike but reads subnormals as zero, so a row that holds one is done again the portable way.
 * A NaN stays a NaN, with the payload's top bits. */
static inline void row_to_bf16(uint16_t *dst, const float *src, int64_t dim) {
  int64_t j = 0;
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
  __mmask16 subnormal = 0;
  for (; j + 16 <= dim; j += 16) {
    const __m512 v = _mm512_loadu_ps(src + j);
    subnormal |= _mm512_fpclass_ps_mask(v, 0x20);
    _mm256_storeu_si256((__m256i *)(dst + j), (__m256i)_mm512_cvtneps_pbh(v));
  }
  if (subnormal) j = 0;
#endif
#pragma omp simd
  for (int64_t k = j; k < dim; k++) dst[k] = float_to_bf16(src[k]);
}

/* The lookup: vector i of out = table row rows[i], cast to bf16 if out is bf16. */
void gather_rows(const float *w, const int64_t *rows, int64_t n, void *out, int64_t per_sample,
                 int64_t sample_stride, int64_t dim, int bf16, int threads) {
  const Vectors o = {out, per_sample, sample_stride, dim, bf16};
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    if (i + GATHER_AHEAD < n) prefetch_row_to_read(w + rows[i + GATHER_AHEAD] * dim, dim);
    const float *wr = w + rows[i] * dim;
    const int64_t at = vector_offset(&o, i);
    if (bf16) {
      row_to_bf16((uint16_t *)out + at, wr, dim);
    } else {
      memcpy((float *)out + at, wr, (size_t)dim * sizeof(float));
    }
  }
}

/* SGD: w[rows[i]] += alpha * g[i], each row's updates applied in batch order. Thread t
 * of T updates the rows r with r % T == t, so the update needs no sort. */
void sgd_rows(float *w, const int64_t *rows, int64_t n, const void *grad, int64_t per_sample, int64_t sample_stride,
              int64_t dim, int bf16, float alpha, int threads) {
  const Vectors g = {(void *)grad, per_sample, sample_stride, dim, bf16};
#pragma omp parallel num_threads(threads)
  {
    const uint64_t t = (uint64_t)omp_get_thread_num(), T = (uint64_t)omp_get_num_threads();
    for (int64_t i = 0; i < n; i++) {
      if (i + AHEAD < n && (uint64_t)rows[i + AHEAD] % T == t) prefetch_row(w + rows[i + AHEAD] * dim, dim);
      const int64_t r = rows[i];
      if ((uint64_t)r % T != t) continue;
      float *wr = w + r * dim;
      const int64_t at = vector_offset(&g, i);
      if (bf16) {
        const uint16_t *gr = (const uint16_t *)grad + at;
#pragma omp simd
        for (int64_t j = 0; j < dim; j++) wr[j] += alpha * bf16_to_float(gr[j]);
      } else {
        const float *gr = (const float *)grad + at;
#pragma omp simd
        for (int64_t j = 0; j < dim; j++) wr[j] += alpha * gr[j];
      }
    }
  }
}

/* The Adagrads update a row from the sum of its gradient rows. `sorted` holds the rows
 * in ascending order and order[k] the gradient row of sorted[k] (a stable sort, so a
 * row's gradients are summed in batch order). Each thread takes a share of the
 * positions, moved to the start of a run of equal rows so that a run is never split. */
static void run_share(const int64_t *sorted, int64_t n, int64_t t, int64_t T, int64_t *lo, int64_t *hi) {
  int64_t a = n * t / T, b = n * (t + 1) / T;
  while (a > 0 && a < n && sorted[a] == sorted[a - 1]) a++;
  while (b > 0 && b < n && sorted[b] == sorted[b - 1]) b++;
  *lo = a;
  *hi = b;
}

/* sum = the gradient rows of the run starting at k; returns the position after the run. */
static inline int64_t sum_run(float *sum, const int64_t *sorted, const int64_t *order, const Vectors *g, int64_t k,
                              int64_t hi) {
  const int64_t r = sorted[k];
  load_vector(sum, g, order[k], 0);
  for (k++; k < hi && sorted[k] == r; k++) load_vector(sum, g, order[k], 1);
  return k;
}

/* Row-wise Adagrad (REFERENCE.md): acc[r] += mean(sum^2); w[r] -= lr * sum / (sqrt(acc[r]) + eps). */
void rowwise_adagrad_rows(float *w, float *acc, const int64_t *sorted, const int64_t *order, int64_t n,
                          const void *grad, int64_t per_sample, int64_t sample_stride, int64_t dim, int bf16, float lr,
                          float eps, int threads) {
  const Vectors g = {(void *)grad, per_sample, sample_stride, dim, bf16};
#pragma omp parallel num_threads(threads)
  {
    int64_t lo, hi;
    run_share(sorted, n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    float sum[dim];
    for (int64_t k = lo; k < hi;) {
      const int64_t r = sorted[k];
      if (k + AHEAD < hi) prefetch_row(w + sorted[k + AHEAD] * dim, dim);
      k = sum_run(sum, sorted, order, &g, k, hi);
      float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
      for (int64_t j = 0; j < dim; j++) squares += sum[j] * sum[j];
      const float a = acc[r] + squares / (float)dim;
      acc[r] = a;
      const float scale = -lr * (1.0f / (sqrtf(a) + eps));
      float *wr = w + r * dim;
#pragma omp simd
      for (int64_t j = 0; j < dim; j++) wr[j] += scale * sum[j];
    }
  }
}

/* Element-wise Adagrad, torch's sparse formula: s[r] += sum^2; w[r] -= lr * (sum / (sqrt(s[r]) + eps)). */
void adagrad_rows(float *w, float *state, const int64_t *sorted, const int64_t *order, int64_t n, const void *grad,
                  int64_t per_sample, int64_t sample_stride, int64_t dim, int bf16, float lr, float eps, int threads) {
  const Vectors g = {(void *)grad, per_sample, sample_stride, dim, bf16};
#pragma omp parallel num_threads(threads)
  {
    int64_t lo, hi;
    run_share(sorted, n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    float sum[dim];
    for (int64_t k = lo; k < hi;) {
      const int64_t r = sorted[k];
      if (k + AHEAD < hi) {
        prefetch_row(w + sorted[k + AHEAD] * dim, dim);
        prefetch_row(state + sorted[k + AHEAD] * dim, dim);
      }
      k = sum_run(sum, sorted, order, &g, k, hi);
      float *wr = w + r * dim, *sr = state + r * dim;
#pragma omp simd
      for (int64_t j = 0; j < dim; j++) {
        const float s = sr[j] + sum[j] * sum[j];
        sr[j] = s;
        wr[j] += -lr * (sum[j] / (sqrtf(s) + eps));
      }
    }
  }
}
