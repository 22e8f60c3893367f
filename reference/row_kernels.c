/* The optimisers' updates of embedding rows from a sparse gradient, for fp32
 * tables on the CPU (reference/row_kernels.py compiles this file at start-up and
 * says why these exist).
 *
 * A gradient is n rows of `dim` floats, `g`, for the table rows `rows` (duplicates
 * included, in batch order). The kernels run in torch's own OpenMP thread pool: this
 * library is loaded after torch, so its libgomp.so.1 is the one torch has loaded,
 * and its parallel regions reuse torch's threads instead of competing with them
 * for the cores. No two threads ever write the same row, and each row's result is
 * the same whatever the thread count.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>

/* A table row is read far from the last one: fetch the row needed this many gradient rows ahead. */
#define AHEAD 16

static inline void prefetch_row(const float *row, int64_t dim) {
  for (int64_t j = 0; j < dim; j += 16) __builtin_prefetch(row + j, 1);
}

/* SGD: w[rows[i]] += alpha * g[i], each row's updates applied in batch order. Thread t
 * of T updates the rows r with r % T == t, so the update needs no sort. */
void sgd_rows(float *w, int64_t dim, const int64_t *rows, const float *g, int64_t n, float alpha, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const uint64_t t = (uint64_t)omp_get_thread_num(), T = (uint64_t)omp_get_num_threads();
    for (int64_t i = 0; i < n; i++) {
      if (i + AHEAD < n && (uint64_t)rows[i + AHEAD] % T == t) prefetch_row(w + rows[i + AHEAD] * dim, dim);
      const int64_t r = rows[i];
      if ((uint64_t)r % T != t) continue;
      float *wr = w + r * dim;
      const float *gr = g + i * dim;
#pragma omp simd
      for (int64_t j = 0; j < dim; j++) wr[j] += alpha * gr[j];
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
static inline int64_t sum_run(float *sum, int64_t dim, const int64_t *sorted, const int64_t *order, const float *g,
                              int64_t k, int64_t hi) {
  const int64_t r = sorted[k];
  const float *g0 = g + order[k] * dim;
  for (int64_t j = 0; j < dim; j++) sum[j] = g0[j];
  for (k++; k < hi && sorted[k] == r; k++) {
    const float *gk = g + order[k] * dim;
#pragma omp simd
    for (int64_t j = 0; j < dim; j++) sum[j] += gk[j];
  }
  return k;
}

/* Row-wise Adagrad (REFERENCE.md): acc[r] += mean(sum^2); w[r] -= lr * sum / (sqrt(acc[r]) + eps). */
void rowwise_adagrad_rows(float *w, float *acc, int64_t dim, const int64_t *sorted, const int64_t *order,
                          const float *g, int64_t n, float lr, float eps, int threads) {
#pragma omp parallel num_threads(threads)
  {
    int64_t lo, hi;
    run_share(sorted, n, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    float sum[dim];
    for (int64_t k = lo; k < hi;) {
      const int64_t r = sorted[k];
      if (k + AHEAD < hi) prefetch_row(w + sorted[k + AHEAD] * dim, dim);
      k = sum_run(sum, dim, sorted, order, g, k, hi);
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
void adagrad_rows(float *w, float *state, int64_t dim, const int64_t *sorted, const int64_t *order, const float *g,
                  int64_t n, float lr, float eps, int threads) {
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
      k = sum_run(sum, dim, sorted, order, g, k, hi);
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
