/* AMX's tile instructions in plain C, so that the tests run reference/dot_kernels.c's AMX
 * kernels on CPUs without AMX: tests/test_dot_kernels.py compiles it with -DDOT_EMULATE_AMX and
 * this folder on the include path. Each thread has its own configuration and eight tiles of up
 * to 16 rows of 64 bytes, as the hardware's palette 1. TDPBF16PS sums as the pseudo-code of
 * Intel's intrinsics guide: each product of two bf16 values (exact in fp32) added to the fp32
 * sum in turn, rounded to nearest even, subnormal inputs read as zero and subnormal sums flushed
 * to zero. The hardware may sum in another order; the tests hold both to the same bounds.
 *
 * Where the hardware would fault (a tile used before it is configured, a configuration it
 * rejects, operands whose shapes do not fit or that are not three different tiles), the
 * emulation records the first such error, which amx_emulation_error() returns, instead of
 * crashing the test process; it also records a configuration it does not emulate (a start row
 * other than 0). The functions are not static: the tests call them through ctypes (so one
 * translation unit includes this file). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The compiler's own (macros or inline functions, by compiler), replaced from here on. */
#undef _tile_loadconfig
#undef _tile_storeconfig
#undef _tile_release
#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbf16ps
#define _tile_loadconfig(config) emu_tile_loadconfig(config)
#define _tile_storeconfig(config) emu_tile_storeconfig(config)
#define _tile_release() emu_tile_release()
#define _tile_loadd(t, base, stride) emu_tile_loadd(t, base, stride)
#define _tile_stored(t, base, stride) emu_tile_stored(t, base, stride)
#define _tile_zero(t) emu_tile_zero(t)
#define _tile_dpbf16ps(c, a, b) emu_tile_dpbf16ps(c, a, b)

/* The 64-byte configuration: palette, start row, 14 reserved bytes, then per tile 0-15 its row
 * width in bytes (16 bits each) and its row count (8 bits each); palette 1 has tiles 0-7 only. */
enum { PALETTE = 0, START_ROW = 1, COLSB = 16, ROWS = 48, TILES = 8 };

static _Thread_local uint8_t emu_config[64]; /* all zero: not configured */
static _Thread_local uint8_t emu_tiles[TILES][16][64];
static char emu_error[256];

const char *amx_emulation_error(void) { return emu_error; }
void amx_emulation_reset(void) { emu_error[0] = 0; }

static void emu_fail(const char *what, int tile) {
#pragma omp critical(amx_emulation)
  if (!emu_error[0]) snprintf(emu_error, sizeof emu_error, "%s (tile %d)", what, tile);
}

static int config_rows(const uint8_t *c, int t) { return c[ROWS + t]; }
static int config_colsb(const uint8_t *c, int t) { return c[COLSB + 2 * t] | c[COLSB + 2 * t + 1] << 8; }
static int emu_rows(int t) { return config_rows(emu_config, t); }
static int emu_colsb(int t) { return config_colsb(emu_config, t); }

/* Whether tile t can be used; records why not. */
static int emu_usable(int t) {
  const char *why = t < 0 || t >= TILES ? "no such tile"
                    : emu_config[PALETTE] != 1 ? "tile used without a configuration"
                    : !emu_rows(t) ? "tile not configured"
                    : NULL;
  if (why) emu_fail(why, t);
  return !why;
}

void emu_tile_release(void) {
  memset(emu_config, 0, sizeof emu_config);
  memset(emu_tiles, 0, sizeof emu_tiles);
}

/* LDTILECFG: palette 0 releases the tiles; palette 1 gives tiles 0-7 up to 16 rows of up to 64
 * bytes (a tile has both or neither), the other tiles and the reserved bytes zero; every tile
 * starts zero. A configuration the hardware rejects changes nothing. */
void emu_tile_loadconfig(const void *config) {
  const uint8_t *c = config;
  if (c[PALETTE] == 0) {
    emu_tile_release();
    return;
  }
  int valid = c[PALETTE] == 1;
  for (int i = START_ROW + 1; i < COLSB; i++) valid &= c[i] == 0;
  for (int t = 0; t < 16; t++) {
    const int rows = config_rows(c, t), colsb = config_colsb(c, t);
    if (t < TILES) valid &= rows <= 16 && colsb <= 64 && (rows == 0) == (colsb == 0);
    else valid &= rows == 0 && colsb == 0;
  }
  if (!valid) {
    emu_fail("configuration the hardware rejects", -1);
    return;
  }
  if (c[START_ROW]) emu_fail("start row other than 0: not emulated", -1);
  emu_tile_release();
  memcpy(emu_config, c, sizeof emu_config);
}

void emu_tile_storeconfig(void *config) { memcpy(config, emu_config, sizeof emu_config); }

void emu_tile_zero(int t) {
  if (emu_usable(t)) memset(emu_tiles[t], 0, sizeof emu_tiles[t]);
}

/* Rows beyond the configuration's, and bytes beyond its width, are zero. */
void emu_tile_loadd(int t, const void *base, int64_t stride) {
  if (!emu_usable(t)) return;
  memset(emu_tiles[t], 0, sizeof emu_tiles[t]);
  for (int r = 0; r < emu_rows(t); r++) memcpy(emu_tiles[t][r], (const uint8_t *)base + r * stride, emu_colsb(t));
}

void emu_tile_stored(int t, void *base, int64_t stride) {
  if (!emu_usable(t)) return;
  for (int r = 0; r < emu_rows(t); r++) memcpy((uint8_t *)base + r * stride, emu_tiles[t][r], emu_colsb(t));
}

static float emu_bf16(const uint8_t *at) {
  uint32_t bits = (uint32_t)(at[0] | at[1] << 8) << 16;
  if ((bits & 0x7f800000u) == 0) bits &= 0x80000000u; /* subnormal: zero */
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static float emu_flushed(float f) { return fabsf(f) < 0x1p-126f ? copysignf(0.0f, f) : f; }

/* c (M x N fp32) += a (M x K pairs of bf16) times b (K rows of N pairs of bf16). */
void emu_tile_dpbf16ps(int c, int a, int b) {
  if (!emu_usable(c) || !emu_usable(a) || !emu_usable(b)) return;
  if (c == a || c == b || a == b) {
    emu_fail("operands that are not three different tiles", c);
    return;
  }
  if (emu_rows(c) != emu_rows(a) || emu_colsb(c) != emu_colsb(b) || emu_colsb(a) / 4 != emu_rows(b) ||
      emu_colsb(a) % 4 || emu_colsb(c) % 4) {
    emu_fail("operands whose shapes do not fit", c);
    return;
  }
  for (int m = 0; m < emu_rows(c); m++)
    for (int n = 0; n < emu_colsb(c) / 4; n++) {
      float sum;
      memcpy(&sum, emu_tiles[c][m] + 4 * n, 4);
      for (int k = 0; k < emu_colsb(a) / 4; k++) {
        sum = emu_flushed(sum + emu_bf16(emu_tiles[a][m] + 4 * k) * emu_bf16(emu_tiles[b][k] + 4 * n));
        sum = emu_flushed(sum + emu_bf16(emu_tiles[a][m] + 4 * k + 2) * emu_bf16(emu_tiles[b][k] + 4 * n + 2));
      }
      memcpy(emu_tiles[c][m] + 4 * n, &sum, 4);
    }
}

/* How many of `threads` OpenMP threads (a team of the size the kernels ran with, which libgomp
 * keeps the same threads for) have their tiles configured, and a call that releases them all. */
int amx_emulation_configured_threads(int threads) {
  int configured = 0;
#pragma omp parallel num_threads(threads) reduction(+ : configured)
  configured += emu_config[PALETTE] != 0;
  return configured;
}

void amx_emulation_release_threads(int threads) {
#pragma omp parallel num_threads(threads)
  emu_tile_release();
}
