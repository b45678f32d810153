// Sparse-weight matmuls for CPU inference: y = x W^T where W is held as a bit mask of kept
// positions plus the kept values, row by row (llmsparse's bitmask and N:M layouts).
//
// Layout of a stored matrix [rows, cols]: `mask` uint8 [rows, ceil(cols/8)], column c of a row is
// bit c % 8 of byte c / 8; `values` the kept values in row-major order; row r's values start at
// row_offsets[r] (bitmask layout) or at r * stride (N:M: every row keeps the same count).
//
// Decoding a group of 8 (AVX2) or 16 (AVX-512) columns puts the next popcount(m) values into the
// lanes whose mask bit is set and zeros elsewhere: one pshufb from a 256-entry table (AVX2, 16-bit
// values), vpermps + blend (AVX2, fp32), or an expand / expand-load (AVX-512F). Accumulation is fp32.
// The work per matrix is one pass over the mask and the kept values, so at batch 1 the kernels read
// (1 - sparsity) x value bytes + 1/8 byte per weight instead of the dense bytes.
//
// The SIMD row routines live in sparse_simd.cpp. Four entry points, each taking the ISA the caller
// chose (llmsparse.runtime.kernel.cpu_isa) and refusing one the CPU lacks:
//   rows_matmul  output-major walk (stored [out, in]): each output is one row's masked dot product;
//   cols_matmul  input-major walk (stored [in, out]): y += x_i * row_i for the inputs that are not
//                zero in any token, so zeroed activations skip their rows entirely;
//   blocked_matmul  output-major, many tokens: a few rows at a time decompressed into a cached buffer + GEMM;
//   decompress   the dense matrix into a caller-owned buffer (input-major prompts: decompress + GEMM).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "schedule.h"
#include "sparse_linear.h"

using llmsparse::elem_size;
using llmsparse::Isa;
using llmsparse::kAvx512;
using llmsparse::kScalar;

namespace {

// A matrix as the kernels read it. Values are raw bits: 4-byte floats or 2-byte bf16 / fp16.
struct Matrix {
  const uint8_t* mask;
  const void* values;
  const int64_t* row_offsets;  // nullptr: row r starts at r * stride
  int64_t rows, cols, nb, stride, total;
  int kind;  // 0 fp32, 1 bf16, 2 fp16

  int64_t start(int64_t r) const { return row_offsets ? row_offsets[r] : r * stride; }
  int64_t end(int64_t r) const { return r + 1 < rows ? start(r + 1) : total; }
};

// The SIMD decoders read 8 or 16 values from a row's current offset, past its last kept value:
// rows that end within `kSlack` values of the end of the buffer are decoded from a padded copy.
constexpr int64_t kSlack = 16;

const void* row_values(const Matrix& w, int64_t r, std::vector<uint8_t>& pad) {
  const int64_t s = w.start(r), e = w.end(r), size = elem_size(w.kind);
  const uint8_t* base = static_cast<const uint8_t*>(w.values) + s * size;
  if (e + kSlack <= w.total) return base;
  pad.assign((e - s + kSlack) * size, 0);
  std::memcpy(pad.data(), base, (e - s) * size);
  return pad.data();
}

// ---------------------------------------------------------------------------------------------- scalar

inline float scalar_value(const void* v, int64_t k, int kind) {
  if (kind == 0) return static_cast<const float*>(v)[k];
  const uint16_t bits = static_cast<const uint16_t*>(v)[k];
  if (kind == 1) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// Calls f(column, value) for every kept entry of row r, in column order.
template <typename F>
void scalar_row(const Matrix& w, int64_t r, F&& f) {
  const uint8_t* m = w.mask + r * w.nb;
  int64_t k = w.start(r);
  for (int64_t g = 0; g < w.nb; ++g)
    for (int b = 0; b < 8; ++b)
      if (m[g] >> b & 1) f(8 * g + b, scalar_value(w.values, k++, w.kind));
}

// ---------------------------------------------------------------------------------------------- drivers

void dot_row(Isa isa, const Matrix& w, int64_t r, const void* v, const float* x, int64_t xpitch, int64_t T, float* out) {
  if (isa != kScalar) return llmsparse::simd_row_dot(isa, w.mask + r * w.nb, w.nb, static_cast<const uint8_t*>(v), w.kind, x, xpitch, T, out);
  for (int64_t t = 0; t < T; ++t) out[t] = 0.f;
  scalar_row(w, r, [&](int64_t c, float value) {
    for (int64_t t = 0; t < T; ++t) out[t] += value * x[t * xpitch + c];
  });
}

Matrix matrix(const torch::Tensor& values, const torch::Tensor& mask, const torch::Tensor& row_offsets, int64_t cols) {
  TORCH_CHECK(!values.is_cuda() && values.is_contiguous() && mask.is_contiguous() && mask.dim() == 2, "sparse_linear: contiguous CPU tensors");
  TORCH_CHECK(mask.scalar_type() == torch::kUInt8 && mask.size(1) == (cols + 7) / 8, "sparse_linear: mask must be uint8 [rows, ceil(cols/8)]");
  const auto type = values.scalar_type();
  TORCH_CHECK(type == torch::kFloat32 || type == torch::kBFloat16 || type == torch::kFloat16, "sparse_linear: values must be float32, bfloat16 or float16");
  Matrix w;
  w.mask = mask.data_ptr<uint8_t>();
  w.values = values.data_ptr();
  w.rows = mask.size(0);
  w.cols = cols;
  w.nb = mask.size(1);
  w.total = values.numel();
  w.kind = type == torch::kFloat32 ? 0 : type == torch::kBFloat16 ? 1 : 2;
  w.row_offsets = nullptr;
  w.stride = w.rows ? w.total / w.rows : 0;
  if (row_offsets.numel()) {
    TORCH_CHECK(row_offsets.scalar_type() == torch::kInt64 && row_offsets.numel() == w.rows && row_offsets.is_contiguous(), "sparse_linear: row_offsets must be int64 [rows]");
    w.row_offsets = row_offsets.data_ptr<int64_t>();
  }
  return w;
}

Isa checked_isa(int64_t isa) {
  TORCH_CHECK(isa >= kScalar && isa <= kAvx512, "sparse_linear: unknown ISA ", isa);
  const Isa use = static_cast<Isa>(isa);
  TORCH_CHECK(llmsparse::cpu_has(use), "sparse_linear: this CPU (or build) has no ", use == kAvx512 ? "AVX-512F" : "AVX2/FMA/F16C", " path");
  return use;
}

// x [..., width] as fp32 rows of `pitch` floats (a multiple of 16), zero-padded so SIMD loads past `width` read zeros.
struct Tokens {
  std::vector<float> data;
  int64_t T = 0, pitch = 0;
};

Tokens padded_tokens(const torch::Tensor& x, int64_t width) {
  TORCH_CHECK(!x.is_cuda() && x.size(-1) == width, "sparse_linear: x must be a CPU tensor [..., ", width, "]");
  const auto type = x.scalar_type();
  const auto xc = type == torch::kFloat32 || type == torch::kBFloat16 || type == torch::kFloat16 ? x.contiguous() : x.to(torch::kFloat32).contiguous();
  Tokens t;
  t.T = width ? xc.numel() / width : 0;
  t.pitch = (width + 15) / 16 * 16;
  t.data.assign(static_cast<size_t>(t.T * t.pitch), 0.f);
  for (int64_t i = 0; i < t.T; ++i) {
    float* dst = t.data.data() + i * t.pitch;
    if (xc.scalar_type() == torch::kFloat32) {
      std::memcpy(dst, xc.data_ptr<float>() + i * width, width * sizeof(float));
    } else if (xc.scalar_type() == torch::kBFloat16) {
      const c10::BFloat16* src = xc.data_ptr<c10::BFloat16>() + i * width;
      for (int64_t c = 0; c < width; ++c) dst[c] = static_cast<float>(src[c]);
    } else {
      const c10::Half* src = xc.data_ptr<c10::Half>() + i * width;
      for (int64_t c = 0; c < width; ++c) dst[c] = static_cast<float>(src[c]);
    }
  }
  return t;
}

// Rows per parallel chunk: at most ~32k mask bytes of work each (small matrices stay on one thread:
// a parallel region costs more than they do) and at least 8 chunks per thread (schedule.h: threads
// claim chunks, so a preempted one delays the call by one chunk, not by its share).
int64_t grain(int64_t nb) { return std::max<int64_t>(16, 32768 / std::max<int64_t>(1, nb)); }
int64_t chunk(int64_t rows, int64_t nb, int threads) { return std::max<int64_t>(4, std::min<int64_t>(grain(nb), rows / (8 * std::max(1, threads)))); }

// fp32 [T, n] -> x's dtype, bias added, shaped like x with its last dimension n.
torch::Tensor finish(torch::Tensor y, const torch::Tensor& x, const c10::optional<torch::Tensor>& bias) {
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  auto sizes = x.sizes().vec();
  sizes.back() = y.size(1);
  return y.to(x.scalar_type()).view(sizes);
}

}  // namespace

// y = x W^T for W stored output-major ([out, in], `cols` = in). Rows are split across threads.
torch::Tensor rows_matmul(torch::Tensor x, torch::Tensor values, torch::Tensor mask, torch::Tensor row_offsets, int64_t cols,
                          c10::optional<torch::Tensor> bias, int64_t isa) {
  const Isa use = checked_isa(isa);
  const Matrix w = matrix(values, mask, row_offsets, cols);
  const int most = at::get_num_threads();
  if (w.kind == 1 && x.scalar_type() == torch::kBFloat16 && llmsparse::bf16_dot_fits(use)) {  // bf16 x bf16: vdpbf16ps, x stays bf16
    const int64_t pitch = (cols + 31) / 32 * 32;
    const auto xc = x.reshape({-1, cols});
    const int64_t T = xc.size(0);
    auto xp = torch::zeros({T, pitch}, xc.options());
    xp.narrow(1, 0, cols).copy_(xc);
    auto out = torch::empty({w.rows, T}, x.options().dtype(torch::kFloat32));
    const auto* xd = reinterpret_cast<const uint16_t*>(xp.data_ptr());
    float* op = out.data_ptr<float>();
    const auto* vals = static_cast<const uint16_t*>(w.values);
    llmsparse::paced_chunks({w.rows, cols, 3, T}, w.rows, chunk(w.rows, w.nb, most), most, [&](int64_t r0, int64_t r1) {
      int64_t r = r0;
      if (T == 1 && cols > 6144)  // one token, wide rows: rows in pairs, each load of x used twice (x no longer stays in L1)
        for (; r + 2 <= r1; r += 2)
          llmsparse::simd_rows_dot_bf16(w.mask + r * w.nb, w.mask + (r + 1) * w.nb, w.nb, vals + w.start(r), vals + w.start(r + 1), xd, op + r);
      for (; r < r1; ++r) llmsparse::simd_row_dot_bf16(w.mask + r * w.nb, w.nb, vals + w.start(r), xd, pitch, T, op + r * T);
    });
    return finish(T == 1 ? out.view({1, w.rows}) : out.t().contiguous(), x, bias);
  }
  const Tokens xf = padded_tokens(x, cols);
  const int64_t T = xf.T, pitch = xf.pitch;
  auto out = torch::empty({w.rows, T}, x.options().dtype(torch::kFloat32));  // row-major by output, transposed at the end
  const float* xp = xf.data.data();
  float* op = out.data_ptr<float>();
  llmsparse::paced_chunks({w.rows, cols, w.kind, T}, w.rows, chunk(w.rows, w.nb, most), most, [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> pad;
    for (int64_t r = r0; r < r1; ++r) dot_row(use, w, r, row_values(w, r, pad), xp, pitch, T, op + r * T);
  });
  return finish(T == 1 ? out.view({1, w.rows}) : out.t().contiguous(), x, bias);
}

// y = x W^T for W stored input-major ([in, out], `cols` = out): the rows of inputs that are zero in
// every token are never read. Kept inputs are split across threads, each with its own accumulator.
torch::Tensor cols_matmul(torch::Tensor x, torch::Tensor values, torch::Tensor mask, torch::Tensor row_offsets, int64_t cols,
                          c10::optional<torch::Tensor> bias, int64_t isa) {
  const Isa use = checked_isa(isa);
  const Matrix w = matrix(values, mask, row_offsets, cols);
  const Tokens xf = padded_tokens(x, w.rows);
  const int64_t T = xf.T, pitch = xf.pitch, ypitch = (cols + 15) / 16 * 16;
  const float* xp = xf.data.data();
  std::vector<int64_t> kept;
  std::vector<float> xi;  // [kept][T]: the inputs' values per token
  for (int64_t i = 0; i < w.rows; ++i) {
    bool any = false;
    for (int64_t t = 0; t < T; ++t) any |= xp[t * pitch + i] != 0.f;
    if (!any) continue;
    kept.push_back(i);
    for (int64_t t = 0; t < T; ++t) xi.push_back(xp[t * pitch + i]);
  }
  const int64_t n = static_cast<int64_t>(kept.size());
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / grain(w.nb)));
  std::vector<float> acc(static_cast<size_t>(threads * T * ypitch), 0.f);
  at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    std::vector<uint8_t> pad;
    for (int64_t p = p0; p < p1; ++p) {
      float* y = acc.data() + p * T * ypitch;
      for (int64_t j = n * p / threads; j < n * (p + 1) / threads; ++j) {
        const int64_t i = kept[j];
        const float* xt = xi.data() + j * T;
        if (use != kScalar) {
          const auto* v = static_cast<const uint8_t*>(row_values(w, i, pad));
          llmsparse::simd_row_axpy(use, w.mask + i * w.nb, w.nb, v, w.kind, xt, T, y, ypitch);
          continue;
        }
        scalar_row(w, i, [&](int64_t c, float value) {
          for (int64_t t = 0; t < T; ++t) y[t * ypitch + c] += xt[t] * value;
        });
      }
    }
  });
  auto out = torch::empty({T, cols}, x.options().dtype(torch::kFloat32));
  float* op = out.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      float s = 0.f;
      for (int64_t p = 0; p < threads; ++p) s += acc[(p * T + t) * ypitch + c];
      op[t * cols + c] = s;
    }
  return finish(out, x, bias);
}

namespace {

// Rows [r0, r1) of the dense matrix, row r written at dst + (r - r0) * cols elements (the values' dtype).
void decompress_rows(Isa use, const Matrix& w, int64_t r0, int64_t r1, uint8_t* dst) {
  const int64_t size = elem_size(w.kind), row_bytes = w.cols * size;
  const int most = at::get_num_threads();
  llmsparse::run_chunks(r1 - r0, chunk(r1 - r0, w.nb, most), most, [&](int64_t a0, int64_t b0) {
    std::vector<uint8_t> pad;
    for (int64_t r = r0 + a0; r < r0 + b0; ++r) {
      uint8_t* row = dst + (r - r0) * row_bytes;
      if (use != kScalar) {
        const auto* v = static_cast<const uint8_t*>(row_values(w, r, pad));
        llmsparse::simd_row_decompress(use, w.mask + r * w.nb, w.nb, w.cols, v, w.kind, row);
        continue;
      }
      std::memset(row, 0, row_bytes);
      int64_t k = w.start(r);
      const uint8_t* m = w.mask + r * w.nb;
      const uint8_t* src = static_cast<const uint8_t*>(w.values);
      for (int64_t c = 0; c < w.cols; ++c)
        if (m[c / 8] >> (c % 8) & 1) std::memcpy(row + c * size, src + (k++) * size, size);
    }
  });
}

}  // namespace

// The dense [rows, cols] matrix, written into `out` (same dtype as the values, contiguous).
void decompress(torch::Tensor values, torch::Tensor mask, torch::Tensor row_offsets, torch::Tensor out, int64_t isa) {
  const Isa use = checked_isa(isa);
  const Matrix w = matrix(values, mask, row_offsets, out.size(1));
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == values.scalar_type() && out.size(0) == w.rows, "sparse_linear: out must be a contiguous [rows, cols] tensor of the values' dtype");
  decompress_rows(use, w, 0, w.rows, static_cast<uint8_t*>(out.data_ptr()));
}

// y = x W^T for W stored output-major, for inputs with many tokens: `block` rows at a time are
// decompressed into a small buffer that stays in cache and multiplied there by a dense GEMM in the
// values' dtype, so the dense matrix is never written to memory and read back (what a whole-matrix
// decompress + GEMM costs twice over). Bias is added in fp32; the result has x's dtype.
torch::Tensor blocked_matmul(torch::Tensor x, torch::Tensor values, torch::Tensor mask, torch::Tensor row_offsets, int64_t cols,
                             c10::optional<torch::Tensor> bias, int64_t block, int64_t isa) {
  const Isa use = checked_isa(isa);
  const Matrix w = matrix(values, mask, row_offsets, cols);
  TORCH_CHECK(!x.is_cuda() && x.size(-1) == cols, "sparse_linear: x must be a CPU tensor [..., ", cols, "]");
  TORCH_CHECK(block > 0, "sparse_linear: block must be positive");
  const auto xd = x.reshape({-1, cols}).to(values.scalar_type()).contiguous();
  auto y = torch::empty({xd.size(0), w.rows}, values.options().dtype(torch::kFloat32));
  auto buf = torch::empty({std::min(block, std::max<int64_t>(w.rows, 1)), cols}, values.options());
  for (int64_t r0 = 0; r0 < w.rows; r0 += block) {
    const int64_t n = std::min(block, w.rows - r0);
    decompress_rows(use, w, r0, r0 + n, static_cast<uint8_t*>(buf.data_ptr()));
    y.narrow(1, r0, n).copy_(at::linear(xd, buf.narrow(0, 0, n)));  // x Wᵀ, the orientation F.linear's GEMM is fastest in
  }
  return finish(y, x, bias);
}

// quant_linear.cpp
torch::Tensor qrows_matmul(torch::Tensor x, torch::Tensor codes, int64_t bits, torch::Tensor mask, torch::Tensor row_offsets, int64_t cols,
                           torch::Tensor scale, torch::Tensor zero, c10::optional<torch::Tensor> bias, int64_t isa);
void qdecompress(torch::Tensor codes, int64_t bits, torch::Tensor mask, torch::Tensor row_offsets, torch::Tensor scale, torch::Tensor zero,
                 torch::Tensor out, int64_t isa);
torch::Tensor qblocked_matmul(torch::Tensor x, torch::Tensor codes, int64_t bits, torch::Tensor mask, torch::Tensor row_offsets, int64_t cols,
                              torch::Tensor scale, torch::Tensor zero, c10::optional<torch::Tensor> bias, int64_t block, int64_t isa);
void set_adaptive_threads(bool on);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rows_matmul", &rows_matmul, "y = x W^T, W stored [out, in] as mask + kept values");
  m.def("cols_matmul", &cols_matmul, "y = x W^T, W stored [in, out] as mask + kept values; zero inputs are skipped");
  m.def("decompress", &decompress, "the dense matrix of a mask + kept values layout, into out");
  m.def("blocked_matmul", &blocked_matmul, "y = x W^T, W stored [out, in], decompressed a block of rows at a time into a cached buffer for a dense GEMM");
  m.def("qrows_matmul", &qrows_matmul, "y = x W^T, W as integer codes + group scales (sparse: mask + kept codes), dequantized in registers");
  m.def("qdecompress", &qdecompress, "the dense matrix of a quantized layout, into out");
  m.def("qblocked_matmul", &qblocked_matmul, "y = x W^T, W quantized, a block of rows at a time dequantized into a cached buffer for a dense GEMM");
  m.def("set_adaptive_threads", &set_adaptive_threads, "choose one or all threads per call shape by timing (on), or always all (off)");
}
