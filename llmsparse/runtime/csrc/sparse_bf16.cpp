// bf16 values times bf16 inputs for the output-major decode walk (sparse_linear.h): AVX-512 BF16 + VBMI2, chosen per call.
//
// The kept values are expand-loaded into their 16-bit column lanes (32 columns per instruction) and multiplied
// by the bf16 inputs with vdpbf16ps: the products of two bf16 numbers are exact in fp32 and the pairs accumulate
// in fp32, so the result is the fp32 paths' up to summation order, with no conversion in the loop.

#include "sparse_linear.h"

#include <cstring>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define BF16DOT_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx512bf16,popcnt")))

namespace llmsparse {
namespace {

// bf16 values and bf16 inputs: 32 columns per step, the kept values expand-loaded into their 16-bit lanes (VBMI2) and
// multiplied by 32 bf16 inputs with vdpbf16ps (products exact in fp32, pairs accumulated in fp32). No conversion in
// the loop, and x stays bf16: a 11008-wide input row is 22 KiB, which L1 holds, where its fp32 copy (43 KiB) does not.
template <int TB>
BF16DOT_FN void row_dot_bf16(const uint8_t* m, int64_t nb, const uint16_t* v, const uint16_t* x, int64_t xpitch, float* out) {
  __m512 a[TB], b[TB];
  for (int t = 0; t < TB; ++t) a[t] = b[t] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= nb; g += 8) {  // 64 columns: two independent accumulator chains
    uint32_t m0, m1;
    std::memcpy(&m0, m + g, 4);
    std::memcpy(&m1, m + g + 4, 4);
    const __m512i w0 = _mm512_maskz_expandloadu_epi16(m0, v);
    v += _mm_popcnt_u32(m0);
    const __m512i w1 = _mm512_maskz_expandloadu_epi16(m1, v);
    v += _mm_popcnt_u32(m1);
    for (int t = 0; t < TB; ++t) {
      a[t] = _mm512_dpbf16_ps(a[t], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(x + t * xpitch + 8 * g));
      b[t] = _mm512_dpbf16_ps(b[t], (__m512bh)w1, (__m512bh)_mm512_loadu_si512(x + t * xpitch + 8 * g + 32));
    }
  }
  for (; g < nb; g += 4) {  // the row's last columns (x is zero-padded to a multiple of 32)
    uint32_t bits = 0;
    for (int64_t i = 0; i < 4 && g + i < nb; ++i) bits |= static_cast<uint32_t>(m[g + i]) << (8 * i);
    const __m512i w0 = _mm512_maskz_expandloadu_epi16(bits, v);
    v += _mm_popcnt_u32(bits);
    for (int t = 0; t < TB; ++t) a[t] = _mm512_dpbf16_ps(a[t], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(x + t * xpitch + 8 * g));
  }
  for (int t = 0; t < TB; ++t) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(a[t], b[t]));
}

// Two rows at once for one token: each 64-byte load of x feeds both rows, which halves the L1/L2 traffic for x
// (wide rows evict x from L1 as their values stream through; docs/RUNTIME.md).
BF16DOT_FN void row_pair_bf16(const uint8_t* ma, const uint8_t* mb, int64_t nb, const uint16_t* va, const uint16_t* vb, const uint16_t* x, float* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
  int64_t g = 0;
  for (; g + 8 <= nb; g += 8) {
    uint32_t ma0, ma1, mb0, mb1;
    std::memcpy(&ma0, ma + g, 4);
    std::memcpy(&ma1, ma + g + 4, 4);
    std::memcpy(&mb0, mb + g, 4);
    std::memcpy(&mb1, mb + g + 4, 4);
    const __m512i x0 = _mm512_loadu_si512(x + 8 * g), x1 = _mm512_loadu_si512(x + 8 * g + 32);
    const __m512i wa0 = _mm512_maskz_expandloadu_epi16(ma0, va);
    va += _mm_popcnt_u32(ma0);
    const __m512i wa1 = _mm512_maskz_expandloadu_epi16(ma1, va);
    va += _mm_popcnt_u32(ma1);
    const __m512i wb0 = _mm512_maskz_expandloadu_epi16(mb0, vb);
    vb += _mm_popcnt_u32(mb0);
    const __m512i wb1 = _mm512_maskz_expandloadu_epi16(mb1, vb);
    vb += _mm_popcnt_u32(mb1);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)wa0, (__m512bh)x0);
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)wa1, (__m512bh)x1);
    b0 = _mm512_dpbf16_ps(b0, (__m512bh)wb0, (__m512bh)x0);
    b1 = _mm512_dpbf16_ps(b1, (__m512bh)wb1, (__m512bh)x1);
  }
  for (; g < nb; g += 4) {
    uint32_t bits_a = 0, bits_b = 0;
    for (int64_t i = 0; i < 4 && g + i < nb; ++i) {
      bits_a |= static_cast<uint32_t>(ma[g + i]) << (8 * i);
      bits_b |= static_cast<uint32_t>(mb[g + i]) << (8 * i);
    }
    const __m512i xv = _mm512_loadu_si512(x + 8 * g);
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_maskz_expandloadu_epi16(bits_a, va), (__m512bh)xv);
    b0 = _mm512_dpbf16_ps(b0, (__m512bh)_mm512_maskz_expandloadu_epi16(bits_b, vb), (__m512bh)xv);
    va += _mm_popcnt_u32(bits_a);
    vb += _mm_popcnt_u32(bits_b);
  }
  out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  out[1] = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
}

}  // namespace

bool bf16_dot_fits(Isa isa) {
  static const bool yes = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi2");
  return isa == kAvx512 && yes;
}

void simd_row_dot_bf16(const uint8_t* mask, int64_t nb, const uint16_t* values, const uint16_t* x, int64_t xpitch, int64_t T, float* out) {
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) row_dot_bf16<4>(mask, nb, values, x + t * xpitch, xpitch, out + t);
  for (; t + 2 <= T; t += 2) row_dot_bf16<2>(mask, nb, values, x + t * xpitch, xpitch, out + t);
  for (; t < T; ++t) row_dot_bf16<1>(mask, nb, values, x + t * xpitch, xpitch, out + t);
}

void simd_rows_dot_bf16(const uint8_t* ma, const uint8_t* mb, int64_t nb, const uint16_t* va, const uint16_t* vb, const uint16_t* x, float* out) {
  row_pair_bf16(ma, mb, nb, va, vb, x, out);
}

}  // namespace llmsparse

#else

namespace llmsparse {
bool bf16_dot_fits(Isa) { return false; }
void simd_row_dot_bf16(const uint8_t*, int64_t, const uint16_t*, const uint16_t*, int64_t, int64_t, float*) {}
void simd_rows_dot_bf16(const uint8_t*, const uint8_t*, int64_t, const uint16_t*, const uint16_t*, const uint16_t*, float*) {}
}  // namespace llmsparse

#endif
