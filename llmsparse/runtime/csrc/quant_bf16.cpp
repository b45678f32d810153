// bf16 activations times symmetric int4 codes without shuffling the codes into bf16 through lookup tables.
//
// The bf16 bit pattern 0x4300 | q is the number 128 + q, exactly, for q = 0..15. So a code becomes a bf16
// value with one OR, and the dot product of a group is
//   Σ_c (q_c - 8) x_c = Σ_c (128 + q_c) x_c - 136 Σ_c x_c,
// where the second sum is the same for every row: it is formed once per call (`xsum`, fp32) and each row
// subtracts 136 · Σ_g scale_g · xsum_g at the end. vdpbf16ps multiplies bf16 pairs exactly and accumulates
// in fp32; the cancellation against 136 Σ x costs a few fp32 ulps of Σ |x| (tested against float64).
//
// Where the codes sit in their bytes decides which x column each lane meets, so x is rearranged once per
// call instead of the codes once per row:
// * kFourWay (dense rows, groups of 128k columns): 64 bytes hold 128 codes, word k holding the codes of
//   columns 4k .. 4k+3 in its four nibbles. Shift and mask (no shuffle) give four vectors of 32 words; x is
//   laid out per 128 columns as column 4k + j at position 32 j + k.
// * kEvenOdd (bitmask rows, groups of 64k): the next 64 codes of the row's stream (from any nibble: a 64-bit
//   vpermb + vpmultishiftqb) are spread to 64 bytes in stream order, byte-expanded into the kept columns (other columns
//   get code 8, the value 0: no Σ over kept columns is needed), and the vector's 32 words then hold the even
//   columns in their low bytes and the odd ones in their high bytes; x is laid out per 64 columns as the 32
//   even columns, then the 32 odd ones.
// Asymmetric codes and other group sizes take quant_simd.cpp's table path (kNatural).

#include "sparse_linear.h"

#include <cstring>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,avx512bf16,avx2,fma,f16c,popcnt")))
#define LLMSPARSE_X86 1
#else
#define LLMSPARSE_X86 0
#endif

namespace llmsparse {

QInput qsimd_bf16_input(const QMatrix& w) {
  if (w.bits != 4 || w.zero) return kNatural;
  if (w.mask) return w.group % 64 == 0 ? kEvenOdd : kNatural;
  return w.group % 128 == 0 ? kFourWay : kNatural;
}

void qsimd_bf16_arrange(QInput layout, const QMatrix& w, const uint16_t* x, int64_t xpitch, int64_t T, uint16_t* out, float* sums) {
  const int64_t block = layout == kFourWay ? 128 : 64;
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t* xs = x + t * xpitch;
    uint16_t* o = out + t * xpitch;
    for (int64_t b = 0; b < w.cols; b += block)
      for (int64_t i = 0; i < block; ++i) {
        const int64_t to = layout == kFourWay ? 32 * (i % 4) + i / 4 : (i % 2) * 32 + i / 2;
        o[b + to] = xs[b + i];
      }
    for (int64_t g = 0; g < w.groups; ++g) {
      float s = 0.f;
      for (int64_t c = g * w.group; c < (g + 1) * w.group; ++c) {
        const uint32_t u = static_cast<uint32_t>(xs[c]) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        s += f;
      }
      sums[t * w.groups + g] = s;
    }
  }
}

#if LLMSPARSE_X86
namespace {

BF16_FN inline float scale_of(const QMatrix& w, int64_t i) {
  if (w.scale_kind == 0) return static_cast<const float*>(w.scale)[i];
  if (w.scale_kind == 2) return _cvtsh_ss(static_cast<const uint16_t*>(w.scale)[i]);
  const uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(w.scale)[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <int TB>
BF16_FN void four_way(const QMatrix& w, int64_t r, const uint8_t* codes, const uint16_t* x, int64_t xpitch, const float* xsum, float* out) {
  const __m512i nib = _mm512_set1_epi16(0x000F), magic = _mm512_set1_epi16(0x4300);
  __m512 y[TB];
  float off[TB];
  for (int t = 0; t < TB; ++t) y[t] = _mm512_setzero_ps(), off[t] = 0.f;
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512 a[TB], b[TB], a2[TB], b2[TB];  // four chains: one vdpbf16ps each per 128 columns
    for (int t = 0; t < TB; ++t) a[t] = b[t] = a2[t] = b2[t] = _mm512_setzero_ps();
    for (int64_t c = g * w.group; c < (g + 1) * w.group; c += 128) {
      const __m512i q = _mm512_loadu_si512(codes + c / 2);
      const __m512i n0 = _mm512_ternarylogic_epi32(q, nib, magic, 0xEA);  // (q & 0xF) | 0x4300
      const __m512i n1 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(q, 4), nib, magic, 0xEA);
      const __m512i n2 = _mm512_ternarylogic_epi32(_mm512_srli_epi16(q, 8), nib, magic, 0xEA);
      const __m512i n3 = _mm512_or_si512(_mm512_srli_epi16(q, 12), magic);
      for (int t = 0; t < TB; ++t) {
        const uint16_t* xt = x + t * xpitch + c;
        a[t] = _mm512_dpbf16_ps(a[t], (__m512bh)n0, (__m512bh)_mm512_loadu_si512(xt));
        b[t] = _mm512_dpbf16_ps(b[t], (__m512bh)n1, (__m512bh)_mm512_loadu_si512(xt + 32));
        a2[t] = _mm512_dpbf16_ps(a2[t], (__m512bh)n2, (__m512bh)_mm512_loadu_si512(xt + 64));
        b2[t] = _mm512_dpbf16_ps(b2[t], (__m512bh)n3, (__m512bh)_mm512_loadu_si512(xt + 96));
      }
    }
    const float s = scale_of(w, r * w.groups + g);
    const __m512 sc = _mm512_set1_ps(s);
    for (int t = 0; t < TB; ++t) {
      y[t] = _mm512_fmadd_ps(_mm512_add_ps(_mm512_add_ps(a[t], b[t]), _mm512_add_ps(a2[t], b2[t])), sc, y[t]);
      off[t] += s * xsum[t * w.groups + g];
    }
  }
  for (int t = 0; t < TB; ++t) out[t] = _mm512_reduce_add_ps(y[t]) - 136.f * off[t];
}

// Sixty-four codes from nibble e, one per byte (their upper four bits hold the next code, not cleared): vpermb gives
// output qword k the source bytes 4k .. 4k+7, vpmultishiftqb takes byte j of it from bit 4 (s + j), s = e & 1.
struct Nibbles64 {
  alignas(64) uint8_t gather[64];
  alignas(64) uint8_t shift[2][64];
  Nibbles64() {
    for (int k = 0; k < 8; ++k)
      for (int j = 0; j < 8; ++j) {
        gather[8 * k + j] = static_cast<uint8_t>(4 * k + j);
        for (int s = 0; s < 2; ++s) shift[s][8 * k + j] = static_cast<uint8_t>(4 * (s + j));
      }
  }
};
const Nibbles64 kNibbles64;

// One 64-column step of even_odd: the kept columns' codes as bf16 (128 + q; 136 elsewhere) times x, into a (even columns) and b (odd).
template <int TB>
BF16_FN inline void even_odd_step(const uint8_t* codes, int64_t& e, uint64_t m, const uint16_t* x, int64_t xpitch, __m512* a, __m512* b) {
  const __m512i nib = _mm512_set1_epi16(0x000F), magic = _mm512_set1_epi16(0x4300);
  const __m512i src = _mm512_permutexvar_epi8(_mm512_load_si512(kNibbles64.gather), _mm512_loadu_si512(codes + (e >> 1)));
  const __m512i bytes = _mm512_multishift_epi64_epi8(_mm512_load_si512(kNibbles64.shift[e & 1]), src);
  e += _mm_popcnt_u64(m);
  const __m512i q = _mm512_mask_expand_epi8(_mm512_set1_epi8(8), m, bytes);
  const __m512i ev = _mm512_ternarylogic_epi32(q, nib, magic, 0xEA);  // even columns: (q & 0xF) | 0x4300
  const __m512i od = _mm512_ternarylogic_epi32(_mm512_srli_epi16(q, 8), nib, magic, 0xEA);
  for (int t = 0; t < TB; ++t) {
    const uint16_t* xt = x + t * xpitch;
    a[t] = _mm512_dpbf16_ps(a[t], (__m512bh)ev, (__m512bh)_mm512_loadu_si512(xt));
    b[t] = _mm512_dpbf16_ps(b[t], (__m512bh)od, (__m512bh)_mm512_loadu_si512(xt + 32));
  }
}

// Bitmask rows, 64 columns per step. Each group starts fresh accumulators, so groups overlap in the out-of-order
// core and vdpbf16ps's latency is not on a chain longer than a group.
template <int TB>
BF16_FN void even_odd(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t e, const uint16_t* x, int64_t xpitch, const float* xsum, float* out) {
  const uint8_t* mask = w.mask + r * w.nb;
  __m512 y[TB];
  float off[TB];
  for (int t = 0; t < TB; ++t) y[t] = _mm512_setzero_ps(), off[t] = 0.f;
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512 a[TB], b[TB];
    for (int t = 0; t < TB; ++t) a[t] = b[t] = _mm512_setzero_ps();
    for (int64_t c = g * w.group; c < (g + 1) * w.group; c += 64) {
      uint64_t m;
      std::memcpy(&m, mask + c / 8, 8);
      even_odd_step<TB>(codes, e, m, x + c, xpitch, a, b);
    }
    const float s = scale_of(w, r * w.groups + g);
    for (int t = 0; t < TB; ++t) {
      y[t] = _mm512_fmadd_ps(_mm512_add_ps(a[t], b[t]), _mm512_set1_ps(s), y[t]);
      off[t] += s * xsum[t * w.groups + g];
    }
  }
  for (int t = 0; t < TB; ++t) out[t] = _mm512_reduce_add_ps(y[t]) - 136.f * off[t];
}

template <int TB>
void row(QInput layout, const QMatrix& w, int64_t r, const uint8_t* codes, int64_t e, const uint16_t* x, int64_t xpitch, const float* xsum, float* out) {
  if (layout == kFourWay) return four_way<TB>(w, r, codes, x, xpitch, xsum, out);
  even_odd<TB>(w, r, codes, e, x, xpitch, xsum, out);
}

}  // namespace

void qsimd_row_dot_bf16_arranged(QInput layout, const QMatrix& w, int64_t r, const uint8_t* codes, int64_t first, const uint16_t* x, int64_t xpitch,
                                 const float* xsum, int64_t T, float* out) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) row<4>(layout, w, r, codes, first, x + t * xpitch, xpitch, xsum + t * w.groups, out + t);
  for (; t + 2 <= T; t += 2) row<2>(layout, w, r, codes, first, x + t * xpitch, xpitch, xsum + t * w.groups, out + t);
  for (; t < T; ++t) row<1>(layout, w, r, codes, first, x + t * xpitch, xpitch, xsum + t * w.groups, out + t);
}

#else

void qsimd_row_dot_bf16_arranged(QInput, const QMatrix&, int64_t, const uint8_t*, int64_t, const uint16_t*, int64_t, const float*, int64_t, float*) {}

#endif

}  // namespace llmsparse
