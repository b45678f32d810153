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

// y[t] += xi[t] * row for T tokens, y rows `ypitch` floats apart.
void simd_row_axpy(Isa isa, const uint8_t* mask, int64_t nb, const uint8_t* values, int kind, const float* xi, int64_t T, float* y, int64_t ypitch);

// The dense row (`cols` entries of the values' own type) written to out.
void simd_row_decompress(Isa isa, const uint8_t* mask, int64_t nb, int64_t cols, const uint8_t* values, int kind, uint8_t* out);

}  // namespace llmsparse
