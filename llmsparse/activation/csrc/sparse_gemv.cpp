// Sparse-input GEMV for batch-1 decoding: y = sum over kept inputs i of x_i * WT[i, :].
//
// WT is the weight stored transposed ([in, out], row-major), so every kept input channel reads one
// contiguous row and the rows of dropped channels are never touched.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// y[0:out] += sum over j in [j0, j1) of vals[j] * WT[idx[j], :], four rows at a time.
template <typename scalar_t>
void accumulate(const int64_t* idx, const float* vals, int64_t j0, int64_t j1, const scalar_t* wt, int64_t out, float* y) {
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    const scalar_t* r0 = wt + idx[j] * out;
    const scalar_t* r1 = wt + idx[j + 1] * out;
    const scalar_t* r2 = wt + idx[j + 2] * out;
    const scalar_t* r3 = wt + idx[j + 3] * out;
    const float v0 = vals[j], v1 = vals[j + 1], v2 = vals[j + 2], v3 = vals[j + 3];
    for (int64_t c = 0; c < out; ++c) {
      y[c] += v0 * static_cast<float>(r0[c]) + v1 * static_cast<float>(r1[c]) + v2 * static_cast<float>(r2[c]) +
              v3 * static_cast<float>(r3[c]);
    }
  }
  for (; j < j1; ++j) {
    const scalar_t* r = wt + idx[j] * out;
    const float v = vals[j];
    for (int64_t c = 0; c < out; ++c) y[c] += v * static_cast<float>(r[c]);
  }
}

// Kept rows are split across threads; each thread streams whole contiguous rows into its own
// accumulator, and the accumulators are summed at the end.
template <typename scalar_t>
void rows_axpy(const std::vector<int64_t>& idx, const std::vector<float>& vals, const scalar_t* wt, int64_t out, float* y) {
  const int64_t n = static_cast<int64_t>(idx.size());
  const int threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 64));
  std::vector<float> acc(static_cast<size_t>(threads) * out, 0.f);
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = n * t / threads, j1 = n * (t + 1) / threads;
      accumulate(idx.data(), vals.data(), j0, j1, wt, out, acc.data() + t * out);
    }
  });
  for (int64_t c = 0; c < out; ++c) y[c] = 0.f;
  for (int t = 0; t < threads; ++t) {
    const float* a = acc.data() + static_cast<int64_t>(t) * out;
    for (int64_t c = 0; c < out; ++c) y[c] += a[c];
  }
}

torch::Tensor gemv(const std::vector<int64_t>& idx, const std::vector<float>& vals, const torch::Tensor& wt,
                   const c10::optional<torch::Tensor>& bias) {
  const int64_t out = wt.size(1);
  auto y = torch::empty({out}, wt.options().dtype(torch::kFloat32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wt.scalar_type(), "sparse_gemv", [&] {
    rows_axpy<scalar_t>(idx, vals, wt.data_ptr<scalar_t>(), out, y.data_ptr<float>());
  });
  auto result = y.to(wt.scalar_type());
  if (bias.has_value()) result.add_(*bias);
  return result;
}

void check(const torch::Tensor& x, const torch::Tensor& wt) {
  TORCH_CHECK(!x.is_cuda() && !wt.is_cuda(), "sparse_gemv runs on CPU tensors");
  TORCH_CHECK(wt.dim() == 2 && wt.is_contiguous(), "WT must be a contiguous [in, out] matrix");
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && x.numel() == wt.size(0), "x must be one contiguous token of in_features entries");
  TORCH_CHECK(x.scalar_type() == wt.scalar_type(), "x and WT must have the same dtype");
}

// y shaped like x with its last dimension replaced by out_features, so the caller needs no reshapes.
torch::Tensor shaped(const torch::Tensor& y, const torch::Tensor& x) {
  auto sizes = x.sizes().vec();
  sizes.back() = y.size(0);
  return y.view(sizes);
}

}  // namespace

// Keep the inputs whose score (|x|, or |x| * scale) is above t. x is one token of any shape [..., in].
torch::Tensor threshold_gemv(torch::Tensor x, torch::Tensor wt, double t, c10::optional<torch::Tensor> scale,
                             c10::optional<torch::Tensor> bias) {
  check(x, wt);
  auto xf = x.to(torch::kFloat32).contiguous();
  const float* xp = xf.data_ptr<float>();
  const int64_t in = xf.numel();
  torch::Tensor sf;
  const float* sp = nullptr;
  if (scale.has_value()) {
    sf = scale->to(torch::kFloat32).contiguous();
    sp = sf.data_ptr<float>();
  }
  const float tf = static_cast<float>(t);
  std::vector<int64_t> idx;
  std::vector<float> vals;
  idx.reserve(in);
  vals.reserve(in);
  for (int64_t i = 0; i < in; ++i) {
    const float score = sp ? std::fabs(xp[i]) * sp[i] : std::fabs(xp[i]);
    if (score > tf) {
      idx.push_back(i);
      vals.push_back(xp[i]);
    }
  }
  return shaped(gemv(idx, vals, wt, bias), x);
}

// Keep the given input channels (top-k selection done by the caller).
torch::Tensor rows_gemv(torch::Tensor x, torch::Tensor rows, torch::Tensor wt, c10::optional<torch::Tensor> bias) {
  check(x, wt);
  auto xf = x.to(torch::kFloat32).contiguous();
  auto r = rows.to(torch::kInt64).contiguous();
  const int64_t* rp = r.data_ptr<int64_t>();
  std::vector<int64_t> idx(rp, rp + r.numel());
  std::vector<float> vals(idx.size());
  for (size_t j = 0; j < idx.size(); ++j) vals[j] = xf.data_ptr<float>()[idx[j]];
  return shaped(gemv(idx, vals, wt, bias), x);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("threshold_gemv", &threshold_gemv, "y = W x over the inputs whose score beats a threshold (WT stored [in, out])");
  m.def("rows_gemv", &rows_gemv, "y = W x over the given input rows (WT stored [in, out])");
}
