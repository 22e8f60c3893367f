/* AMX's tile instructions in plain C, so that the tests run reference/dot_kernels.c's AMX
 * kernels on CPUs without AMX: tests/test_dot_kernels.py compiles it with -DDOT_EMULATE_AMX and
 * this folder on the include path. Each thread has its own configuration and eight tiles of up
 * to 16 rows of 64 bytes, as the hardware's palette 1. TDPBF16PS follows the pseudo-code of
 * Intel's manual: each product of two bf16 values (exact in fp32) added to the fp32 sum in turn,
 * rounded to nearest even, subnormal inputs read as zero and subnormal sums flushed to zero. The
 * hardware may sum in another order; the tests hold both to the same bounds.
 *
 * Where the hardware would fault (a tile used before it is configured, a configuration it
 * rejects, operands whose shapes do not fit), the emulation records the first such error, which
 * amx_emulation_error() returns, instead of crashing the test process. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

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

static _Thread_local uint8_t emu_config[64]; /* all zero: not configured */
static _Thread_local uint8_t emu_tiles[8][16][64];
static char emu_error[256];

const char *amx_emulation_error(void) { return emu_error; }
void amx_emulation_reset(void) { emu_error[0] = 0; }

static int emu_fail(const char *what, int tile) {
#pragma omp critical(amx_emulation)
  if (!emu_error[0]) snprintf(emu_error, sizeof emu_error, "%s (tile %d)", what, tile);
  return 0;
}

static int emu_rows(int t) { return emu_config[48 + t]; }
static int emu_colsb(int t) { return emu_config[16 + 2 * t] | emu_config[17 + 2 * t] << 8; }

static int emu_usable(int t) {
  if (t < 0 || t > 7) return emu_fail("no such tile", t);
  if (emu_config[0] != 1) return emu_fail("tile used without a configuration", t);
  if (!emu_rows(t) || !emu_colsb(t)) return emu_fail("tile not configured", t);
  return 1;
}

void emu_tile_release(void) {
  memset(emu_config, 0, sizeof emu_config);
  memset(emu_tiles, 0, sizeof emu_tiles);
}

/* LDTILECFG: palette 0 releases the tiles; palette 1 takes up to 16 rows of up to 64 bytes for
 * tiles 0-7, nothing for the others; every tile starts zero. */
void emu_tile_loadconfig(const void *config) {
  const uint8_t *c = config;
  emu_tile_release();
  if (c[0] == 0) return;
  int valid = c[0] == 1 && c[1] == 0;
  for (int i = 2; i < 16; i++) valid &= c[i] == 0;
  for (int t = 0; t < 16; t++) {
    const int rows = c[48 + t], colsb = c[16 + 2 * t] | c[17 + 2 * t] << 8;
    valid &= t < 8 ? rows <= 16 && colsb <= 64 && !rows == !colsb : rows == 0 && colsb == 0;
  }
  if (!valid) {
    emu_fail("configuration the hardware rejects", -1);
    return;
  }
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
