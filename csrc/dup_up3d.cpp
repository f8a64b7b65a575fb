// dup_up3d: Wan2.2's parameter-free upsampling shortcut (see vaekernels/ops/dup_up3d.py).
//
// Output pixel (t*ft + a - drop, h*fs + b, w*fs + e), channel o, is input pixel (t, h, w), channel
// (o*factor + q) / repeats with q = (a*fs + b)*fs + e: each input channel repeated, the repeats unfolded into
// ft x fs x fs blocks. A pure gather, one pass over the output: a thread takes whole output rows and copies each
// pixel's channels from its input pixel through a table per block offset q (a plain copy where the table is the
// identity, as in the released model's 1024-channel stages).
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "vaekernels.h"

namespace vaekernels {
namespace {

template <typename T>
void gather(const at::Tensor& x, int64_t ft, int64_t fs, int64_t drop, const at::Tensor& out) {
  const int64_t N = out.size(0), O = out.size(1), To = out.size(2), Ho = out.size(3), Wo = out.size(4);
  const int64_t C = x.size(1), factor = ft * fs * fs, repeats = O * factor / C;
  std::vector<int32_t> src(factor * O);  // src[q * O + o]: the input channel of output channel o at offset q
  std::vector<char> identity(factor, 1);
  for (int64_t q = 0; q < factor; ++q) {
    for (int64_t o = 0; o < O; ++o) {
      src[q * O + o] = static_cast<int32_t>((o * factor + q) / repeats);
      identity[q] &= src[q * O + o] == o;
    }
  }
  const T* xp = x.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  at::parallel_for(0, N * To * Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (To * Ho), s = row / Ho % To + drop, hh = row % Ho;
      const int64_t t = s / ft, a = s % ft, h = hh / fs, b = hh % fs;
      const T* in = xp + n * x.stride(0) + t * x.stride(2) + h * x.stride(3);
      T* o = op + n * out.stride(0) + (s - drop) * out.stride(2) + hh * out.stride(3);
      for (int64_t ww = 0; ww < Wo; ++ww) {
        const int64_t q = (a * fs + b) * fs + ww % fs;
        const T* p = in + (ww / fs) * x.stride(4);
        T* d = o + ww * out.stride(4);
        if (identity[q]) {
          std::memcpy(d, p, O * sizeof(T));
          continue;
        }
        const int32_t* from = src.data() + q * O;
        for (int64_t k = 0; k < O; ++k) d[k] = p[from[k]];
      }
    }
  });
}

}  // namespace

at::Tensor dup_up3d(const at::Tensor& x, int64_t factor_t, int64_t factor_s, int64_t out_channels, int64_t drop) {
  TORCH_CHECK(x.dim() == 5, "dup_up3d: x must be [N, C, T, H, W]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "dup_up3d (C++): float32 or bfloat16 only, got ", x.scalar_type());
  const int64_t factor = factor_t * factor_s * factor_s;
  TORCH_CHECK(factor_t >= 1 && factor_s >= 1 && out_channels >= 1 && (out_channels * factor) % x.size(1) == 0 &&
                  drop >= 0 && drop <= x.size(2) * factor_t,
              "dup_up3d: bad factors, out_channels or drop");
  const auto format = output_format(x);
  at::Tensor out = at::empty({x.size(0), out_channels, x.size(2) * factor_t - drop, x.size(3) * factor_s,
                              x.size(4) * factor_s},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  if (out.numel() == 0) return out.contiguous(format);
  const at::Tensor xd = x.stride(1) == 1 ? x : x.contiguous(at::MemoryFormat::ChannelsLast3d);  // dense channels
  if (x.scalar_type() == at::kFloat) {
    gather<float>(xd, factor_t, factor_s, drop, out);
  } else {
    gather<at::BFloat16>(xd, factor_t, factor_s, drop, out);
  }
  return out.contiguous(format);
}

}  // namespace vaekernels
