// AVX-512 decoding of quantized rows (sparse_linear.h's QMatrix): integer codes become fp32 lanes in
// registers, never a dense matrix in memory.
//
// Sixteen columns at a time: the next popcount(mask) codes are read from the row's code stream
// (int4: one unaligned 8-byte load shifted by the stream's nibble parity, nibbles split with two
// ANDs and an unpack; int8: one 16-byte load), widened to int32, converted to fp32, the offset and
// zero point subtracted, and expanded (vexpandps) into the lanes whose mask bit is set, zeros
// elsewhere. A group of columns accumulates sum(q·x) in fp32 and is multiplied by its scale once:
// y = Σ_g scale_g · Σ_{c∈g} (q_c - zp_g) x_c, the dequantize-then-matmul sum regrouped.

#include "sparse_linear.h"

#include <cstring>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define LLMSPARSE_X86 1
#include <immintrin.h>
#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx2,fma,f16c,popcnt")))
#define VBMI_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt")))
#define BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,avx512bf16,avx2,fma,f16c,popcnt")))
#else
#define LLMSPARSE_X86 0
#endif

namespace llmsparse {

#if LLMSPARSE_X86
namespace {

AVX512_FN inline float scale_at(const QMatrix& w, int64_t r, int64_t g) {
  const int64_t i = r * w.groups + g;
  if (w.scale_kind == 0) return static_cast<const float*>(w.scale)[i];
  const uint16_t bits = static_cast<const uint16_t*>(w.scale)[i];
  if (w.scale_kind == 2) return _cvtsh_ss(bits);
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Sixteen codes from code index e of the stream at `codes`, as fp32 (q + 2^(bits-1), still offset).
AVX512_FN inline __m512 codes16(const uint8_t* codes, int64_t e, int bits) {
  if (bits == 8) return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + e))));
  const uint8_t* p = codes + (e >> 1);
  uint64_t lo;
  std::memcpy(&lo, p, 8);
  const uint64_t odd = -static_cast<uint64_t>(e & 1);
  const uint64_t n = (lo >> (4 * (e & 1))) | ((static_cast<uint64_t>(p[8]) << 60) & odd);
  const __m128i v = _mm_cvtsi64_si128(static_cast<int64_t>(n));
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m128i b = _mm_unpacklo_epi8(_mm_and_si128(v, low), _mm_and_si128(_mm_srli_epi16(v, 4), low));
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
}

AVX512_FN inline unsigned qmask16(const QMatrix& w, int64_t r, int64_t c) {
  if (!w.mask) return 0xFFFFu;
  const uint8_t* m = w.mask + r * w.nb;
  const int64_t b = c / 8;
  return b + 1 < w.nb ? m[b] | static_cast<unsigned>(m[b + 1]) << 8 : m[b];
}

// The group's lanes for columns [c, c+16): (q - zp) in the kept lanes, 0 elsewhere; advances e.
AVX512_FN inline __m512 step(const QMatrix& w, int64_t r, int64_t c, const uint8_t* codes, int64_t& e, __m512 offset) {
  const unsigned m = qmask16(w, r, c);
  const __m512 q = _mm512_sub_ps(codes16(codes, e, w.bits), offset);
  e += w.mask ? _mm_popcnt_u32(m) : 16;
  return w.mask ? _mm512_maskz_expand_ps(static_cast<__mmask16>(m), q) : q;
}

AVX512_FN inline __m512 offset_of(const QMatrix& w, int64_t r, int64_t g) {
  const float zp = w.zero ? static_cast<float>(w.zero[r * w.groups + g]) : 0.f;
  return _mm512_set1_ps(static_cast<float>(1 << (w.bits - 1)) + zp);
}

// Byte j of the 32 nibbles that start at nibble parity s: source byte (j + s) / 2 (vpermb indices), for s = 0 and 1.
struct NibbleIndex {
  alignas(32) uint8_t idx[2][32];
  NibbleIndex() {
    for (int s = 0; s < 2; ++s)
      for (int j = 0; j < 32; ++j) idx[s][j] = static_cast<uint8_t>((j + s) / 2);
  }
};
const NibbleIndex kNibbles;

// Thirty-two columns at once (AVX-512 VBMI/VBMI2): the codes as signed bytes (q - offset - zp, int4 any grid or int8
// symmetric), expanded into the kept columns with one byte expand (zeros elsewhere).
VBMI_FN inline __m256i bytes32(const QMatrix& w, int64_t r, int64_t c, const uint8_t* codes, int64_t& e, __m256i bias) {
  __m256i b;
  if (w.bits == 4) {
    const int s = static_cast<int>(e & 1);
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (e >> 1)));
    const __m256i x = _mm256_permutexvar_epi8(_mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbles.idx[s])), raw);
    const __m256i low = _mm256_set1_epi8(0x0F);
    b = _mm256_mask_blend_epi8(s ? 0x55555555u : 0xAAAAAAAAu, _mm256_and_si256(x, low), _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
  } else {
    b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + e));
  }
  b = _mm256_sub_epi8(b, bias);
  if (!w.mask) {
    e += 32;
    return b;
  }
  uint32_t m;
  std::memcpy(&m, w.mask + r * w.nb + c / 8, 4);
  e += _mm_popcnt_u32(m);
  return _mm256_maskz_expand_epi8(m, b);
}

// bytes32 widened to two fp32 vectors.
VBMI_FN inline void step32(const QMatrix& w, int64_t r, int64_t c, const uint8_t* codes, int64_t& e, __m256i bias, __m512& q0, __m512& q1) {
  const __m256i b = bytes32(w, r, c, codes, e, bias);
  q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
}

// bf16 of the integers -16..15, indexed by their low five bits (vpermw reads only those).
struct Bf16Ints {
  alignas(64) uint16_t v[32];
  Bf16Ints() {
    for (int i = 0; i < 32; ++i) {
      const float f = static_cast<float>(i < 16 ? i : i - 32);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      v[i] = static_cast<uint16_t>(u >> 16);  // exact: at most 4 significant bits
    }
  }
};
const Bf16Ints kBf16Ints;

// bf16 activations and int4 codes (AVX-512 BF16): the 32 codes become bf16 integers (exact) with one vpermw and
// vdpbf16ps multiplies them with 32 bf16 inputs, accumulating pairs in fp32. x rows hold bf16 bits, `xpitch` apart.
template <int TB>
BF16_FN void qrow_dot_bf16(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t e, const uint16_t* x, int64_t xpitch, float* out) {
  const __m512i table = _mm512_load_si512(kBf16Ints.v);
  __m512 y[TB];
  for (int t = 0; t < TB; ++t) y[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    const int zp = w.zero ? w.zero[r * w.groups + g] : 0;
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(8 + zp));
    __m512 a[TB];
    for (int t = 0; t < TB; ++t) a[t] = _mm512_setzero_ps();
    for (int64_t c = g * w.group; c < (g + 1) * w.group; c += 32) {
      const __m512i q = _mm512_permutexvar_epi16(_mm512_cvtepi8_epi16(bytes32(w, r, c, codes, e, bias)), table);
      for (int t = 0; t < TB; ++t)
        a[t] = _mm512_dpbf16_ps(a[t], (__m512bh)q, (__m512bh)_mm512_loadu_si512(x + t * xpitch + c));
    }
    const __m512 sc = _mm512_set1_ps(scale_at(w, r, g));
    for (int t = 0; t < TB; ++t) y[t] = _mm512_fmadd_ps(a[t], sc, y[t]);
  }
  for (int t = 0; t < TB; ++t) out[t] = _mm512_reduce_add_ps(y[t]);
}

template <int TB>
VBMI_FN void qrow_dot32(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t e, const float* x, int64_t xpitch, float* out) {
  __m512 y[TB];
  for (int t = 0; t < TB; ++t) y[t] = _mm512_setzero_ps();
  const int offset = 1 << (w.bits - 1);
  for (int64_t g = 0; g < w.groups; ++g) {
    const int zp = w.zero ? w.zero[r * w.groups + g] : 0;
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(offset + zp));
    const __m512 fbias = _mm512_set1_ps(static_cast<float>(offset + zp));
    __m512 a[TB], b[TB];
    for (int t = 0; t < TB; ++t) a[t] = b[t] = _mm512_setzero_ps();
    const int64_t c1 = (g + 1) * w.group;
    int64_t c = g * w.group;
    for (; c + 32 <= c1; c += 32) {
      __m512 q0, q1;
      step32(w, r, c, codes, e, bias, q0, q1);
      for (int t = 0; t < TB; ++t) {
        a[t] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(x + t * xpitch + c), a[t]);
        b[t] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + t * xpitch + c + 16), b[t]);
      }
    }
    for (; c < c1; c += 16) {  // a per-channel row's tail
      const __m512 q = step(w, r, c, codes, e, fbias);
      for (int t = 0; t < TB; ++t) a[t] = _mm512_fmadd_ps(q, _mm512_loadu_ps(x + t * xpitch + c), a[t]);
    }
    const __m512 sc = _mm512_set1_ps(scale_at(w, r, g));
    for (int t = 0; t < TB; ++t) y[t] = _mm512_fmadd_ps(_mm512_add_ps(a[t], b[t]), sc, y[t]);
  }
  for (int t = 0; t < TB; ++t) out[t] = _mm512_reduce_add_ps(y[t]);
}

bool has_vbmi() {
  static const bool yes = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512vl");
  return yes;
}

template <int TB>
AVX512_FN void qrow_dot(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t e, const float* x, int64_t xpitch, float* out) {
  __m512 y[TB];
  for (int t = 0; t < TB; ++t) y[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    const __m512 offset = offset_of(w, r, g);
    __m512 a[TB], b[TB];
    for (int t = 0; t < TB; ++t) a[t] = b[t] = _mm512_setzero_ps();
    const int64_t c1 = (g + 1) * w.group;
    int64_t c = g * w.group;
    for (; c + 32 <= c1; c += 32) {  // two independent chains cover the FMA latency
      const __m512 q0 = step(w, r, c, codes, e, offset);
      const __m512 q1 = step(w, r, c + 16, codes, e, offset);
      for (int t = 0; t < TB; ++t) {
        a[t] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(x + t * xpitch + c), a[t]);
        b[t] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + t * xpitch + c + 16), b[t]);
      }
    }
    for (; c < c1; c += 16) {  // x rows are zero-padded past cols, the mask bits too
      const __m512 q = step(w, r, c, codes, e, offset);
      for (int t = 0; t < TB; ++t) a[t] = _mm512_fmadd_ps(q, _mm512_loadu_ps(x + t * xpitch + c), a[t]);
    }
    const __m512 s = _mm512_set1_ps(scale_at(w, r, g));
    for (int t = 0; t < TB; ++t) y[t] = _mm512_fmadd_ps(_mm512_add_ps(a[t], b[t]), s, y[t]);
  }
  for (int t = 0; t < TB; ++t) out[t] = _mm512_reduce_add_ps(y[t]);
}

AVX512_FN void qrow_decompress(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t e, float* out) {
  for (int64_t g = 0; g < w.groups; ++g) {
    const __m512 offset = offset_of(w, r, g);
    const __m512 s = _mm512_set1_ps(scale_at(w, r, g));
    for (int64_t c = g * w.group; c < (g + 1) * w.group && c < w.cols; c += 16) {
      const __m512 v = _mm512_mul_ps(step(w, r, c, codes, e, offset), s);
      const int64_t n = w.cols - c < 16 ? w.cols - c : 16;
      _mm512_mask_storeu_ps(out + c, static_cast<__mmask16>((1u << n) - 1), v);
    }
  }
}

}  // namespace

bool qsimd_fits(Isa isa, const QMatrix& w) {
  return isa == kAvx512 && cpu_has(kAvx512) && __builtin_cpu_supports("avx512bw") && (w.group % 16 == 0 || w.groups == 1);
}

void qsimd_row_dot(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, const float* x, int64_t xpitch, int64_t T, float* out) {
  int64_t t = 0;
  if (has_vbmi() && (w.group % 32 == 0 || w.groups == 1) && !(w.bits == 8 && w.zero)) {  // int8 - zp can leave the byte range
    for (; t + 4 <= T; t += 4) qrow_dot32<4>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
    for (; t + 2 <= T; t += 2) qrow_dot32<2>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
    for (; t < T; ++t) qrow_dot32<1>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
    return;
  }
  for (; t + 4 <= T; t += 4) qrow_dot<4>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
  for (; t + 2 <= T; t += 2) qrow_dot<2>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
  for (; t < T; ++t) qrow_dot<1>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
}

void qsimd_row_decompress(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, float* out) { qrow_decompress(w, r, codes, first, out); }

bool qsimd_bf16_fits(Isa isa, const QMatrix& w) {
  static const bool bf16 = __builtin_cpu_supports("avx512bf16");
  return qsimd_fits(isa, w) && bf16 && has_vbmi() && w.bits == 4 && w.group % 32 == 0;
}

void qsimd_row_dot_bf16(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, const uint16_t* x, int64_t xpitch, int64_t T, float* out) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) qrow_dot_bf16<4>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
  for (; t + 2 <= T; t += 2) qrow_dot_bf16<2>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
  for (; t < T; ++t) qrow_dot_bf16<1>(w, r, codes, first, x + t * xpitch, xpitch, out + t);
}

#else

bool qsimd_fits(Isa, const QMatrix&) { return false; }
void qsimd_row_dot(const QMatrix&, int64_t, const uint8_t*, int64_t, const float*, int64_t, int64_t, float*) {}
void qsimd_row_decompress(const QMatrix&, int64_t, const uint8_t*, int64_t, float*) {}
bool qsimd_bf16_fits(Isa, const QMatrix&) { return false; }
void qsimd_row_dot_bf16(const QMatrix&, int64_t, const uint8_t*, int64_t, const uint16_t*, int64_t, int64_t, float*) {}

#endif

}  // namespace llmsparse
