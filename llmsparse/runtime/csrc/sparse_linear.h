// The SIMD row routines of the sparse-weight kernels (sparse_simd.cpp), shared with the drivers (sparse_linear.cpp).
//
// A row is a mask (one bit per column, little-endian within each byte) and the row's kept values
// in column order: 4-byte floats (kind 0) or 2-byte bf16 (kind 1) / fp16 (kind 2) bit patterns.
// The routines read up to 16 values past the row's last kept value (callers pass padded copies of
// rows near the end of a buffer) and x / y rows padded with zeros to a multiple of 16 floats.

#pragma once

#include <cstdint>

namespace llmsparse {

enum Isa : int64_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

inline int elem_size(int kind) { return kind == 0 ? 4 : 2; }

// True when this CPU (and this build) can run `isa`.
bool cpu_has(Isa isa);

// out[t] = row . x[t] for T tokens, x rows `xpitch` floats apart.
void simd_row_dot(Isa isa, const uint8_t* mask, int64_t nb, const uint8_t* values, int kind, const float* x, int64_t xpitch, int64_t T, float* out);

// True when simd_row_dot_bf16 runs here (AVX-512 BF16 + VBMI2).
bool bf16_dot_fits(Isa isa);

// simd_row_dot for bf16 values and bf16 inputs (bit patterns; x rows `xpitch` apart, zero-padded to a multiple of 32).
void simd_row_dot_bf16(const uint8_t* mask, int64_t nb, const uint16_t* values, const uint16_t* x, int64_t xpitch, int64_t T, float* out);

// Two rows' dot products with one bf16 token x (out[0], out[1]): simd_row_dot_bf16 for a pair of rows, x read once.
void simd_rows_dot_bf16(const uint8_t* mask_a, const uint8_t* mask_b, int64_t nb, const uint16_t* values_a, const uint16_t* values_b, const uint16_t* x, float* out);

// y[t] += xi[t] * row for T tokens, y rows `ypitch` floats apart.
void simd_row_axpy(Isa isa, const uint8_t* mask, int64_t nb, const uint8_t* values, int kind, const float* xi, int64_t T, float* y, int64_t ypitch);

// The dense row (`cols` entries of the values' own type) written to out.
void simd_row_decompress(Isa isa, const uint8_t* mask, int64_t nb, int64_t cols, const uint8_t* values, int kind, uint8_t* out);

}  // namespace llmsparse

namespace llmsparse {

// A quantized matrix [rows, cols]: integer codes (offset binary, q + 2^(bits-1), `bits` 4 or 8, low
// nibble first) and one scale (and optional int8 zero point) per row and group of `group` columns;
// value = (q - zp) * scale. Sparse: `mask` as above and row r's codes start at code index
// row_offsets[r] of one stream over the whole matrix. Dense (`mask` null): every column is kept and
// row r's codes start at byte r * row_bytes.
struct QMatrix {
  const uint8_t* codes;
  const uint8_t* mask;           // nullptr: dense
  const int64_t* row_offsets;    // sparse only
  const void* scale;             // [rows, groups], kind 0/1/2 as the values above
  const int8_t* zero;            // nullptr: symmetric
  int64_t rows, cols, nb, groups, group, row_bytes, total_codes, code_bytes;
  int bits, scale_kind;

  int64_t start(int64_t r) const { return mask ? row_offsets[r] : 0; }
  int64_t end(int64_t r) const { return mask ? (r + 1 < rows ? row_offsets[r + 1] : total_codes) : cols; }
  const uint8_t* row_codes(int64_t r) const { return mask ? codes : codes + r * row_bytes; }
};

// True when the SIMD quantized routines handle this matrix (AVX-512 and a group a multiple of 16 columns, or one group per row).
bool qsimd_fits(Isa isa, const QMatrix& w);

// out[t] = row r . x[t] for T tokens; codes read from `codes` (the row's stream, or a padded copy) at code index `first`.
void qsimd_row_dot(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, const float* x, int64_t xpitch, int64_t T, float* out);

// True when the bf16-activation path (qsimd_row_dot_bf16: int4, AVX-512 BF16 + VBMI2, groups of 32k columns) fits.
bool qsimd_bf16_fits(Isa isa, const QMatrix& w);

// qsimd_row_dot for bf16 activations (bit patterns, rows `xpitch` apart, zero-padded to a multiple of 32).
void qsimd_row_dot_bf16(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, const uint16_t* x, int64_t xpitch, int64_t T, float* out);

// How the bf16 path wants its input (quant_bf16.cpp): as given (kNatural: quant_simd.cpp's table path), or
// rearranged once per call with per-group sums of x (kEvenOdd: bitmask rows, groups of 64k; kFourWay: dense rows, groups of 128k).
enum QInput : int { kNatural = 0, kEvenOdd = 1, kFourWay = 2 };
QInput qsimd_bf16_input(const QMatrix& w);

// x [T, xpitch] (bf16 bits) rearranged for `layout` into out (same shape), and sums[t * groups + g] = Σ_{c∈g} x[t, c].
void qsimd_bf16_arrange(QInput layout, const QMatrix& w, const uint16_t* x, int64_t xpitch, int64_t T, uint16_t* out, float* sums);

// qsimd_row_dot_bf16 for symmetric int4 codes and an input rearranged by qsimd_bf16_arrange (`xsum` its group sums).
void qsimd_row_dot_bf16_arranged(QInput layout, const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, const uint16_t* x, int64_t xpitch,
                                 const float* xsum, int64_t T, float* out);

// Row r dequantized: `cols` floats written to out (zeros where the mask is clear).
void qsimd_row_decompress(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, float* out);

}  // namespace llmsparse
