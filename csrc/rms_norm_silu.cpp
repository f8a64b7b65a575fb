// rms_norm_silu: y = x / max(||x||_2 over channels, eps) * sqrt(C) * gamma, then SiLU.
//
// Activations are channels-last, so each position's C channels are contiguous: one task reads a
// position's row once into L1 (sum of squares), then scales and writes it; rows are split between
// threads. Statistics are float32 for bf16 inputs. Tensors whose channel rows are not dense
// (e.g. NCDHW) go through a copy into that layout first; that is the simple path, not the model's.

#include "vec.h"  // first: it sets the SIMD width ATen headers see

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "vaekernels.h"

namespace vaekernels {
namespace {

// 1 / (1 + exp(-v)) to about 2e-4 relative, for results rounded to bfloat16 (2^-9): exp as 2^t, t = -v log2(e),
// with a cubic for 2^f on [-1/2, 1/2] (fitted, relative error 7.5e-5) scaled by 2^round(t), and a 14-bit
// reciprocal. 2.5x faster than ATen's exp_u20 and a division (on AVX-512; elsewhere those are used).
inline Vec sigmoid_bf16(const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 t = _mm512_mul_ps(v, _mm512_set1_ps(-1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.05517162f), f, _mm512_set1_ps(0.24261117f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.693261f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.99992807f));
  const __m512 e = _mm512_scalef_ps(p, n);  // p * 2^n; overflows to inf (sigmoid 0) for v < -88
  return Vec(_mm512_rcp14_ps(_mm512_add_ps(e, _mm512_set1_ps(1.f))));
#else
  return Vec(1.f) / (Vec(1.f) + v.neg().exp_u20());
#endif
}

// x, y: [rows, C] dense; scale: [C] float32 = sqrt(C) * gamma.
template <typename T>
void rms_rows(const T* x, T* y, const float* scale, int64_t rows, int64_t C, bool silu, float eps) {
  // about 32 KiB of input per task, so the split stays even on small tensors
  const int64_t grain = std::max<int64_t>(1, 8192 / C);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    const Vec one(1.f);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      Vec acc(0.f);
      for (int64_t c = 0; c < C; c += kLanes) {
        const Vec v = load(xr + c, std::min(kLanes, C - c));  // lanes past the row load as 0
        acc = at::vec::fmadd(v, v, acc);
      }
      const float norm = std::max(std::sqrt(at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc)), eps);
      const Vec inv(1.f / norm);
      for (int64_t c = 0; c < C; c += kLanes) {
        const int64_t n = std::min(kLanes, C - c);
        Vec v = load(xr + c, n) * inv * Vec::loadu(scale + c, n);
        if (silu) v = std::is_same_v<T, at::BFloat16> ? v * sigmoid_bf16(v) : v / (one + v.neg().exp());
        store(v, yr + c, n);
      }
    }
  });
}

// [N, C, ...] -> [N, ..., C] view, whose rows are positions.
at::Tensor rows_view(const at::Tensor& t) { return t.movedim(1, -1); }

inline Vec sigmoid(const Vec& v, bool bf16) { return bf16 ? sigmoid_bf16(v) : Vec(1.f) / (Vec(1.f) + v.neg().exp()); }

// Rows per task of the backward: each task sums its rows' gamma gradient into its own partial row, and the partials
// are added in task order, so the result does not depend on the thread count.
constexpr int64_t kBackwardRows = 256;

// The backward of rms_rows. With xhat = x * s / n (n = max(|x|, eps), s = sqrt(C)) and u = xhat * gamma, dy the
// output's gradient taken back through the SiLU: gamma's gradient is sum over rows of dy * xhat, and x's is
// (dy * gamma - x * <dy * gamma, x> / |x|^2) * s / n (the projection term only where |x| > eps, as autograd
// through the clamp gives). Three passes over a row: |x|^2; dy * gamma into `gy` (a row in L1) with both sums;
// x's gradient. partial: [tasks, C] float32.
template <typename T>
void rms_rows_backward(const T* dy, const T* x, const float* gamma, T* dx, float* partial, int64_t rows, int64_t C,
                       bool silu, float eps) {
  const float s = static_cast<float>(std::sqrt(double(C)));
  const bool bf16 = std::is_same_v<T, at::BFloat16>;
  const int64_t tasks = (rows + kBackwardRows - 1) / kBackwardRows;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> gy(C);
    const Vec one(1.f);
    for (int64_t task = begin; task < end; ++task) {
      float* pg = partial + task * C;
      std::fill(pg, pg + C, 0.f);
      for (int64_t r = task * kBackwardRows; r < std::min(rows, (task + 1) * kBackwardRows); ++r) {
        const T* xr = x + r * C;
        const T* dyr = dy + r * C;
        Vec acc(0.f);
        for (int64_t c = 0; c < C; c += kLanes) {
          const Vec v = load(xr + c, std::min(kLanes, C - c));
          acc = at::vec::fmadd(v, v, acc);
        }
        const float ss = at::vec::vec_reduce_all<float>(std::plus<Vec>(), acc);
        const float norm = std::sqrt(ss);
        const float inv = s / std::max(norm, eps);
        Vec dot(0.f);
        for (int64_t c = 0; c < C; c += kLanes) {
          const int64_t n = std::min(kLanes, C - c);
          const Vec v = load(xr + c, n), g = Vec::loadu(gamma + c, n), xhat = v * Vec(inv);
          Vec d = load(dyr + c, n);
          if (silu) {
            const Vec u = xhat * g, sig = sigmoid(u, bf16);
            d = d * sig * (one + u * (one - sig));
          }
          at::vec::fmadd(d, xhat, Vec::loadu(pg + c, n)).store(pg + c, n);
          const Vec gyc = d * g;
          gyc.store(gy.data() + c, n);
          dot = at::vec::fmadd(gyc, v, dot);
        }
        const float proj = norm > eps ? at::vec::vec_reduce_all<float>(std::plus<Vec>(), dot) / ss : 0.f;
        T* dxr = dx + r * C;
        for (int64_t c = 0; c < C; c += kLanes) {
          const int64_t n = std::min(kLanes, C - c);
          store((Vec::loadu(gy.data() + c, n) - load(xr + c, n) * Vec(proj)) * Vec(inv), dxr + c, n);
        }
      }
    }
  });
}

}  // namespace

void rms_norm_silu_out(const at::Tensor& x, const at::Tensor& gamma, bool silu, double eps, at::Tensor& out) {
  TORCH_CHECK(x.dim() >= 2, "rms_norm_silu: x must be [N, C, ...]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "rms_norm_silu (C++): float32 or bfloat16 only, got ", x.scalar_type());
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(),
              "rms_norm_silu: out must match x in shape and dtype");
  const int64_t C = x.size(1);
  TORCH_CHECK(gamma.numel() == C, "rms_norm_silu: gamma must have ", C, " elements");
  if (x.numel() == 0) return;
  const at::Tensor scale = (gamma.reshape(-1).to(at::kFloat) * static_cast<float>(std::sqrt(double(C)))).contiguous();
  const at::Tensor xr = rows_view(x).contiguous();  // a view for channels-last input
  at::Tensor outr = rows_view(out);
  // a strided `out` (not dense rows) gets the result through a temporary
  at::Tensor dst = outr.is_contiguous() ? outr : at::empty_like(xr);
  const int64_t rows = x.numel() / C;
  const float e = static_cast<float>(eps);
  if (x.scalar_type() == at::kFloat) {
    rms_rows(xr.const_data_ptr<float>(), dst.mutable_data_ptr<float>(), scale.const_data_ptr<float>(), rows, C, silu, e);
  } else {
    rms_rows(xr.const_data_ptr<at::BFloat16>(), dst.mutable_data_ptr<at::BFloat16>(), scale.const_data_ptr<float>(),
             rows, C, silu, e);
  }
  if (!dst.is_same(outr)) outr.copy_(dst);
}

at::Tensor rms_norm_silu(const at::Tensor& x, const at::Tensor& gamma, bool silu, double eps) {
  // same strides as x: channels-last in, channels-last out
  at::Tensor out = at::empty_like(x);
  rms_norm_silu_out(x, gamma, silu, eps, out);
  return out;
}

}  // namespace vaekernels

namespace vaekernels {

std::tuple<at::Tensor, at::Tensor> rms_norm_silu_backward(const at::Tensor& grad, const at::Tensor& x,
                                                          const at::Tensor& gamma, bool silu, double eps) {
  TORCH_CHECK(x.dim() >= 2, "rms_norm_silu_backward: x must be [N, C, ...]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "rms_norm_silu_backward (C++): float32 or bfloat16 only, got ", x.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "rms_norm_silu_backward: grad must match x in shape and dtype");
  const int64_t C = x.size(1);
  TORCH_CHECK(gamma.numel() == C, "rms_norm_silu_backward: gamma must have ", C, " elements");
  const at::Tensor xr = rows_view(x).contiguous();
  at::Tensor dxr = at::empty_like(xr);
  const int64_t rows = C ? x.numel() / C : 0;
  const int64_t tasks = (rows + kBackwardRows - 1) / kBackwardRows;
  at::Tensor partial = at::zeros({std::max<int64_t>(tasks, 1), C}, x.options().dtype(at::kFloat));
  if (rows && C) {
    const at::Tensor dyr = rows_view(grad).contiguous();  // a stride-0 gradient (of a sum) becomes dense here
    const at::Tensor g = gamma.reshape(-1).to(at::kFloat).contiguous();
    const float e = static_cast<float>(eps);
    if (x.scalar_type() == at::kFloat) {
      rms_rows_backward(dyr.const_data_ptr<float>(), xr.const_data_ptr<float>(), g.const_data_ptr<float>(),
                        dxr.mutable_data_ptr<float>(), partial.mutable_data_ptr<float>(), rows, C, silu, e);
    } else {
      rms_rows_backward(dyr.const_data_ptr<at::BFloat16>(), xr.const_data_ptr<at::BFloat16>(),
                        g.const_data_ptr<float>(), dxr.mutable_data_ptr<at::BFloat16>(),
                        partial.mutable_data_ptr<float>(), rows, C, silu, e);
    }
  }
  // back to [N, C, ...] in the ops' output format: channels-last for a channels-last x (a view), else contiguous
  at::Tensor dx = dxr.movedim(-1, 1);
  if (output_format(x) != at::MemoryFormat::ChannelsLast3d) dx = dx.contiguous();
  return {dx, partial.sum(0).to(gamma.scalar_type()).reshape(gamma.sizes())};
}

}  // namespace vaekernels
