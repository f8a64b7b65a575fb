// causal_conv3d for spatially strided kernels with one time tap (the downsamplers' stride-2 convs), as a direct
// convolution: blocks of output pixels gather their taps into rows [pixels, taps * Cin] (float32, zeros where a tap
// falls in the padding), multiplied by the weight [taps * Cin, Cout] with tap_gemms (GEMMs of 64+ rows: the previous
// GEMM per output row, M = Wo, read a 640-channel weight from memory for every 8 pixels, 9 GFLOP/s on 2 Zen cores).
// Kernel rows and columns outside the box of nonzero taps are dropped once, with the weight's preparation: the
// downsampler's 4x4 weight (a 3x3 conv zero-padded on the right and bottom only, written as a 4x4 conv whose first
// row and column are zero) costs 9 taps here, not 16. bfloat16 data is multiplied in float32 (see
// winograd_conv3d.cpp for why) and rounded once at the output, where bias and residual are added.
#include "vec.h"  // first: it sets the SIMD width ATen headers see

#include <ATen/Parallel.h>
#include <array>

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

// Output pixels per task: its gathered rows stay within 2 MiB (in L3 while tap_gemms walks the weight's column
// blocks over them), and at least 64 (the GEMMs' row chunk).
int64_t block_pixels(int64_t K) { return std::max<int64_t>(64, (int64_t(2) << 20) / (K * int64_t(sizeof(float)))); }

template <typename T>
void run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         at::IntArrayRef stride, at::IntArrayRef padding, const std::optional<at::Tensor>& residual,
         const at::Tensor& out) {
  const at::Tensor box_t = derived_weight(weight, "direct/box", [&] {
    const auto b = tap_box(weight);
    return at::tensor(at::IntArrayRef(b.data(), 4), at::kLong);
  });
  const int64_t* box = box_t.const_data_ptr<int64_t>();
  const int64_t r0 = box[0], kh = box[1], s0 = box[2], kw = box[3], taps = kh * kw;
  const int64_t N = x.size(0), C = x.size(1), frames = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t Cout = out.size(1), Ho = out.size(3), Wo = out.size(4);
  const int64_t sh = stride[1], sw = stride[2], ph = padding[1], pw = padding[2];
  // [taps * Cin, Cout] float32 over the box in column blocks: row (r * kw + s) * Cin + i, column o holds
  // weight[o, i, 0, r0 + r, s0 + s]
  const at::Tensor wt = derived_weight(weight, "direct", [&] {
    return column_blocks(weight.select(2, 0)
                             .slice(2, r0, r0 + kh)
                             .slice(3, s0, s0 + kw)
                             .permute({2, 3, 1, 0})
                             .to(at::kFloat)
                             .reshape({taps * C, Cout}),
                         slices(taps, C, Cout).cols);
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

  // output pixels (n, t, i, j) in order, cut into equal blocks, a multiple of the threads in number
  const int64_t K = taps * C, pixels = N * frames * Ho * Wo, threads = at::get_num_threads();
  const int64_t blocks = ((pixels + block_pixels(K) - 1) / block_pixels(K) + threads - 1) / threads * threads;
  const int64_t block = (pixels + blocks - 1) / blocks;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const at::Tensor scratch = at::empty({block * (K + Cout)}, at::kFloat);
    float* rows = scratch.data_ptr<float>();
    float* acc = rows + block * K;
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * block, np = std::min(block, pixels - p0);
      if (np <= 0) break;
      for (int64_t p = 0; p < np; ++p) {
        const int64_t q = p0 + p, j = q % Wo, i = q / Wo % Ho, t = q / (Wo * Ho) % frames, n = q / (Wo * Ho * frames);
        for (int64_t kr = 0; kr < kh; ++kr) {
          const int64_t h = i * sh + r0 + kr - ph;
          for (int64_t ks = 0; ks < kw; ++ks) {
            const int64_t w = j * sw + s0 + ks - pw;
            float* dst = rows + p * K + (kr * kw + ks) * C;
            if (h < 0 || h >= H || w < 0 || w >= W) {  // a zero of the padding
              std::fill(dst, dst + C, 0.f);
              continue;
            }
            const T* src = xptr + n * x.stride(0) + t * x.stride(2) + h * x.stride(3) + w * x.stride(4);
            for (int64_t c = 0; c < C; c += kLanes) {
              const int64_t len = std::min(kLanes, C - c);
              store(load(src + c, len), dst + c, len);
            }
          }
        }
      }
      if (taps == 0) std::fill(acc, acc + np * Cout, 0.f);
      else tap_gemms(np, C, Cout, taps, 1, rows, K, wptr, acc, 0, 0, Cout);
      for (int64_t p = 0; p < np; ++p) {
        const int64_t q = p0 + p, j = q % Wo, i = q / Wo % Ho, t = q / (Wo * Ho) % frames, n = q / (Wo * Ho * frames);
        const int64_t at_out = n * out.stride(0) + t * out.stride(2) + i * out.stride(3) + j * out.stride(4);
        const int64_t at_res = residual ? n * r.stride(0) + t * r.stride(2) + i * r.stride(3) + j * r.stride(4) : 0;
        for (int64_t c = 0; c < Cout; c += kLanes) {
          const int64_t len = std::min(kLanes, Cout - c);
          Vec o = Vec::loadu(acc + p * Cout + c, len) + Vec::loadu(bptr + c, len);
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
