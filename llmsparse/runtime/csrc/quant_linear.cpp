// Quantized weights for CPU inference: y = x W^T with W held as integer codes + group scales, sparse
// (bitmask of kept positions, codes of the kept weights only) or dense (pack-quantized rows).
//
// Calls with few tokens (qrows_matmul) dequantize in registers (quant_simd.cpp, AVX-512; a scalar
// loop elsewhere or for group sizes that are not a multiple of 16); longer inputs (qblocked_matmul)
// dequantize a block of rows into a buffer that stays in cache, in the scales' dtype (so its values
// are exactly (q - zp)·scale rounded as the fake-quantized model holds them) and run the dense GEMM
// there. Nothing here ever holds the whole dense matrix.

#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "schedule.h"
#include "sparse_linear.h"

using llmsparse::Isa;
using llmsparse::kAvx512;
using llmsparse::kScalar;
using llmsparse::QMatrix;

namespace {

constexpr int64_t kCodeSlack = 64;  // bytes the SIMD step may read past a row's last code

int kind_of(const torch::Tensor& t) {
  const auto type = t.scalar_type();
  TORCH_CHECK(type == torch::kFloat32 || type == torch::kBFloat16 || type == torch::kFloat16, "quant_linear: scales must be float32, bfloat16 or float16");
  return type == torch::kFloat32 ? 0 : type == torch::kBFloat16 ? 1 : 2;
}

QMatrix qmatrix(const torch::Tensor& codes, int64_t bits, const torch::Tensor& mask, const torch::Tensor& row_offsets, int64_t rows, int64_t cols,
                const torch::Tensor& scale, const torch::Tensor& zero) {
  TORCH_CHECK(bits == 4 || bits == 8, "quant_linear: bits must be 4 or 8");
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && codes.is_contiguous() && !codes.is_cuda(), "quant_linear: codes must be contiguous CPU uint8");
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == rows && scale.size(1) > 0 && cols % scale.size(1) == 0 && scale.is_contiguous(),
              "quant_linear: scale must be contiguous [rows, groups] with groups dividing cols");
  QMatrix w{};
  w.codes = codes.data_ptr<uint8_t>();
  w.code_bytes = codes.numel();
  w.rows = rows, w.cols = cols, w.bits = static_cast<int>(bits);
  w.groups = scale.size(1), w.group = cols / scale.size(1);
  w.scale = scale.data_ptr(), w.scale_kind = kind_of(scale);
  w.zero = nullptr;
  if (zero.numel()) {
    TORCH_CHECK(zero.scalar_type() == torch::kInt8 && zero.sizes() == scale.sizes() && zero.is_contiguous(), "quant_linear: zero_point must be int8 like scale");
    w.zero = zero.data_ptr<int8_t>();
  }
  if (mask.numel() || rows == 0) {
    TORCH_CHECK(mask.scalar_type() == torch::kUInt8 && mask.dim() == 2 && mask.size(0) == rows && mask.size(1) == (cols + 7) / 8 && mask.is_contiguous(),
                "quant_linear: mask must be uint8 [rows, ceil(cols/8)]");
    TORCH_CHECK(row_offsets.scalar_type() == torch::kInt64 && row_offsets.numel() == rows && row_offsets.is_contiguous(), "quant_linear: row_offsets must be int64 [rows]");
    w.mask = mask.data_ptr<uint8_t>(), w.nb = mask.size(1), w.row_offsets = row_offsets.data_ptr<int64_t>();
    w.total_codes = w.code_bytes * 8 / bits;  // an upper bound (the stream is padded to whole words); rows end at the next row's start
    w.row_bytes = 0;
  } else {
    w.mask = nullptr, w.nb = (cols + 7) / 8, w.row_offsets = nullptr;
    w.row_bytes = rows ? w.code_bytes / rows : 0;
    TORCH_CHECK(w.row_bytes * 8 >= cols * bits, "quant_linear: dense codes must be [rows, >= cols*bits/8 bytes]");
    w.total_codes = cols;
  }
  return w;
}

// The codes a row's SIMD walk may read (up to kCodeSlack bytes past its last one): the stored ones,
// or a zero-padded copy for rows near the end of the buffer; `first` becomes the row's first code index in it.
const uint8_t* row_stream(const QMatrix& w, int64_t r, int64_t& first, std::vector<uint8_t>& pad) {
  const uint8_t* base = w.row_codes(r);
  const int64_t offset = base - w.codes;
  first = w.start(r);
  const int64_t end_byte = offset + (w.mask ? (w.end(r) * w.bits + 7) / 8 : w.row_bytes);
  if (end_byte + kCodeSlack <= w.code_bytes) return base;
  const int64_t from = offset + first * w.bits / 8;  // whole bytes: int4 streams keep their parity
  pad.assign(end_byte - from + kCodeSlack, 0);
  std::memcpy(pad.data(), w.codes + from, std::min(end_byte, w.code_bytes) - from);
  first -= (first * w.bits / 8) * 8 / w.bits;
  return pad.data();
}

inline int code_at(const uint8_t* codes, int64_t e, int bits) {
  return bits == 8 ? codes[e] : (codes[e >> 1] >> (4 * (e & 1))) & 0xF;
}

float scale_value(const QMatrix& w, int64_t i) {
  if (w.scale_kind == 0) return static_cast<const float*>(w.scale)[i];
  const uint16_t bits = static_cast<const uint16_t*>(w.scale)[i];
  if (w.scale_kind == 2) return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
  return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
}

// Calls f(column, q - zp, scale) for every kept entry of row r (the scalar path: any group size, any CPU).
template <typename F>
void scalar_qrow(const QMatrix& w, int64_t r, const uint8_t* codes, int64_t e, F&& f) {
  const int offset = 1 << (w.bits - 1);
  for (int64_t c = 0; c < w.cols; ++c) {
    if (w.mask && !(w.mask[r * w.nb + c / 8] >> (c % 8) & 1)) continue;
    const int64_t g = c / w.group, i = r * w.groups + g;
    const int zp = w.zero ? w.zero[i] : 0;
    f(c, static_cast<float>(code_at(codes, e++, w.bits) - offset - zp), scale_value(w, i));
  }
}

void qdot_row(bool simd, const QMatrix& w, int64_t r, std::vector<uint8_t>& pad, const float* x, int64_t xpitch, int64_t T, float* out) {
  int64_t first;
  const uint8_t* codes = row_stream(w, r, first, pad);
  if (simd) return llmsparse::qsimd_row_dot(w, r, codes, first, x, xpitch, T, out);
  for (int64_t t = 0; t < T; ++t) out[t] = 0.f;
  scalar_qrow(w, r, codes, first, [&](int64_t c, float q, float s) {
    for (int64_t t = 0; t < T; ++t) out[t] += q * s * x[t * xpitch + c];
  });
}

// Rows [r0, r1) dequantized to fp32 into dst (row-major, `cols` apart).
void qdecompress_rows(bool simd, const QMatrix& w, int64_t r0, int64_t r1, float* dst, std::vector<uint8_t>& pad) {
  for (int64_t r = r0; r < r1; ++r) {
    float* row = dst + (r - r0) * w.cols;
    int64_t first;
    const uint8_t* codes = row_stream(w, r, first, pad);
    if (simd) {
      llmsparse::qsimd_row_decompress(w, r, codes, first, row);
      continue;
    }
    std::fill(row, row + w.cols, 0.f);
    scalar_qrow(w, r, codes, first, [&](int64_t c, float q, float s) { row[c] = q * s; });
  }
}

bool use_simd(int64_t isa, const QMatrix& w) {
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512, "quant_linear: unknown ISA ", isa);
  TORCH_CHECK(llmsparse::cpu_has(static_cast<Isa>(isa)), "quant_linear: this CPU (or build) has no such SIMD path");
  return llmsparse::qsimd_fits(static_cast<Isa>(isa), w);
}

int64_t chunk_rows(const QMatrix& w, int threads) {
  const int64_t grain = std::max<int64_t>(16, 32768 / std::max<int64_t>(1, w.nb));
  return std::max<int64_t>(4, std::min<int64_t>(grain, w.rows / (8 * std::max(1, threads))));
}

}  // namespace

// y = x W^T for a quantized W [rows, cols] (mask empty: dense codes), fp32 accumulation, result in x's dtype.
torch::Tensor qrows_matmul(torch::Tensor x, torch::Tensor codes, int64_t bits, torch::Tensor mask, torch::Tensor row_offsets, int64_t cols,
                           torch::Tensor scale, torch::Tensor zero, c10::optional<torch::Tensor> bias, int64_t isa) {
  const QMatrix w = qmatrix(codes, bits, mask, row_offsets, scale.size(0), cols, scale, zero);
  const bool simd = use_simd(isa, w);
  TORCH_CHECK(!x.is_cuda() && x.size(-1) == cols, "quant_linear: x must be a CPU tensor [..., ", cols, "]");
  const bool bf16 = x.scalar_type() == torch::kBFloat16 && isa == kAvx512 && llmsparse::qsimd_bf16_fits(static_cast<Isa>(isa), w);
  const int64_t pitch = (cols + 31) / 32 * 32;
  const auto xc = x.reshape({-1, cols}).to(bf16 ? torch::kBFloat16 : torch::kFloat32);
  const int64_t T = xc.size(0);
  auto xp = torch::zeros({T, pitch}, xc.options());
  xp.narrow(1, 0, cols).copy_(xc);
  auto out = torch::empty({w.rows, T}, xc.options().dtype(torch::kFloat32));
  const llmsparse::QInput layout = bf16 ? llmsparse::qsimd_bf16_input(w) : llmsparse::kNatural;
  torch::Tensor sums;
  if (layout != llmsparse::kNatural) {  // the input rearranged to meet the codes where they sit in their bytes
    auto arranged = torch::zeros_like(xp);
    sums = torch::empty({T, w.groups}, xc.options().dtype(torch::kFloat32));
    llmsparse::qsimd_bf16_arrange(layout, w, static_cast<const uint16_t*>(xp.data_ptr()), pitch, T, static_cast<uint16_t*>(arranged.data_ptr()),
                                  sums.data_ptr<float>());
    xp = arranged;
  }
  const void* xd = xp.data_ptr();
  const float* sd = sums.defined() ? sums.data_ptr<float>() : nullptr;
  float* od = out.data_ptr<float>();
  const int most = at::get_num_threads();
  llmsparse::paced_chunks({w.rows, cols, bits + (w.mask ? 0 : 100), T}, w.rows, chunk_rows(w, most), most, [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> pad;
    for (int64_t r = r0; r < r1; ++r) {
      if (!bf16) {
        qdot_row(simd, w, r, pad, static_cast<const float*>(xd), pitch, T, od + r * T);
        continue;
      }
      int64_t first;
      const uint8_t* codes = row_stream(w, r, first, pad);
      if (layout != llmsparse::kNatural)
        llmsparse::qsimd_row_dot_bf16_arranged(layout, w, r, codes, first, static_cast<const uint16_t*>(xd), pitch, sd, T, od + r * T);
      else
        llmsparse::qsimd_row_dot_bf16(w, r, codes, first, static_cast<const uint16_t*>(xd), pitch, T, od + r * T);
    }
  });
  auto y = T == 1 ? out.view({1, w.rows}) : out.t().contiguous();
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  auto sizes = x.sizes().vec();
  sizes.back() = w.rows;
  return y.to(x.scalar_type()).view(sizes);
}

// The dense [rows, cols] matrix, (q - zp)·scale rounded to out's dtype, written into `out`.
void qdecompress(torch::Tensor codes, int64_t bits, torch::Tensor mask, torch::Tensor row_offsets, torch::Tensor scale, torch::Tensor zero,
                 torch::Tensor out, int64_t isa) {
  const QMatrix w = qmatrix(codes, bits, mask, row_offsets, scale.size(0), out.size(1), scale, zero);
  const bool simd = use_simd(isa, w);
  TORCH_CHECK(out.is_contiguous() && out.size(0) == w.rows, "quant_linear: out must be contiguous [rows, cols]");
  const int64_t block = 256;
  auto buf = torch::empty({std::min(block, std::max<int64_t>(1, w.rows)), w.cols}, out.options().dtype(torch::kFloat32));
  std::vector<uint8_t> pad;
  for (int64_t r0 = 0; r0 < w.rows; r0 += block) {
    const int64_t n = std::min(block, w.rows - r0);
    qdecompress_rows(simd, w, r0, r0 + n, buf.data_ptr<float>(), pad);
    out.narrow(0, r0, n).copy_(buf.narrow(0, 0, n));
  }
}

// y = x W^T for many tokens: `block` rows at a time dequantized (in the scales' dtype) into a cached buffer, then a dense GEMM.
torch::Tensor qblocked_matmul(torch::Tensor x, torch::Tensor codes, int64_t bits, torch::Tensor mask, torch::Tensor row_offsets, int64_t cols,
                              torch::Tensor scale, torch::Tensor zero, c10::optional<torch::Tensor> bias, int64_t block, int64_t isa) {
  const QMatrix w = qmatrix(codes, bits, mask, row_offsets, scale.size(0), cols, scale, zero);
  const bool simd = use_simd(isa, w);
  TORCH_CHECK(!x.is_cuda() && x.size(-1) == cols && block > 0, "quant_linear: x must be a CPU tensor [..., ", cols, "], block positive");
  const auto xd = x.reshape({-1, cols}).to(scale.scalar_type()).contiguous();
  auto y = torch::empty({xd.size(0), w.rows}, xd.options().dtype(torch::kFloat32));
  const int64_t rows = std::min(block, std::max<int64_t>(w.rows, 1));
  auto f32 = torch::empty({rows, cols}, xd.options().dtype(torch::kFloat32));
  auto buf = scale.scalar_type() == torch::kFloat32 ? f32 : torch::empty({rows, cols}, scale.options());
  const int most = at::get_num_threads();
  for (int64_t r0 = 0; r0 < w.rows; r0 += block) {
    const int64_t n = std::min(block, w.rows - r0);
    llmsparse::run_chunks(n, std::max<int64_t>(8, n / (8 * most)), most, [&](int64_t a, int64_t b) {
      std::vector<uint8_t> pad;
      qdecompress_rows(simd, w, r0 + a, r0 + b, f32.data_ptr<float>() + a * cols, pad);
    });
    if (buf.data_ptr() != f32.data_ptr()) buf.narrow(0, 0, n).copy_(f32.narrow(0, 0, n));
    y.narrow(1, r0, n).copy_(at::linear(xd, buf.narrow(0, 0, n)));
  }
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  auto sizes = x.sizes().vec();
  sizes.back() = w.rows;
  return y.to(x.scalar_type()).view(sizes);
}

// Turn the per-shape choice of thread count off (always all threads) or back on; the bench compares both.
void set_adaptive_threads(bool on) { llmsparse::Pacer::get().set_adaptive(on); }
