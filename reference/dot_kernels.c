/* The dot interaction on the CPU, forward and backward, one sample at a time
 * (reference/dot_kernels.py compiles this file at start-up and says why it exists): in bf16 on
 * AMX's tiles (dot_forward, dot_backward), or with AVX512_BF16's dot product of pairs for CPUs
 * without AMX, such as AMD's Zen 4 and Zen 5 (dot_forward_avx512, dot_backward_avx512); in fp32
 * with AVX-512's fused multiply-adds (dot_forward_fp32, dot_backward_fp32).
 *
 * A sample's n vectors of `dim` values (the bottom MLP's output first, then the pooled
 * embeddings) are the rows of its (n, dim) slice of a contiguous (B, n, dim) stack. Its output
 * row is [vector 0, the dot products of the pairs (i, j), j < i (j <= i with self-interaction),
 * row-major: (1,0), (2,0), (2,1), ...], dim + P values of the stack's dtype. bf16 products are
 * summed in fp32 and rounded to bf16 once, to nearest even; both bf16 instruction sets read
 * subnormal bf16 values as zero, as oneDNN's bf16 GEMMs behind torch.bmm do on these CPUs. fp32
 * is summed in fp32, as torch's GEMMs do, in another order.
 *
 * AMX multiplies 16 x 32 bf16 tiles by 32 x 16 ones into 16 x 16 fp32 ones, the second operand
 * with each two of its rows interleaved value by value (the "VNNI" layout). Tiles hold 16 rows
 * of 64 bytes; a thread's tile configuration is its own state, shared with oneDNN's kernels on
 * the same thread, so each thread saves it before and restores it after: code that configured
 * the tiles once finds them as it left them (oneDNN 3.12, in torch 2.13, happens to configure
 * them before each GEMM). Linux hands out AMX's state to a process that asks for it (dot_init).
 * The kernels run in torch's OpenMP thread pool (loaded after torch, see row_kernels.c), a share
 * of the samples per thread; a sample's result does not depend on the thread count. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define HAVE_AVX512 1
#if defined(__AVX512BF16__)
#define HAVE_AVX512_BF16 1
#if defined(DOT_EMULATE_AMX) /* the tests' AMX in plain C, for CPUs without it (tests/amx_emulation.h) */
#include "amx_emulation.h"
#define HAVE_AMX 1
#elif defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define HAVE_AMX 1
#endif
#endif
#endif

/* The kernels this build has (what the compiler could target on this CPU): 4 with AVX-512
 * (fp32), plus 1 with AVX512_BF16, plus 2 with AMX. */
int dot_compiled(void) {
  int kernels = 0;
#ifdef HAVE_AVX512
  kernels |= 4;
#endif
#ifdef HAVE_AVX512_BF16
  kernels |= 1;
#endif
#ifdef HAVE_AMX
  kernels |= 2;
#endif
  return kernels;
}

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline int64_t pair_count(int64_t n, int diagonal) { return n * (n - 1) / 2 + (diagonal ? n : 0); }

/* Per-thread scratch, in 4-byte words. Forward: the sample's rows padded to 16 rows of a
 * multiple of 32 values, their transpose in 4-byte (two-value) words, the Gram matrix.
 * Backward: S (16-row blocks, columns padded to 32), the interleaved rows, S V in fp32. */
int64_t dot_forward_scratch(int64_t n, int64_t dim) {
  const int64_t rows = round_up(n, 16), words = round_up(dim, 32) / 2;
  return 2 * rows * words + rows * rows;
}

int64_t dot_backward_scratch(int64_t n, int64_t dim) {
  const int64_t rows = round_up(n, 16), cols = round_up(n, 32), values = round_up(dim, 16);
  return rows * cols / 2 + cols / 2 * values + rows * values;
}

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Asks Linux for AMX's tile data state (Linux 5.16 and later; torch's oneDNN asks too): 1 where
 * this build has the AMX kernels and Linux grants it. */
int dot_init(void) {
#if defined(HAVE_AMX) && defined(DOT_EMULATE_AMX)
  return 1; /* emulated tiles: nothing to ask for */
#elif defined(HAVE_AMX)
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
  return 0;
#endif
}

#ifdef HAVE_AVX512

#define INLINE static inline __attribute__((always_inline))

INLINE __mmask16 tail16(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* The backward: with S the symmetric (n, n) matrix of the output gradient's pair entries (g_ij
 * at (i, j) and (j, i); 2 g_ii on the diagonal, the derivative of a square), the vectors'
 * gradient is S V, plus, in row 0, the gradient of the output's copy of vector 0.
 *
 * The forwards without AMX take row i's dot products with eight rows at a time (a register's
 * worth of values a step, summed across the register's lanes at the end); the backwards compute
 * S V four rows by 64 values at a time. Neither pads the sample to 16 rows, as AMX's tiles
 * need: at 27 vectors the tiles' blocks would compute 768 dot products for 351. */

/* Lane k: the sum of a[k]'s 16 lanes. */
INLINE __m256 sum8(const __m512 a[8]) {
  __m256 h[8];
  for (int k = 0; k < 8; k++) h[k] = _mm256_add_ps(_mm512_castps512_ps256(a[k]), _mm512_extractf32x8_ps(a[k], 1));
  const __m256 s01 = _mm256_hadd_ps(h[0], h[1]), s23 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 s45 = _mm256_hadd_ps(h[4], h[5]), s67 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

/* The AVX-512 forwards' scratch: none (they take the AMX kernel's arguments, scratch among
 * them, to be called the same way). */
int64_t dot_no_scratch(int64_t n, int64_t dim) {
  (void)n, (void)dim;
  return 0;
}

/* 2 h, exactly (an exponent step; an overflow gives infinity, as in fp32). */
static inline uint16_t bf16_doubled(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  f *= 2.0f;
  memcpy(&u, &f, sizeof u);
  return (uint16_t)(u >> 16);
}

/* S, `cols` values a row in the stack's dtype, from a sample's output gradient g; entries
 * outside the pairs are left as they are (zero). */
INLINE void symmetric_from_pairs(void *s, int64_t cols, const void *g, int64_t n, int64_t dim, int diagonal, int bf16) {
  int64_t p = dim;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < i + (diagonal ? 1 : 0); j++, p++) {
      if (bf16) {
        uint16_t *s16 = s, h = ((const uint16_t *)g)[p];
        if (i == j) s16[i * cols + i] = bf16_doubled(h);
        else s16[i * cols + j] = s16[j * cols + i] = h;
      } else {
        float *sf = s, value = ((const float *)g)[p];
        if (i == j) sf[i * cols + i] = 2.0f * value;
        else sf[i * cols + j] = sf[j * cols + i] = value;
      }
    }
}

#ifdef HAVE_AVX512_BF16

/* 16 fp32 values rounded to bf16 (nearest even), stored under mask m. */
INLINE void store_bf16(uint16_t *p, __m512 v, __mmask16 m) { _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v)); }

/* 16 bf16 values under mask m (the rest zero) as fp32. */
INLINE __m512 load_bf16(const uint16_t *p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/* The sample's rows x interleaved in pairs (V's layout for S V): row k, `stride` words long,
 * holds rows 2k and 2k+1 value by value in 4-byte words (for odd n the last with zeros). */
INLINE void interleave_rows(uint32_t *interleaved, int64_t stride, const uint16_t *x, int64_t n, int64_t dim) {
  for (int64_t k = 0; k < (n + 1) / 2; k++)
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 m = tail16(dim - d);
      const __m512i even = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x + 2 * k * dim + d));
      const __m512i odd = 2 * k + 1 < n ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x + (2 * k + 1) * dim + d))
                                        : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(interleaved + k * stride + d, m, _mm512_or_si512(even, _mm512_slli_epi32(odd, 16)));
    }
}

#endif

/* Row i's dot products with rows j0..j0+7 of x, in the stack's dtype (a row past jmax - 1 repeats
 * row jmax - 1; its sum is not stored): fp32 16 values a step with fused multiply-adds, bf16 32
 * with AVX512_BF16's dot product of pairs. */
INLINE __m256 dots8(const void *x, int64_t dim, int64_t i, int64_t j0, int64_t jmax, int bf16) {
  const int64_t size = bf16 ? 2 : 4;
  __m512 acc[8];
  const char *rows[8];
  for (int k = 0; k < 8; k++) {
    acc[k] = _mm512_setzero_ps();
    rows[k] = (const char *)x + (j0 + k < jmax ? j0 + k : jmax - 1) * dim * size;
  }
  const char *xi = (const char *)x + i * dim * size;
#ifdef HAVE_AVX512_BF16
  if (bf16) {
    for (int64_t c = 0; c < dim; c += 32) {
      const __mmask32 m = dim - c >= 32 ? (__mmask32)~0u : (__mmask32)((1u << (dim - c)) - 1);
      const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi16(m, xi + c * 2);
      for (int k = 0; k < 8; k++)
        acc[k] = _mm512_dpbf16_ps(acc[k], a, (__m512bh)_mm512_maskz_loadu_epi16(m, rows[k] + c * 2));
    }
    return sum8(acc);
  }
#endif
  for (int64_t c = 0; c < dim; c += 16) {
    const __mmask16 m = tail16(dim - c);
    const __m512 a = _mm512_maskz_loadu_ps(m, xi + c * 4);
    for (int k = 0; k < 8; k++) acc[k] = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, rows[k] + c * 4), acc[k]);
  }
  return sum8(acc);
}

/* Those of them from j0 to j0 + count - 1, stored at o in the stack's dtype. */
INLINE void store_dots(void *o, const void *x, int64_t dim, int64_t i, int64_t j0, int64_t jmax, int64_t count,
                       int bf16) {
  const __m256 dots = dots8(x, dim, i, j0, jmax, bf16);
#ifdef HAVE_AVX512_BF16
  if (bf16) {
    store_bf16(o, _mm512_castps256_ps512(dots), (__mmask16)((1u << count) - 1));
    return;
  }
#endif
  _mm256_mask_storeu_ps(o, (__mmask8)((1u << count) - 1), dots);
}

/* The forward without AMX, for either dtype (bf16: 2-byte values, fp32: 4-byte). */
INLINE void forward(const void *vectors, int64_t batch, int64_t n, int64_t dim, int diagonal, void *out, int threads,
                    int bf16) {
  const int64_t size = bf16 ? 2 : 4, width = dim + pair_count(n, diagonal);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < batch; b++) {
    const char *x = (const char *)vectors + b * n * dim * size;
    char *o = (char *)out + b * width * size;
    memcpy(o, x, (size_t)(dim * size));
    int64_t at = dim;
    for (int64_t i = diagonal ? 0 : 1; i < n; i++) {
      const int64_t jmax = i + (diagonal ? 1 : 0);
      for (int64_t j0 = 0; j0 < jmax; j0 += 8) {
        const int64_t count = jmax - j0 < 8 ? jmax - j0 : 8;
        store_dots(o + at * size, x, dim, i, j0, jmax, count, bf16);
        at += count;
      }
    }
  }
}

void dot_forward_fp32(const float *vectors, int64_t batch, int64_t n, int64_t dim, int diagonal, float *out,
                      uint32_t *scratch, int threads) {
  (void)scratch;
  forward(vectors, batch, n, dim, diagonal, out, threads, 0);
}

#ifdef HAVE_AVX512_BF16
void dot_forward_avx512(const uint16_t *vectors, int64_t batch, int64_t n, int64_t dim, int diagonal, uint16_t *out,
                        uint32_t *scratch, int threads) {
  (void)scratch;
  forward(vectors, batch, n, dim, diagonal, out, threads, 1);
}
#endif

/* 16 values of the stack's dtype under mask m as fp32, and back (bf16 rounded to nearest even). */
INLINE __m512 load16(const void *p, __mmask16 m, int bf16) {
#ifdef HAVE_AVX512_BF16
  if (bf16) return load_bf16(p, m);
#else
  (void)bf16;
#endif
  return _mm512_maskz_loadu_ps(m, p);
}

INLINE void store16(void *p, __m512 v, __mmask16 m, int bf16) {
#ifdef HAVE_AVX512_BF16
  if (bf16) {
    store_bf16(p, v, m);
    return;
  }
#else
  (void)bf16;
#endif
  _mm512_mask_storeu_ps(p, m, v);
}

/* Rows i0..i0+3 of S V for values d0..d0+63 (masks m), summed into acc. S's rows are `words`
 * 4-byte words. fp32: each element of S against a row of V, with fused multiply-adds; bf16: each
 * word of S (two columns) against two rows of V interleaved value by value, with AVX512_BF16's
 * dot product of pairs. */
INLINE void tile_product(__m512 acc[4][4], const uint32_t *s, const void *v, int64_t words, int64_t dim, int64_t i0,
                         int64_t d0, const __mmask16 m[4], int bf16) {
#ifdef HAVE_AVX512_BF16
  if (bf16) {
    for (int64_t k = 0; k < words; k++) {
      __m512bh vk[4];
      for (int q = 0; q < 4; q++) vk[q] = (__m512bh)_mm512_maskz_loadu_epi32(m[q], (const uint32_t *)v + k * dim + d0 + 16 * q);
      for (int r = 0; r < 4; r++) {
        const __m512bh pair = (__m512bh)_mm512_set1_epi32((int)s[(i0 + r) * words + k]);
        for (int q = 0; q < 4; q++) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], pair, vk[q]);
      }
    }
    return;
  }
#else
  (void)bf16;
#endif
  const float *sf = (const float *)s, *vf = v;
  for (int64_t j = 0; j < words; j++) {
    __m512 vj[4];
    for (int q = 0; q < 4; q++) vj[q] = _mm512_maskz_loadu_ps(m[q], vf + j * dim + d0 + 16 * q);
    for (int r = 0; r < 4; r++) {
      const __m512 sij = _mm512_set1_ps(sf[(i0 + r) * words + j]);
      for (int q = 0; q < 4; q++) acc[r][q] = _mm512_fmadd_ps(sij, vj[q], acc[r][q]);
    }
  }
}

/* Per thread, in 4-byte words: S (rows padded to a multiple of 4; bf16 in pairs of columns, the
 * odd one zero) and, for bf16, the interleaved rows. */
INLINE int64_t backward_scratch(int64_t n, int64_t dim, int bf16) {
  return bf16 ? round_up(n, 4) * ((n + 1) / 2) + (n + 1) / 2 * dim : round_up(n, 4) * n;
}

int64_t dot_backward_fp32_scratch(int64_t n, int64_t dim) { return backward_scratch(n, dim, 0); }
int64_t dot_backward_avx512_scratch(int64_t n, int64_t dim) { return backward_scratch(n, dim, 1); }

/* The backward without AMX, for either dtype: S V four rows by 64 values at a time. */
INLINE void backward(const void *vectors, const void *grad, int64_t batch, int64_t n, int64_t dim, int diagonal,
                     void *grad_vectors, uint32_t *scratch, int threads, int bf16) {
  const int64_t size = bf16 ? 2 : 4, width = dim + pair_count(n, diagonal), words = bf16 ? (n + 1) / 2 : n;
#pragma omp parallel num_threads(threads)
  {
    uint32_t *s = scratch + omp_get_thread_num() * backward_scratch(n, dim, bf16);
    /* Padding rows and bf16's odd column stay zero, and so does S's diagonal without
     * self-interaction: only the sample's own entries are written below. */
    memset(s, 0, (size_t)(round_up(n, 4) * words) * 4);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; b++) {
      const char *x = (const char *)vectors + b * n * dim * size, *g = (const char *)grad + b * width * size;
      symmetric_from_pairs(s, bf16 ? 2 * words : words, g, n, dim, diagonal, bf16);
      const void *v = x;
#ifdef HAVE_AVX512_BF16
      if (bf16) {
        uint32_t *interleaved = s + round_up(n, 4) * words;
        interleave_rows(interleaved, dim, (const uint16_t *)x, n, dim);
        v = interleaved;
      }
#endif
      for (int64_t i0 = 0; i0 < n; i0 += 4)
        for (int64_t d0 = 0; d0 < dim; d0 += 64) {
          __mmask16 m[4];
          __m512 acc[4][4];
          for (int q = 0; q < 4; q++) {
            m[q] = d0 + 16 * q < dim ? tail16(dim - d0 - 16 * q) : 0;
            for (int r = 0; r < 4; r++) acc[r][q] = _mm512_setzero_ps();
          }
          tile_product(acc, s, v, words, dim, i0, d0, m, bf16);
          if (i0 == 0)
            for (int q = 0; q < 4; q++) acc[0][q] = _mm512_add_ps(acc[0][q], load16(g + (d0 + 16 * q) * size, m[q], bf16));
          for (int r = 0; r < 4 && i0 + r < n; r++)
            for (int q = 0; q < 4; q++)
              store16((char *)grad_vectors + ((b * n + i0 + r) * dim + d0 + 16 * q) * size, acc[r][q], m[q], bf16);
        }
    }
  }
}

void dot_backward_fp32(const float *vectors, const float *grad, int64_t batch, int64_t n, int64_t dim, int diagonal,
                       float *grad_vectors, uint32_t *scratch, int threads) {
  backward(vectors, grad, batch, n, dim, diagonal, grad_vectors, scratch, threads, 0);
}

#ifdef HAVE_AVX512_BF16
void dot_backward_avx512(const uint16_t *vectors, const uint16_t *grad, int64_t batch, int64_t n, int64_t dim,
                         int diagonal, uint16_t *grad_vectors, uint32_t *scratch, int threads) {
  backward(vectors, grad, batch, n, dim, diagonal, grad_vectors, scratch, threads, 1);
}
#endif

#endif

#ifdef HAVE_AMX

typedef struct {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((packed, aligned(64))) TileConfig;

/* Tiles 0 (the product), 1 and 2 (the operands): 16 rows of 64 bytes each. */
INLINE void tiles_begin(TileConfig *saved) {
  TileConfig mine;
  memset(&mine, 0, sizeof mine);
  mine.palette_id = 1;
  for (int t = 0; t < 3; t++) {
    mine.rows[t] = 16;
    mine.colsb[t] = 64;
  }
  _tile_storeconfig(saved);
  _tile_loadconfig(&mine);
}

INLINE void tiles_end(const TileConfig *saved) {
  if (saved->palette_id) _tile_loadconfig(saved);
  else _tile_release();
}

/* Transposes the 16 x 16 matrix of 4-byte words in r. */
INLINE void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; j++) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; j++) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

/* The Gram matrix V V^T of each sample, 16 x 16 blocks on and below the diagonal; V^T's
 * interleaved layout is V's transpose taken in words of two values. */
void dot_forward(const uint16_t *vectors, int64_t batch, int64_t n, int64_t dim, int diagonal, uint16_t *out,
                 uint32_t *scratch, int threads) {
  const int64_t rows = round_up(n, 16), words = round_up(dim, 32) / 2, width = dim + pair_count(n, diagonal);
#pragma omp parallel num_threads(threads)
  {
    uint32_t *padded = scratch + omp_get_thread_num() * dot_forward_scratch(n, dim);
    uint32_t *transposed = padded + rows * words;
    float *gram = (float *)(transposed + words * rows);
    /* Padding rows and values stay zero: only the sample's own are written below. */
    memset(padded, 0, (size_t)(rows * words) * 4);
    TileConfig saved;
    tiles_begin(&saved);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; b++) {
      const uint16_t *x = vectors + b * n * dim;
      for (int64_t i = 0; i < n; i++) memcpy(padded + i * words, x + i * dim, (size_t)dim * 2);
      for (int64_t r0 = 0; r0 < rows; r0 += 16)
        for (int64_t w0 = 0; w0 < words; w0 += 16) {
          __m512i block[16];
          const __mmask16 m = tail16(words - w0);
          for (int i = 0; i < 16; i++) block[i] = _mm512_maskz_loadu_epi32(m, padded + (r0 + i) * words + w0);
          transpose16(block);
          for (int k = 0; k < 16 && w0 + k < words; k++) _mm512_storeu_si512(transposed + (w0 + k) * rows + r0, block[k]);
        }
      for (int64_t i0 = 0; i0 < rows; i0 += 16)
        for (int64_t j0 = 0; j0 <= i0; j0 += 16) {
          _tile_zero(0);
          for (int64_t w0 = 0; w0 < words; w0 += 16) {
            _tile_loadd(1, padded + i0 * words + w0, words * 4);
            _tile_loadd(2, transposed + w0 * rows + j0, rows * 4);
            _tile_dpbf16ps(0, 1, 2);
          }
          _tile_stored(0, gram + i0 * rows + j0, rows * 4);
        }
      uint16_t *o = out + b * width;
      memcpy(o, x, (size_t)dim * 2);
      int64_t at = dim;
      for (int64_t i = diagonal ? 0 : 1; i < n; i++) {
        const int64_t count = i + (diagonal ? 1 : 0);
        for (int64_t j0 = 0; j0 < count; j0 += 16) {
          const __mmask16 m = tail16(count - j0);
          store_bf16(o + at + j0, _mm512_maskz_loadu_ps(m, gram + i * rows + j0), m);
        }
        at += count;
      }
    }
    tiles_end(&saved);
  }
}

/* The backward: S V on tiles, S padded with zero rows and columns. */
void dot_backward(const uint16_t *vectors, const uint16_t *grad, int64_t batch, int64_t n, int64_t dim, int diagonal,
                  uint16_t *grad_vectors, uint32_t *scratch, int threads) {
  const int64_t rows = round_up(n, 16), cols = round_up(n, 32), values = round_up(dim, 16);
  const int64_t width = dim + pair_count(n, diagonal);
#pragma omp parallel num_threads(threads)
  {
    uint32_t *s = scratch + omp_get_thread_num() * dot_backward_scratch(n, dim);
    uint32_t *interleaved = s + rows * cols / 2;
    float *product = (float *)(interleaved + cols / 2 * values);
    uint16_t *s16 = (uint16_t *)s;
    /* Padding rows, columns and values stay zero, and so does S's diagonal without
     * self-interaction: only the sample's own entries are written below. */
    memset(s, 0, (size_t)(rows * cols / 2 + cols / 2 * values) * 4);
    TileConfig saved;
    tiles_begin(&saved);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; b++) {
      const uint16_t *x = vectors + b * n * dim, *g = grad + b * width;
      symmetric_from_pairs(s16, cols, g, n, dim, diagonal, 1);
      interleave_rows(interleaved, values, x, n, dim);
      for (int64_t i0 = 0; i0 < rows; i0 += 16)
        for (int64_t d0 = 0; d0 < values; d0 += 16) {
          _tile_zero(0);
          for (int64_t j0 = 0; j0 < cols; j0 += 32) {
            _tile_loadd(1, s16 + i0 * cols + j0, cols * 2);
            _tile_loadd(2, interleaved + j0 / 2 * values + d0, values * 4);
            _tile_dpbf16ps(0, 1, 2);
          }
          _tile_stored(0, product + i0 * values + d0, values * 4);
        }
      for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < dim; d += 16) {
          const __mmask16 m = tail16(dim - d);
          __m512 v = _mm512_maskz_loadu_ps(m, product + i * values + d);
          if (i == 0) v = _mm512_add_ps(v, load_bf16(g + d, m));
          store_bf16(grad_vectors + (b * n + i) * dim + d, v, m);
        }
    }
    tiles_end(&saved);
  }
}

#endif
