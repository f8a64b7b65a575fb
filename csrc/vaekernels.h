// Shared declarations of the CPU ops (one .cpp per op) and the oneDNN helpers they share.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>

namespace vaekernels {

at::Tensor rms_norm_silu(const at::Tensor& x, const at::Tensor& gamma, bool silu, double eps);
void rms_norm_silu_out(const at::Tensor& x, const at::Tensor& gamma, bool silu, double eps, at::Tensor& out);
// Gradients of x and gamma of rms_norm_silu given the output's gradient (float32 statistics and sums).
std::tuple<at::Tensor, at::Tensor> rms_norm_silu_backward(const at::Tensor& grad, const at::Tensor& x,
                                                          const at::Tensor& gamma, bool silu, double eps);

at::Tensor causal_conv3d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& cache, at::IntArrayRef stride, at::IntArrayRef padding,
                         const std::optional<at::Tensor>& residual);
void causal_conv3d_out(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& cache, at::IntArrayRef stride, at::IntArrayRef padding,
                       const std::optional<at::Tensor>& residual, at::Tensor& out);

// Winograd F(m x m, 3x3) for a causal_conv3d (see winograd_conv3d.cpp): whether it applies to these arguments, and
// the conv itself over `zeros` zero frames, `cache` and `x`, written into `out` (dense channels, any other strides);
// with `upsample`, every frame is read as its nearest-2x upsampling in H and W (out is then twice x's size).
bool winograd_applies(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& cache,
                      at::IntArrayRef stride, at::IntArrayRef padding);
// The output tile size m it uses for x's dtype on an H x W plane: 2, 4 or 6.
int64_t winograd_tile(const at::Tensor& x, int64_t H, int64_t W);
void winograd_conv3d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& cache, int64_t zeros, const std::optional<at::Tensor>& residual,
                     const at::Tensor& out, bool upsample = false);

// causal_conv3d's data gradient (see vaekernels/ops/causal_conv3d.py): the conv of the output's gradient `grad` with
// `front` zero frames before it and kt - 1 after, by `weight`'s channels swapped and its taps reversed, padding (ph,
// pw) in space: front + T frames. By F(2x2, 3x3) from the forward's transformed weight where data_grad_applies
// (float32, 3x3 taps, padding 1, 8+ channels in grad, dense channels), the zero frames read as nullptr frames;
// else as causal_conv3d of copies (the flipped weight, the padded gradient).
bool data_grad_applies(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef padding);
void winograd_conv3d_data_grad(const at::Tensor& grad, const at::Tensor& weight, int64_t front, const at::Tensor& out);
at::Tensor causal_conv3d_data_grad(const at::Tensor& grad, const at::Tensor& weight, int64_t front,
                                   at::IntArrayRef padding);

// causal_conv3d's weight gradient by Winograd F(2x2, 3x3) for the convs winograd_conv3d serves (3x3 taps, padding
// 1, stride 1, 8+ input channels; any kt): whether it applies, and the gradient [Cout, Cin, kt, 3, 3] in the weight's
// dtype for the output's gradient `grad`, summed in float32.
bool weight_grad_applies(const at::Tensor& x, at::IntArrayRef weight_size, at::IntArrayRef stride,
                         at::IntArrayRef padding);
at::Tensor causal_conv3d_weight_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& cache, at::IntArrayRef stride,
                                     at::IntArrayRef padding);

// Spatially strided convs with one time tap and 8+ input channels (the downsamplers) as a direct conv on brgemm
// (strided_conv3d.cpp), skipping the weight's all-zero kernel rows and columns; no cache frames.
bool strided_applies(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& cache,
                     at::IntArrayRef stride, at::IntArrayRef padding);
void strided_conv3d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    at::IntArrayRef stride, at::IntArrayRef padding, const std::optional<at::Tensor>& residual,
                    const at::Tensor& out);

// Whether the two ops above (float32 math on ATen's brgemm, oneDNN's micro-kernel) serve data of `dtype` on this
// CPU: the brgemm must run here, and bf16 data goes to oneDNN's convs instead where bf16_on_amx().
bool brgemm_convs_serve(at::ScalarType dtype);

// The memory format of an op's output (as vaekernels/shapes.py output_format): channels-last-3d when x has dense
// channels and is not plainly contiguous (a frame window of a channels-last buffer counts: the engine's conv inputs
// are such views), else contiguous.
at::MemoryFormat output_format(const at::Tensor& x);

// Whether bf16 GEMMs and convs run on AMX tiles here (and the OS lets this process use them). oneDNN's direct
// bf16 conv then reaches about 3.5 TFLOP/s on 2 cores, 9x its float32 speed. allow_amx(false) says no (the
// Python backend calls it when it loads the extension with VAEKERNELS_CPU_AMX=0, see vaekernels/envs.py).
bool bf16_on_amx();
void allow_amx(bool allowed);

// Fewest input channels for the brgemm convs above: fewer (the RGB input conv) make the GEMMs' K too short to pay
// for the transforms or row copies; those convs go to oneDNN.
constexpr int64_t kMinBrgemmInChannels = 8;

// GEMMs summed over taps (tap_gemms.cpp), float32 on brgemm: M[f] = sum_k V[f + k] U[k] for output frames
// f < nfo, `rows` rows (in chunks of at most 64) and output columns [j0, j1) (j0 a multiple of slices().cols).
// Row r's tap g starts at V + r * lda + g * C; U [kt * C, Cout] is stored as its blocks of slices(kt, C,
// Cout).cols columns one after the other, each block's rows dense (column_blocks); M[f] starts at M + f * mframe,
// its rows Cout apart. slices() cuts U so one GEMM's part of it stays in L2: all kt taps in one GEMM where that
// fits, else one tap per GEMM over blocks of output columns (a multiple of 16) that fit. Only V's frames [lo, hi)
// are read: the others are zero frames (a causal conv's in front, the data gradient's around), whose products are
// skipped (an output frame that reads none of them is written as zeros).
struct Slices {
  int64_t taps, cols;
};
Slices slices(int64_t kt, int64_t C, int64_t Cout);
at::Tensor column_blocks(const at::Tensor& w, int64_t cols);  // [K, Cout] -> its column blocks, flat
void tap_gemms(int64_t rows, int64_t C, int64_t Cout, int64_t kt, int64_t nfo, const float* V, int64_t lda,
               const float* U, float* M, int64_t mframe, int64_t j0, int64_t j1, int64_t lo = 0,
               int64_t hi = INT64_MAX);

// The CPU block pool for one encode/decode call (cpu_pool.cpp): enter installs it (or nests), exit ends the span.
void cpu_pool_enter();
void cpu_pool_exit();
// The current outermost span's number (each span a new one), 0 outside spans: derived_weight checks a weight's
// content once per span (causal_conv3d.cpp).
uint64_t weight_epoch();

at::Tensor upsample_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& residual);

// Wan2.2's parameter-free shortcuts (avg_down3d.cpp, dup_up3d.cpp; semantics in vaekernels/ops/).
at::Tensor avg_down3d(const at::Tensor& x, const std::optional<at::Tensor>& cache, int64_t zeros, int64_t factor_t,
                      int64_t factor_s, int64_t out_channels);
at::Tensor dup_up3d(const at::Tensor& x, int64_t factor_t, int64_t factor_s, int64_t out_channels, int64_t drop);

// A tensor derived from `weight` (prepacked, phase-split, transposed ...), made once by `make` and kept
// until the weight changes. `tag` names the derivation and its parameters; `variant` (an input shape) tells
// apart results that also depend on it, of which a few are kept per weight. See causal_conv3d.cpp.
at::Tensor derived_weight(const at::Tensor& weight, const std::string& tag, const std::function<at::Tensor()>& make,
                          at::IntArrayRef variant = {});
// How many times derived_weight has called `make` (tests: unchanged weights are not prepared again).
uint64_t derived_weights_made();

// oneDNN weight layout for a channels-last conv of this weight (4-D or 5-D) on inputs of `input_size`, converted
// to `dtype` (to float32 for bf16 on CPUs where oneDNN has no bf16 convs; onednn_conv then computes in float32
// too). The layout oneDNN wants depends on the input's shape (on AMX, 384-channel convs switch their output
// channel block between 32 and 48 with the number of frames); a conv given another layout converts the weight
// on every call, which took 150 ms per 384x384x3x3x3 bf16 weight, ten times the conv: pack per input shape.
at::Tensor prepack_conv_weight(const at::Tensor& weight, at::ScalarType dtype, at::IntArrayRef padding,
                               at::IntArrayRef stride, at::IntArrayRef input_size);

// A channels-last oneDNN convolution with a prepacked weight, bias added by the kernel. Either returns a new
// channels-last tensor, plus `residual` (the output's shape) added as a binary post-op when given; or, with
// `accumulate_into` (channels-last dense, the output's shape), adds the result to it in place (sum post-op)
// and returns it.
at::Tensor onednn_conv(const at::Tensor& input, const at::Tensor& packed_weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef padding, at::IntArrayRef stride, const std::optional<at::Tensor>& residual,
                       const at::Tensor* accumulate_into = nullptr);

}  // namespace vaekernels
