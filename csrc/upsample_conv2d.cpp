// upsample_conv2d: nearest 2x in H and W, then a 3x3 conv with padding 1, computed on the input grid.
//
// Output pixel (2i+a, 2j+b) reads upsampled rows 2i+a-1 .. 2i+a+1, which are input rows i-1+a and i+a
// only (and likewise for columns), so each output phase (a, b) is a 2x2 conv of the input whose taps
// are sums of the 3x3 taps: 16 instead of 36 multiply-adds per input pixel and channel pair, exact up
// to rounding. The four phases run as one oneDNN 2x2 conv with padding 1 and 4*Cout output channels on
// the (H+1)x(W+1) grid (phase (a, b) is that grid shifted by (a, b)); one threaded pass then scatters
// the phases into the 2H x 2W channels-last output, adding the residual when there is one. The phase weights are
// derived and packed once.
//
// Where Winograd F(4x4, 3x3) or F(6x6, 3x3) applies (bfloat16 on CPUs without AMX, output planes of 32x32 and more),
// it does 9 (F(4x4)) or 7.1 products per input pixel and channel pair instead of the phases' 16: it runs on the
// 2H x 2W grid, reading each input pixel in place for the four output pixels it stands for (F(4x4) measured 2-2.6x
// faster than the phases on 2 cores).
#include "vec.h"  // first: it sets the SIMD width ATen headers see

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "vaekernels.h"

namespace vaekernels {
namespace {

// [Cout, Cin, 3, 3] -> [4*Cout, Cin, 2, 2], phase p = 2a+b at channels [p*Cout, (p+1)*Cout).
// Row r of phase a gathers the 3x3 rows landing on input row i-1+a+r: a=0: {0}, {1,2}; a=1: {0,1}, {2}.
at::Tensor phase_weight(const at::Tensor& weight) {
  const at::Tensor gather = at::tensor({1., 0., 0., 0., 1., 1., 1., 1., 0., 0., 0., 1.}, at::kDouble).view({2, 2, 3});
  const at::Tensor w = weight.to(at::kDouble);
  return at::einsum("arh,bsw,oihw->aboirs", {gather, gather, w}).reshape({4 * w.size(0), w.size(1), 2, 2});
}

// y: [frames, H+1, W+1, 4*C] (phases on channels) -> out: [frames, 2H, 2W, C], plus `res` (out's shape) when given;
// all dense. The residual is added in float32 and rounded once, as the conv's own bias is.
template <typename T>
void scatter_phases(const T* y, T* out, const T* res, int64_t frames, int64_t H, int64_t W, int64_t C) {
  at::parallel_for(0, frames * 2 * H, 8, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t f = row / (2 * H), r = row % (2 * H), i = r / 2, a = r % 2;
      const T* src = y + (f * (H + 1) + i + a) * (W + 1) * 4 * C;
      T* dst = out + row * 2 * W * C;
      const T* add = res ? res + row * 2 * W * C : nullptr;
      for (int64_t j = 0; j < W; ++j) {
        for (int64_t b = 0; b < 2; ++b) {
          const T* from = src + ((j + b) * 4 + 2 * a + b) * C;
          const int64_t at = (2 * j + b) * C;
          if (!add) {
            std::memcpy(dst + at, from, C * sizeof(T));
            continue;
          }
          for (int64_t c = 0; c < C; c += kLanes) {
            const int64_t len = std::min(kLanes, C - c);
            store(load(from + c, len) + load(add + at + c, len), dst + at + c, len);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor upsample_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.dim() == 5 && weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 &&
                  weight.size(3) == 3,
              "upsample_conv2d: x [N, C, T, H, W] and weight [Cout, C, 3, 3] expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "upsample_conv2d (C++): float32 or bfloat16 only, got ", x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4), Cout = weight.size(0);
  const bool channels_last = output_format(x) == at::MemoryFormat::ChannelsLast3d;
  at::Tensor out = at::empty({N, Cout, T, 2 * H, 2 * W}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  TORCH_CHECK(!residual || residual->sizes() == out.sizes(), "upsample_conv2d: residual must have the output's shape");
  if (out.numel() == 0) return channels_last ? out : out.contiguous();
  const at::Tensor xcl = x.contiguous(at::MemoryFormat::ChannelsLast3d), w5 = weight.unsqueeze(2);
  // Winograd reads x upsampled in place; it does fewer products than the phases only with tiles larger than 2x2
  if (winograd_applies(xcl, w5, std::nullopt, {1, 1, 1}, {0, 1, 1}) &&
      winograd_tile(xcl, 2 * H, 2 * W) > 2) {
    winograd_conv3d(xcl, w5, bias, std::nullopt, 0, residual, out, /*upsample=*/true);
    return channels_last ? out : out.contiguous();
  }
  // frames as a batch of channels-last images: a view of channels-last-3d x
  const at::Tensor frames =
      x.contiguous(at::MemoryFormat::ChannelsLast3d).transpose(1, 2).reshape({N * T, C, H, W});
  const std::vector<int64_t> padding{1, 1}, stride{1, 1};
  const at::Tensor packed = derived_weight(
      weight, c10::str("phases/", x.scalar_type()),
      [&] { return prepack_conv_weight(phase_weight(weight), x.scalar_type(), padding, stride, frames.sizes()); },
      frames.sizes());
  std::optional<at::Tensor> bias4;
  if (bias) bias4 = bias->to(x.scalar_type()).repeat({4});
  const at::Tensor y = onednn_conv(frames, packed, bias4, padding, stride, std::nullopt);
  at::Tensor r;  // the residual as dense channels-last frames in x's dtype
  if (residual) r = residual->to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast3d);
  if (x.scalar_type() == at::kFloat) {
    scatter_phases(y.const_data_ptr<float>(), out.mutable_data_ptr<float>(), residual ? r.const_data_ptr<float>() : nullptr,
                   N * T, H, W, Cout);
  } else {
    scatter_phases(y.const_data_ptr<at::BFloat16>(), out.mutable_data_ptr<at::BFloat16>(),
                   residual ? r.const_data_ptr<at::BFloat16>() : nullptr, N * T, H, W, Cout);
  }
  return channels_last ? out : out.contiguous();
}

}  // namespace vaekernels
