// upsample_conv2d: nearest 2x in H and W, then a 3x3 conv with padding 1, computed on the input grid.
//
// Output pixel (2i+a, 2j+b) reads upsampled rows 2i+a-1 .. 2i+a+1, which are input rows i-1+a and i+a
// only (and likewise for columns), so each output phase (a, b) is a 2x2 conv of the input whose taps
// are sums of the 3x3 taps: 16 instead of 36 multiply-adds per input pixel and channel pair, exact up
// to rounding. The four phases run as one oneDNN 2x2 conv with padding 1 and 4*Cout output channels on
// the (H+1)x(W+1) grid (phase (a, b) is that grid shifted by (a, b)); one threaded pass then scatters
// the phases into the 2H x 2W channels-last output. The phase weights are derived and packed once.
//
// Where Winograd F(4x4, 3x3) or F(6x6, 3x3) applies (bfloat16 on CPUs without AMX, output planes of 32x32 and more),
// it does 9 (F(4x4)) or 7.1 products per input pixel and channel pair instead of the phases' 16: it runs on the
// 2H x 2W grid, reading each input pixel in place for the four output pixels it stands for (F(4x4) measured 2-2.6x
// faster than the phases on 2 cores).
#include <ATen/Parallel.h>

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

// y: [frames, H+1, W+1, 4*C] (phases on channels) -> out: [frames, 2H, 2W, C]; both dense, bytes per element `es`.
void scatter_phases(const char* y, char* out, int64_t frames, int64_t H, int64_t W, int64_t C, int64_t es) {
  const int64_t pixel = C * es;
  at::parallel_for(0, frames * 2 * H, 8, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t f = row / (2 * H), r = row % (2 * H), i = r / 2, a = r % 2;
      const char* src = y + (f * (H + 1) + i + a) * (W + 1) * 4 * pixel;
      char* dst = out + row * 2 * W * pixel;
      for (int64_t j = 0; j < W; ++j) {
        for (int64_t b = 0; b < 2; ++b) {
          std::memcpy(dst + (2 * j + b) * pixel, src + ((j + b) * 4 + 2 * a + b) * pixel, pixel);
        }
      }
    }
  });
}

}  // namespace

at::Tensor upsample_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 5 && weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 &&
                  weight.size(3) == 3,
              "upsample_conv2d: x [N, C, T, H, W] and weight [Cout, C, 3, 3] expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "upsample_conv2d (C++): float32 or bfloat16 only, got ", x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4), Cout = weight.size(0);
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast3d) && !x.is_contiguous();
  at::Tensor out = at::empty({N, Cout, T, 2 * H, 2 * W}, x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  if (out.numel() == 0) return channels_last ? out : out.contiguous();
  const at::Tensor xcl = x.contiguous(at::MemoryFormat::ChannelsLast3d), w5 = weight.unsqueeze(2);
  // Winograd reads x upsampled in place; it does fewer products than the phases only with tiles larger than 2x2
  if (winograd_applies(xcl, w5, std::nullopt, {1, 1, 1}, {0, 1, 1}) && winograd_tile(xcl, 2 * H, 2 * W) > 2) {
    winograd_conv3d(xcl, w5, bias, std::nullopt, 0, std::nullopt, out, /*upsample=*/true);
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
  scatter_phases(static_cast<const char*>(y.const_data_ptr()), static_cast<char*>(out.mutable_data_ptr()), N * T, H,
                 W, Cout, x.element_size());
  return channels_last ? out : out.contiguous();
}

}  // namespace vaekernels
