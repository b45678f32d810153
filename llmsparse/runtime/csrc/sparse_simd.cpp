// SIMD decoding of mask + kept-values rows: AVX2 and AVX-512F, chosen per call (see sparse_linear.h).
//
// A group of 8 (AVX2) or 16 (AVX-512) columns becomes a vector whose lanes with a set mask bit hold
// the next popcount(m) kept values, in order, and zeros elsewhere: one pshufb from a 256-entry table
// (AVX2, 16-bit values: bf16 straight into the high half of fp32 lanes, fp16 then vcvtph2ps),
// vpermps + blend (AVX2, fp32), or an expand / expand-load (AVX-512F; 16-bit values are decompressed with
// AVX-512 VBMI2's 16-bit expand-load where the CPU has it). Accumulation is fp32. Each
// function carries its own target attribute, so the file builds for any x86-64 CPU and the caller
// picks what the CPU has; on other architectures only cpu_has(kScalar) is true.

#include "sparse_linear.h"

#include <algorithm>
#include <cstring>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define LLMSPARSE_X86 1
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2,fma,f16c,popcnt")))
#define AVX512_FN __attribute__((target("avx512f,avx2,fma,f16c,popcnt")))
#define VBMI2_FN __attribute__((target("avx512f,avx512bw,avx512vbmi2,popcnt")))
#else
#define LLMSPARSE_X86 0
#endif

namespace llmsparse {

#if LLMSPARSE_X86
namespace {

struct Tables {
  alignas(32) uint8_t to_f32[256][32];  // pshufb: k-th kept 16-bit value -> high half of fp32 lane i (bf16)
  alignas(16) uint8_t to_u16[256][16];  // pshufb: k-th kept 16-bit value -> 16-bit lane i (fp16, and copies)
  alignas(32) int32_t perm[256][8];     // vpermps: lane i takes kept value k; -1 (sign bit) marks a zero lane
  Tables() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int i = 0; i < 8; ++i) {
        const bool on = m >> i & 1;
        uint8_t* f = to_f32[m] + (i < 4 ? 0 : 16) + (i % 4) * 4;  // pshufb works within 128-bit halves
        f[0] = f[1] = 0x80;
        f[2] = on ? 2 * k : 0x80;
        f[3] = on ? 2 * k + 1 : 0x80;
        to_u16[m][2 * i] = on ? 2 * k : 0x80;
        to_u16[m][2 * i + 1] = on ? 2 * k + 1 : 0x80;
        perm[m][i] = on ? k : -1;
        k += on;
      }
    }
  }
};
const Tables kTables;

// Eight columns of group mask m as fp32 lanes, reading from v (advanced by popcount(m) by the caller).
AVX2_FN inline __m256 expand8(const void* v, unsigned m, int kind) {
  if (kind == 0) {
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kTables.perm[m]));
    const __m256 e = _mm256_permutevar8x32_ps(_mm256_loadu_ps(static_cast<const float*>(v)), idx);
    return _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_castsi256_ps(idx));
  }
  const __m128i raw = _mm_loadu_si128(static_cast<const __m128i*>(v));
  if (kind == 1)
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(raw),
                                                   _mm256_load_si256(reinterpret_cast<const __m256i*>(kTables.to_f32[m]))));
  return _mm256_cvtph_ps(_mm_shuffle_epi8(raw, _mm_load_si128(reinterpret_cast<const __m128i*>(kTables.to_u16[m]))));
}

AVX2_FN inline float hsum8(__m256 a) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// out[t] = row . x[t] for TB tokens (x rows padded to xpitch with zeros). One token keeps four
// accumulators over consecutive groups to cover the FMA latency; four tokens have one each.
template <int TB>
AVX2_FN void row_dot_avx2(const uint8_t* m, int64_t nb, const uint8_t* v, int kind, const float* x, int64_t xpitch, float* out) {
  const int size = elem_size(kind);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t g = 0;
  if (TB == 1) {
    for (; g + 4 <= nb; g += 4) {
      const unsigned b0 = m[g], b1 = m[g + 1], b2 = m[g + 2], b3 = m[g + 3];
      const uint8_t* v1 = v + _mm_popcnt_u32(b0) * size;
      const uint8_t* v2 = v1 + _mm_popcnt_u32(b1) * size;
      const uint8_t* v3 = v2 + _mm_popcnt_u32(b2) * size;
      a0 = _mm256_fmadd_ps(expand8(v, b0, kind), _mm256_loadu_ps(x + 8 * g), a0);
      a1 = _mm256_fmadd_ps(expand8(v1, b1, kind), _mm256_loadu_ps(x + 8 * g + 8), a1);
      a2 = _mm256_fmadd_ps(expand8(v2, b2, kind), _mm256_loadu_ps(x + 8 * g + 16), a2);
      a3 = _mm256_fmadd_ps(expand8(v3, b3, kind), _mm256_loadu_ps(x + 8 * g + 24), a3);
      v = v3 + _mm_popcnt_u32(b3) * size;
    }
  }
  for (; g < nb; ++g) {
    const unsigned bits = m[g];
    const __m256 e = expand8(v, bits, kind);
    v += _mm_popcnt_u32(bits) * size;
    const float* xg = x + 8 * g;
    a0 = _mm256_fmadd_ps(e, _mm256_loadu_ps(xg), a0);
    if (TB == 4) {
      a1 = _mm256_fmadd_ps(e, _mm256_loadu_ps(xg + xpitch), a1);
      a2 = _mm256_fmadd_ps(e, _mm256_loadu_ps(xg + 2 * xpitch), a2);
      a3 = _mm256_fmadd_ps(e, _mm256_loadu_ps(xg + 3 * xpitch), a3);
    }
  }
  if (TB == 1) {
    out[0] = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  } else {
    out[0] = hsum8(a0), out[1] = hsum8(a1), out[2] = hsum8(a2), out[3] = hsum8(a3);
  }
}

// y_t[0:8*nb] += xi[t] * row for the tokens of one kept input row.
AVX2_FN void row_axpy_avx2(const uint8_t* m, int64_t nb, const uint8_t* v, int kind, const float* xi, int64_t T, float* y, int64_t ypitch) {
  const int size = elem_size(kind);
  for (int64_t g = 0; g < nb; ++g) {
    const unsigned bits = m[g];
    if (!bits) continue;
    const __m256 e = expand8(v, bits, kind);
    v += _mm_popcnt_u32(bits) * size;
    for (int64_t t = 0; t < T; ++t) {
      float* yt = y + t * ypitch + 8 * g;
      _mm256_storeu_ps(yt, _mm256_fmadd_ps(e, _mm256_set1_ps(xi[t]), _mm256_loadu_ps(yt)));
    }
  }
}

// One dense row in the values' own dtype, cols entries (the last group is written through a stack buffer).
AVX2_FN void row_decompress_avx2(const uint8_t* m, int64_t nb, int64_t cols, const uint8_t* v, int kind, uint8_t* out) {
  const int size = elem_size(kind);
  alignas(32) uint8_t last[32];
  for (int64_t g = 0; g < nb; ++g) {
    const unsigned bits = m[g];
    const bool tail = 8 * g + 8 > cols;
    uint8_t* dst = tail ? last : out + 8 * g * size;
    if (kind == 0)
      _mm256_storeu_ps(reinterpret_cast<float*>(dst), expand8(v, bits, 0));
    else
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                       _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)),
                                        _mm_load_si128(reinterpret_cast<const __m128i*>(kTables.to_u16[bits]))));
    if (tail) std::memcpy(out + 8 * g * size, last, (cols - 8 * g) * size);
    v += _mm_popcnt_u32(bits) * size;
  }
}

// ---------------------------------------------------------------------------------------------- AVX-512

// Sixteen columns (two mask bytes) as fp32 lanes: an expand-load for fp32, convert + expand for 16-bit values.
AVX512_FN inline __m512 expand16(const void* v, __mmask16 m, int kind) {
  if (kind == 0) return _mm512_maskz_expandloadu_ps(m, v);
  const __m256i raw = _mm256_loadu_si256(static_cast<const __m256i*>(v));
  const __m512 f = kind == 1 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16)) : _mm512_cvtph_ps(raw);
  return _mm512_maskz_expand_ps(m, f);
}

AVX512_FN inline unsigned mask16(const uint8_t* m, int64_t nb, int64_t g) {
  return 2 * g + 1 < nb ? m[2 * g] | static_cast<unsigned>(m[2 * g + 1]) << 8 : m[2 * g];
}

template <int TB>
AVX512_FN void row_dot_avx512(const uint8_t* m, int64_t nb, const uint8_t* v, int kind, const float* x, int64_t xpitch, float* out) {
  const int size = elem_size(kind);
  const int64_t groups = (nb + 1) / 2;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t g = 0;
  if (TB == 1) {
    for (; g + 4 <= groups && 2 * g + 8 <= nb; g += 4) {
      const unsigned b0 = mask16(m, nb, g), b1 = mask16(m, nb, g + 1), b2 = mask16(m, nb, g + 2), b3 = mask16(m, nb, g + 3);
      const uint8_t* v1 = v + _mm_popcnt_u32(b0) * size;
      const uint8_t* v2 = v1 + _mm_popcnt_u32(b1) * size;
      const uint8_t* v3 = v2 + _mm_popcnt_u32(b2) * size;
      a0 = _mm512_fmadd_ps(expand16(v, b0, kind), _mm512_loadu_ps(x + 16 * g), a0);
      a1 = _mm512_fmadd_ps(expand16(v1, b1, kind), _mm512_loadu_ps(x + 16 * g + 16), a1);
      a2 = _mm512_fmadd_ps(expand16(v2, b2, kind), _mm512_loadu_ps(x + 16 * g + 32), a2);
      a3 = _mm512_fmadd_ps(expand16(v3, b3, kind), _mm512_loadu_ps(x + 16 * g + 48), a3);
      v = v3 + _mm_popcnt_u32(b3) * size;
    }
  }
  for (; g < groups; ++g) {
    const unsigned bits = mask16(m, nb, g);
    const __m512 e = expand16(v, static_cast<__mmask16>(bits), kind);
    v += _mm_popcnt_u32(bits) * size;
    const float* xg = x + 16 * g;
    a0 = _mm512_fmadd_ps(e, _mm512_loadu_ps(xg), a0);
    if (TB == 4) {
      a1 = _mm512_fmadd_ps(e, _mm512_loadu_ps(xg + xpitch), a1);
      a2 = _mm512_fmadd_ps(e, _mm512_loadu_ps(xg + 2 * xpitch), a2);
      a3 = _mm512_fmadd_ps(e, _mm512_loadu_ps(xg + 3 * xpitch), a3);
    }
  }
  if (TB == 1) {
    out[0] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  } else {
    out[0] = _mm512_reduce_add_ps(a0), out[1] = _mm512_reduce_add_ps(a1), out[2] = _mm512_reduce_add_ps(a2), out[3] = _mm512_reduce_add_ps(a3);
  }
}

AVX512_FN void row_axpy_avx512(const uint8_t* m, int64_t nb, const uint8_t* v, int kind, const float* xi, int64_t T, float* y, int64_t ypitch) {
  const int size = elem_size(kind);
  const int64_t groups = (nb + 1) / 2;
  for (int64_t g = 0; g < groups; ++g) {
    const unsigned bits = mask16(m, nb, g);
    if (!bits) continue;
    const __m512 e = expand16(v, static_cast<__mmask16>(bits), kind);
    v += _mm_popcnt_u32(bits) * size;
    for (int64_t t = 0; t < T; ++t) {
      float* yt = y + t * ypitch + 16 * g;
      _mm512_storeu_ps(yt, _mm512_fmadd_ps(e, _mm512_set1_ps(xi[t]), _mm512_loadu_ps(yt)));
    }
  }
}

AVX512_FN void row_decompress_avx512(const uint8_t* m, int64_t nb, int64_t cols, const uint8_t* v, int kind, uint8_t* out) {
  const int size = elem_size(kind);
  const int64_t groups = (nb + 1) / 2;
  for (int64_t g = 0; g < groups; ++g) {
    const unsigned bits = mask16(m, nb, g);
    const __m512 e = expand16(v, static_cast<__mmask16>(bits), kind);
    const int64_t n = std::min<int64_t>(16, cols - 16 * g);
    const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
    uint8_t* dst = out + 16 * g * size;
    if (kind == 0) {
      _mm512_mask_storeu_ps(dst, keep, e);
    } else {
      alignas(32) uint16_t half[16];
      const __m256i h = kind == 1 ? _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(e), 16)) : _mm512_cvtps_ph(e, 0);
      _mm256_store_si256(reinterpret_cast<__m256i*>(half), h);
      std::memcpy(dst, half, n * 2);
    }
    v += _mm_popcnt_u32(bits) * size;
  }
}

// 16-bit values (bf16 / fp16) copied straight into place: one expand-load fills 32 columns (AVX-512 VBMI2), with no
// conversion to fp32 and back. The mask's padding bits past `cols` are zero, so the counts stay right.
VBMI2_FN void row_decompress16_vbmi2(const uint8_t* m, int64_t nb, int64_t cols, const uint8_t* v, uint8_t* out) {
  const uint16_t* src = reinterpret_cast<const uint16_t*>(v);
  uint16_t* dst = reinterpret_cast<uint16_t*>(out);
  for (int64_t c = 0; c < cols; c += 32) {
    const int64_t b0 = c / 8;
    uint32_t bits = 0;
    if (b0 + 4 <= nb) std::memcpy(&bits, m + b0, 4);
    else
      for (int64_t i = 0; b0 + i < nb; ++i) bits |= static_cast<uint32_t>(m[b0 + i]) << (8 * i);
    const int64_t n = std::min<int64_t>(32, cols - c);
    const __mmask32 keep = n == 32 ? 0xFFFFFFFFu : (1u << n) - 1;
    _mm512_mask_storeu_epi16(dst + c, keep, _mm512_maskz_expandloadu_epi16(bits, src));
    src += _mm_popcnt_u32(bits);
  }
}

bool has_vbmi2() {
  static const bool yes = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi2");
  return yes;
}

}  // namespace

bool cpu_has(Isa isa) {
  if (isa == kAvx512) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return isa == kScalar;
}

void simd_row_dot(Isa isa, const uint8_t* mask, int64_t nb, const uint8_t* values, int kind, const float* x, int64_t xpitch, int64_t T, float* out) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) {  // four tokens share one decode of the row
    if (isa == kAvx512) row_dot_avx512<4>(mask, nb, values, kind, x + t * xpitch, xpitch, out + t);
    else row_dot_avx2<4>(mask, nb, values, kind, x + t * xpitch, xpitch, out + t);
  }
  for (; t < T; ++t) {
    if (isa == kAvx512) row_dot_avx512<1>(mask, nb, values, kind, x + t * xpitch, xpitch, out + t);
    else row_dot_avx2<1>(mask, nb, values, kind, x + t * xpitch, xpitch, out + t);
  }
}

void simd_row_axpy(Isa isa, const uint8_t* mask, int64_t nb, const uint8_t* values, int kind, const float* xi, int64_t T, float* y, int64_t ypitch) {
  if (isa == kAvx512) row_axpy_avx512(mask, nb, values, kind, xi, T, y, ypitch);
  else row_axpy_avx2(mask, nb, values, kind, xi, T, y, ypitch);
}

void simd_row_decompress(Isa isa, const uint8_t* mask, int64_t nb, int64_t cols, const uint8_t* values, int kind, uint8_t* out) {
  if (isa == kAvx512 && kind != 0 && has_vbmi2()) row_decompress16_vbmi2(mask, nb, cols, values, out);
  else if (isa == kAvx512) row_decompress_avx512(mask, nb, cols, values, kind, out);
  else row_decompress_avx2(mask, nb, cols, values, kind, out);
}

#else  // no SIMD paths outside x86: the drivers use their scalar loops

bool cpu_has(Isa isa) { return isa == kScalar; }
void simd_row_dot(Isa, const uint8_t*, int64_t, const uint8_t*, int, const float*, int64_t, int64_t, float*) {}
void simd_row_axpy(Isa, const uint8_t*, int64_t, const uint8_t*, int, const float*, int64_t, float*, int64_t) {}
void simd_row_decompress(Isa, const uint8_t*, int64_t, int64_t, const uint8_t*, int, uint8_t*) {}

#endif

}  // namespace llmsparse
