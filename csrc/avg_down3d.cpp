// avg_down3d: Wan2.2's parameter-free downsampling shortcut (see vaekernels/ops/avg_down3d.py).
//
// Output frame j averages the ft x fs x fs blocks of frames j*ft .. j*ft+ft-1 of the sequence "zero frames, cache,
// x": each block is moved into channels (input channel c, then the t, h, w offsets: k = c*factor + q) and groups of
// `group` consecutive k are averaged into one output channel. One pass: a thread takes whole output rows, sums
// each output pixel's factor input pixels into float32 accumulators (a zero frame adds nothing) and rounds once.
// The sequence is read where it lies (x and cache by their strides, channels dense), so no frames are joined.
#include <ATen/Parallel.h>

#include <vector>

#include "vaekernels.h"

namespace vaekernels {
namespace {

template <typename T>
void average(const at::Tensor& x, const std::optional<at::Tensor>& cache, int64_t zeros, int64_t ft, int64_t fs,
             const at::Tensor& out) {
  const int64_t N = out.size(0), O = out.size(1), M = out.size(2), Hs = out.size(3), Ws = out.size(4);
  const int64_t C = x.size(1), factor = ft * fs * fs, group = C * factor / O, c_frames = cache ? cache->size(2) : 0;
  // dst[q * C + c]: the output channel that input channel c at block offset q goes to
  std::vector<int32_t> dst(factor * C);
  for (int64_t q = 0; q < factor; ++q) {
    for (int64_t c = 0; c < C; ++c) dst[q * C + c] = static_cast<int32_t>((c * factor + q) / group);
  }
  const float scale = 1.0f / static_cast<float>(group);
  const T* xp = x.const_data_ptr<T>();
  const T* cp = cache ? cache->const_data_ptr<T>() : nullptr;
  T* op = out.mutable_data_ptr<T>();
  // the frame of the sequence at index s: null for a zero frame, else its first element and strides
  auto frame = [&](int64_t n, int64_t s, const at::Tensor** src) -> const T* {
    if (s < zeros) return nullptr;
    if (s < zeros + c_frames) {
      *src = &*cache;
      return cp + n * cache->stride(0) + (s - zeros) * cache->stride(2);
    }
    *src = &x;
    return xp + n * x.stride(0) + (s - zeros - c_frames) * x.stride(2);
  };
  at::parallel_for(0, N * M * Hs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(O);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (M * Hs), j = row / Hs % M, h = row % Hs;
      for (int64_t w = 0; w < Ws; ++w) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t a = 0; a < ft; ++a) {
          const at::Tensor* src = nullptr;
          const T* f = frame(n, j * ft + a, &src);
          if (!f) continue;  // a zero frame
          for (int64_t b = 0; b < fs; ++b) {
            for (int64_t e = 0; e < fs; ++e) {
              const T* p = f + (h * fs + b) * src->stride(3) + (w * fs + e) * src->stride(4);
              const int32_t* to = dst.data() + ((a * fs + b) * fs + e) * C;
              for (int64_t c = 0; c < C; ++c) acc[to[c]] += static_cast<float>(p[c]);
            }
          }
        }
        T* o = op + n * out.stride(0) + j * out.stride(2) + h * out.stride(3) + w * out.stride(4);
        for (int64_t k = 0; k < O; ++k) o[k] = static_cast<T>(acc[k] * scale);
      }
    }
  });
}

}  // namespace

at::Tensor avg_down3d(const at::Tensor& x, const std::optional<at::Tensor>& cache, int64_t zeros, int64_t factor_t,
                      int64_t factor_s, int64_t out_channels) {
  TORCH_CHECK(x.dim() == 5, "avg_down3d: x must be [N, C, T, H, W]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "avg_down3d (C++): float32 or bfloat16 only, got ", x.scalar_type());
  const int64_t factor = factor_t * factor_s * factor_s, c_frames = cache ? cache->size(2) : 0;
  TORCH_CHECK(factor_t >= 1 && factor_s >= 1 && out_channels >= 1 && (x.size(1) * factor) % out_channels == 0,
              "avg_down3d: bad factors or out_channels");
  const auto format = output_format(x);
  at::Tensor out = at::empty({x.size(0), out_channels, (zeros + c_frames + x.size(2)) / factor_t, x.size(3) / factor_s,
                              x.size(4) / factor_s},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  if (out.numel() == 0) return out.contiguous(format);
  // dense channels, as the model's channels-last activations have (a copy for other layouts)
  const auto dense = [](const at::Tensor& t) {
    return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast3d);
  };
  const at::Tensor xd = dense(x);
  std::optional<at::Tensor> cd;
  if (cache && c_frames) cd = dense(cache->to(x.scalar_type()));
  if (x.scalar_type() == at::kFloat) {
    average<float>(xd, cd, zeros, factor_t, factor_s, out);
  } else {
    average<at::BFloat16>(xd, cd, zeros, factor_t, factor_s, out);
  }
  return out.contiguous(format);
}

}  // namespace vaekernels
