// causal_conv3d for spatially strided kernels with one time tap (the downsamplers' stride-2 convs), as a direct
// convolution on oneDNN's brgemm micro-kernel: for each output row, one GEMM per kernel row,
// [Wo, kw*Cin] x [kw*Cin, Cout], whose A rows are kw adjacent input pixels (contiguous in channels-last) read
// sw pixels apart from a float32 copy of the input row with zero columns at its edges. Kernel rows and columns
// outside the box of nonzero taps are dropped once, with the weight's preparation: the downsampler's 4x4 weight
// (a 3x3 conv zero-padded on the right and bottom only, written as a 4x4 conv whose first row and column are
// zero) costs 9 taps here, not 16. bfloat16 data is multiplied in float32 (see winograd_conv3d.cpp for why) and
// rounded once at the output, where bias and residual are added.
#include "vec.h"  // first: it sets the SIMD width ATen headers see

#include <ATen/Parallel.h>
#include <array>
#include <ATen/native/CPUBlas.h>

#include "vaekernels.h"

namespace vaekernels {
namespace {

// {first row, rows, first column, columns} of the taps [kh, kw] holding a nonzero weight (rows 0 if none)
std::array<int64_t, 4> tap_box(const at::Tensor& weight) {
  const at::Tensor any = weight.ne(0).flatten(0, 2).any(0);  // [kh, kw]
  const at::Tensor rows = any.any(1).nonzero(), cols = any.any(0).nonzero();
  if (rows.numel() == 0) return {0, 0, 0, 0};
  const int64_t r0 = rows.min().item<int64_t>(), s0 = cols.min().item<int64_t>();
  return {r0, rows.max().item<int64_t>() + 1 - r0, s0, cols.max().item<int64_t>() + 1 - s0};
}

template <typename T>
void run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         at::IntArrayRef stride, at::IntArrayRef padding, const std::optional<at::Tensor>& residual,
         const at::Tensor& out) {
  const at::Tensor box_t = derived_weight(weight, "direct/box", [&] {
    const auto b = tap_box(weight);
    return at::tensor(at::IntArrayRef(b.data(), 4), at::kLong);
  });
  const int64_t* box = box_t.const_data_ptr<int64_t>();
  const int64_t r0 = box[0], kh = box[1], s0 = box[2], kw = box[3];
  const int64_t N = x.size(0), C = x.size(1), frames = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t Cout = out.size(1), Ho = out.size(3), Wo = out.size(4);
  const int64_t sh = stride[1], sw = stride[2], ph = padding[1], pw = padding[2];
  // [kh, kw*Cin, Cout] float32 over the box: Wt[r][s*Cin + i][o] = weight[o, i, 0, r0 + r, s0 + s]
  const at::Tensor wt = derived_weight(weight, "direct", [&] {
    return weight.select(2, 0)
        .slice(2, r0, r0 + kh)
        .slice(3, s0, s0 + kw)
        .permute({2, 3, 1, 0})
        .to(at::kFloat)
        .contiguous()
        .view({kh, kw * C, Cout});
  });
  const float* wptr = wt.const_data_ptr<float>();
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::zeros({Cout}, at::kFloat);
  const float* bptr = b.const_data_ptr<float>();
  at::Tensor r;  // the residual in x's dtype with dense channels
  if (residual) {
    r = residual->to(x.scalar_type());
    if (r.stride(1) != 1) r = r.contiguous(at::MemoryFormat::ChannelsLast3d);
  }
  const T* rptr = residual ? r.const_data_ptr<T>() : nullptr;
  const T* xptr = x.const_data_ptr<T>();
  T* optr = out.data_ptr<T>();

  // input column w of a row lies at column w + left of its copy; output pixel j reads columns from j*sw + s0 - pw on
  const int64_t left = std::max<int64_t>(0, pw - s0);
  const int64_t padded = left + std::max(W, (Wo - 1) * sw + s0 + kw - pw);
  const int64_t lda = sw * C, K = kw * C;
  at::parallel_for(0, N * frames * Ho, 1, [&](int64_t begin, int64_t end) {
    const at::Tensor scratch = at::empty({padded * C + Wo * Cout}, at::kFloat);
    float* row = scratch.data_ptr<float>();
    float* acc = row + padded * C;
    std::fill(row, row + left * C, 0.f);
    std::fill(row + (left + W) * C, row + padded * C, 0.f);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (frames * Ho), t = item / Ho % frames, i = item % Ho;
      bool first = true;
      for (int64_t kr = 0; kr < kh; ++kr) {
        const int64_t h = i * sh + r0 + kr - ph;
        if (h < 0 || h >= H) continue;  // a zero row of the padding
        const T* src = xptr + n * x.stride(0) + t * x.stride(2) + h * x.stride(3);
        for (int64_t w = 0; w < W; ++w) {
          for (int64_t c = 0; c < C; c += kLanes) {
            const int64_t len = std::min(kLanes, C - c);
            store(load(src + w * x.stride(4) + c, len), row + (left + w) * C + c, len);
          }
        }
        at::native::cpublas::brgemm(Wo, Cout, K, lda, Cout, Cout, !first, row + (left + s0 - pw) * C,
                                    wptr + kr * K * Cout, acc, false);
        first = false;
      }
      if (first) std::fill(acc, acc + Wo * Cout, 0.f);
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t at_out = n * out.stride(0) + t * out.stride(2) + i * out.stride(3) + j * out.stride(4);
        const int64_t at_res = residual ? n * r.stride(0) + t * r.stride(2) + i * r.stride(3) + j * r.stride(4) : 0;
        for (int64_t c = 0; c < Cout; c += kLanes) {
          const int64_t len = std::min(kLanes, Cout - c);
          Vec o = Vec::loadu(acc + j * Cout + c, len) + Vec::loadu(bptr + c, len);
          if (rptr) o = o + load(rptr + at_res + c, len);
          store(o, optr + at_out + c, len);
        }
      }
    }
  });
}

}  // namespace

bool strided_applies(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& cache,
                     at::IntArrayRef stride, at::IntArrayRef padding) {
  return weight.size(2) == 1 && stride[0] == 1 && padding[0] == 0 && (stride[1] > 1 || stride[2] > 1) &&
         weight.size(1) >= kMinBrgemmInChannels && x.stride(1) == 1 && (!cache || cache->size(2) == 0) &&
         brgemm_convs_serve(x.scalar_type());
}

void strided_conv3d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    at::IntArrayRef stride, at::IntArrayRef padding, const std::optional<at::Tensor>& residual,
                    const at::Tensor& out) {
  TORCH_CHECK(out.stride(1) == 1, "strided_conv3d: out must have dense channels");
  if (out.numel() == 0) return;
  x.scalar_type() == at::kFloat ? run<float>(x, weight, bias, stride, padding, residual, out)
                                : run<at::BFloat16>(x, weight, bias, stride, padding, residual, out);
}

}  // namespace vaekernels
