// GEMMs summed over taps, shared by the Winograd convs (a tap: a frame of the kernel) and the strided convs (a
// tap: a kernel pixel), on oneDNN's brgemm micro-kernel via ATen; see vaekernels.h.
#include <ATen/native/CPUBlas.h>

#include <algorithm>

#include "vaekernels.h"

namespace vaekernels {

// Bytes of the weight one GEMM reads: a slice for some taps and a block of output columns, small enough to stay
// in L2 (512 KiB per core on Zen 3) while the rows of a block reuse it.
constexpr int64_t kSliceBytes = 256 << 10;

Slices slices(int64_t kt, int64_t C, int64_t Cout) {
  const int64_t bytes = C * Cout * int64_t(sizeof(float));
  if (kt * bytes <= kSliceBytes) return {kt, Cout};
  const int64_t blocks = (bytes + kSliceBytes - 1) / kSliceBytes;
  return {1, std::min(Cout, ((Cout + blocks - 1) / blocks + 15) / 16 * 16)};
}

at::Tensor column_blocks(const at::Tensor& w, int64_t cols) {
  std::vector<at::Tensor> blocks;
  for (int64_t j = 0; j < w.size(1); j += cols) blocks.push_back(w.slice(1, j, j + cols).contiguous().flatten());
  return at::cat(blocks);
}

// U is cut as slices() says: one GEMM over the kt taps of a 192-channel Winograd conv read its 442 KiB slice of U
// from L3 on every pass of brgemm's row blocks (a block of 15 tiles x 4 frames on 2 Zen 3 cores: 65 GFLOP/s, 89
// with a GEMM per tap). A block's rows are dense: with rows Cout apart, 1024 output channels put every row of a
// slice 4 KiB apart, on a few cache sets (a 1024-channel conv of 4 frames of 16x16 on 2 Zen cores: 1445 ms, against
// 713 ms at 1000 channels).
void tap_gemms(int64_t rows, int64_t C, int64_t Cout, int64_t kt, int64_t nfo, const float* V, int64_t lda,
               const float* U, float* M, int64_t mframe, int64_t j0, int64_t j1, int64_t lo, int64_t hi) {
  constexpr int64_t kRows = 64;
  const Slices cut = slices(kt, C, Cout);
  const int64_t chunks = (rows + kRows - 1) / kRows, chunk = (rows + chunks - 1) / chunks;
  for (int64_t j = j0; j < j1; j += cut.cols) {
    const int64_t nc = std::min(cut.cols, j1 - j);
    const float* block = U + j * kt * C;  // [kt * C, nc]
    for (int64_t k = 0; k < kt; k += cut.taps) {
      for (int64_t f = 0; f < nfo; ++f) {
        // output frame f reads V's frames f .. f + kt - 1, of which [lo, hi) are not zero: its taps [first, last)
        const int64_t first = std::max<int64_t>(0, lo - f), last = std::min(kt, hi - f);
        const int64_t k0 = std::max(k, first), k1 = std::min(k + cut.taps, last);
        if (first >= last && k == 0) {
          for (int64_t r = 0; r < rows; ++r) std::fill_n(M + f * mframe + r * Cout + j, nc, 0.f);
        }
        if (k0 >= k1) continue;
        for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
          at::native::cpublas::brgemm(std::min(chunk, rows - r0), nc, (k1 - k0) * C, lda, nc, Cout, k0 > first,
                                      V + r0 * lda + (f + k0) * C, block + k0 * C * nc,
                                      M + f * mframe + r0 * Cout + j, false);
        }
      }
    }
  }
}

}  // namespace vaekernels
