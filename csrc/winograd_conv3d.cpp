// causal_conv3d for 3x3 spatial kernels (kt x 3 x 3, stride 1, spatial padding 1) by Winograd F(m x m, 3x3).
//
// Each m x m output tile is computed from its (m+2) x (m+2) input patch with (m+2)^2 multiplies per
// (tap, Cin, Cout) instead of 9 m^2: the patch is transformed (V = B^T d B), multiplied point-wise by the
// transformed weight (U = G g G^T, made once per weight), and transformed back (Y = A^T M A). The
// point-wise products over channels and time taps are (m+2)^2 GEMMs, [tiles, kt*Cin] x [kt*Cin, Cout]:
// V keeps each tile's frames next to each other, so the kt taps of an output frame are one K range (cut into
// one GEMM per tap where the slice of U would not stay in L2, see tap_gemms).
// Work is cut into blocks of tiles x output frames whose V and M fit a few MiB (one block per task, see
// scratch_bytes), so the transformed data stays in cache (except where few tiles fit a block, with many channels:
// then groups of tiles go through memory, see run); the GEMMs are oneDNN's brgemm micro-kernel via ATen. A frame
// may also be read as its nearest-2x upsampling, in place (upsample_conv2d.cpp).
//
// Accuracy: for m = 2, B and A hold only 0 and +-1, G only 0, +-1/2 and 1 (exact in binary), so the rounding
// differs from a direct conv's by a few additions per output. m = 4 (2.25 products per output against m = 2's
// 4 and a direct conv's 9) uses the points 0, +-1, +-2 and infinity, whose larger coefficients (up to 8, and
// G's sixths) make its float32 error a few times a direct conv's: it serves bfloat16 data only, as does m = 6
// (1.78 products per output; points 0, +-1, +-2, +-1/2 and infinity; float32 error about 10x a direct conv's,
// still 100x below one bf16 rounding).
// bfloat16 inputs are transformed and multiplied in float32 and rounded once at the output: on CPUs
// without AMX, oneDNN's bf16 GEMMs run at about half the float32 speed, so float32 math is the fast
// path there and at least as accurate.
//
// The conv reads its time sequence (zero frames, cache frames, x frames) where each frame lies; no
// frame is copied. Bias and residual are added in the output transform.
#include "vec.h"  // first: it sets the SIMD width ATen headers see

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <unistd.h>

#include <algorithm>

#include "vaekernels.h"

namespace vaekernels {
namespace {

// Scratch (V and M) per task. Larger blocks read the transformed weight (up to 28 MiB at 384 channels) fewer
// times. 4 MiB, about twice the L2 per core of the Intel machine it was tuned on, was the fastest of 1, 4, 8 and
// 16 MiB there at 96 to 384 channels (the per-GEMM slices of V and M still fit in L2). On Zen 3 (512 KiB L2),
// 2 MiB made float32 encode and decode at 17x128x128 1.14x faster than 4 MiB, bf16 1.03-1.08x, and 1 MiB was
// slower again: 2 MiB where the L2 per core is under 1 MiB.
int64_t scratch_bytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);  // 0 or -1 where unknown
    return int64_t(l2 > 0 && l2 < (1 << 20) ? 2 : 4) << 20;
  }();
  return bytes;
}
constexpr int64_t kMaxBlockFrames = 4;  // output frames per block: fewer repeat more input transforms

template <typename T>
struct Frame {
  const T* data;  // nullptr: a zero frame
  int64_t sh, sw;
  int up;  // 1: read as its nearest-2x upsampling, pixel (h, w) at (h / 2, w / 2)
};

template <typename T>
struct Grid {  // an [H, W, C] plane per (batch, frame), channels dense
  T* data;
  int64_t sn, st, sh, sw;
  T* at(int64_t n, int64_t t, int64_t h, int64_t w) const { return data + n * sn + t * st + h * sh + w * sw; }
};

template <typename T>
Grid<T> grid(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(2), t.stride(3), t.stride(4)};
}

// The time sequence per batch element: zero frames, cache frames, x frames, `trailing` zero frames, read where they
// lie (up: see Frame).
template <typename T>
std::vector<std::vector<Frame<T>>> time_frames(const at::Tensor& x, const std::optional<at::Tensor>& cache,
                                               int64_t zeros, int up, int64_t trailing = 0) {
  std::vector<std::vector<Frame<T>>> seq(x.size(0));
  for (int64_t n = 0; n < x.size(0); ++n) {
    for (int64_t z = 0; z < zeros; ++z) seq[n].push_back({nullptr, 0, 0, 0});
    for (const at::Tensor* src : {cache ? &*cache : nullptr, &x}) {
      if (!src) continue;
      const Grid<const T> g = grid<const T>(*src);
      for (int64_t t = 0; t < src->size(2); ++t) seq[n].push_back({g.at(n, t, 0, 0), g.sh, g.sw, up});
    }
    for (int64_t z = 0; z < trailing; ++z) seq[n].push_back({nullptr, 0, 0, 0});
  }
  return seq;
}

// The frames [lo, hi) of a block of `n` frames of a time sequence that are not zero frames: time_frames puts its zero
// frames at the ends of the sequence, so those in a block are at its ends too (tap_gemms skips their products).
template <typename T>
std::pair<int64_t, int64_t> read_frames(const Frame<T>* frames, int64_t n) {
  int64_t lo = 0, hi = n;
  while (lo < hi && !frames[lo].data) ++lo;
  while (hi > lo && !frames[hi - 1].data) --hi;
  return {lo, hi};
}

// The transforms of F(m x m, 3x3) on one channel vector of a tile: m = 2 (4x4 patch, 16 products) or m = 4
// (6x6 patch, 36 products). Each applies its 1-D transform to the columns, then to the rows.
template <int m>
struct Tile;

template <>
struct Tile<2> {
  static constexpr int kPatch = 4;
  // G of g -> G g G^T (rows: the patch's points)
  static constexpr double kG[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
  // B^T d over one line of the patch
  static void in(const Vec* d, int64_t s, Vec* t, int64_t ts) {
    t[0] = d[0] - d[2 * s];
    t[ts] = d[s] + d[2 * s];
    t[2 * ts] = d[2 * s] - d[s];
    t[3 * ts] = d[s] - d[3 * s];
  }
  // A^T M over one line
  static void out(const Vec* v, int64_t s, Vec* y, int64_t ys) {
    y[0] = v[0] + v[s] + v[2 * s];
    y[ys] = v[s] - v[2 * s] - v[3 * s];
  }
};

template <>
struct Tile<4> {
  static constexpr int kPatch = 6;
  static constexpr double kG[6][3] = {{1. / 4, 0, 0},           {-1. / 6, -1. / 6, -1. / 6}, {-1. / 6, 1. / 6, -1. / 6},
                                      {1. / 24, 1. / 12, 1. / 6}, {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};
  static void in(const Vec* d, int64_t s, Vec* t, int64_t ts) {
    const Vec d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s];
    const Vec four(4.f), five(5.f), two(2.f);
    t[0] = at::vec::fmadd(four, d0, d4) - five * d2;
    t[ts] = at::vec::fmadd(Vec(-4.f), d1 + d2, d3 + d4);
    t[2 * ts] = at::vec::fmadd(four, d1 - d2, d4 - d3);
    t[3 * ts] = at::vec::fmadd(two, d3 - d1, d4 - d2);
    t[4 * ts] = at::vec::fmadd(two, d1 - d3, d4 - d2);
    t[5 * ts] = at::vec::fmadd(four, d1, d5) - five * d3;
  }
  static void out(const Vec* v, int64_t s, Vec* y, int64_t ys) {
    const Vec a = v[s] + v[2 * s], b = v[s] - v[2 * s], c = v[3 * s] + v[4 * s], d = v[3 * s] - v[4 * s];
    y[0] = v[0] + a + c;
    y[ys] = at::vec::fmadd(Vec(2.f), d, b);
    y[2 * ys] = at::vec::fmadd(Vec(4.f), c, a);
    y[3 * ys] = at::vec::fmadd(Vec(8.f), d, b) + v[5 * s];
  }
};

// F(6x6, 3x3): the points 0, 1, -1, 2, -2, 1/2, -1/2 and infinity, in that order; B^T's rows pair up as even +- odd
// parts.
template <>
struct Tile<6> {
  static constexpr int kPatch = 8;
  static constexpr double kG[8][3] = {{1, 0, 0},
                                      {-2. / 9, -2. / 9, -2. / 9},
                                      {-2. / 9, 2. / 9, -2. / 9},
                                      {1. / 90, 1. / 45, 2. / 45},
                                      {1. / 90, -1. / 45, 2. / 45},
                                      {32. / 45, 16. / 45, 8. / 45},
                                      {32. / 45, -16. / 45, 8. / 45},
                                      {0, 0, 1}};
  static void in(const Vec* d, int64_t s, Vec* t, int64_t ts) {
    const Vec d0 = d[0], d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s], d5 = d[5 * s], d6 = d[6 * s],
              d7 = d[7 * s];
    const Vec e1 = at::vec::fmadd(Vec(-4.25f), d4, d2 + d6), o1 = at::vec::fmadd(Vec(-4.25f), d3, d1 + d5);
    const Vec e2 = at::vec::fmadd(Vec(-1.25f), d4, at::vec::fmadd(Vec(.25f), d2, d6));
    const Vec o2 = at::vec::fmadd(Vec(-2.5f), d3, at::vec::fmadd(Vec(.5f), d1, Vec(2.f) * d5));
    const Vec e3 = at::vec::fmadd(Vec(-5.f), d4, at::vec::fmadd(Vec(4.f), d2, d6));
    const Vec o3 = at::vec::fmadd(Vec(-2.5f), d3, at::vec::fmadd(Vec(2.f), d1, Vec(.5f) * d5));
    t[0] = at::vec::fmadd(Vec(5.25f), d4 - d2, d0 - d6);
    t[ts] = e1 + o1;
    t[2 * ts] = e1 - o1;
    t[3 * ts] = e2 + o2;
    t[4 * ts] = e2 - o2;
    t[5 * ts] = e3 + o3;
    t[6 * ts] = e3 - o3;
    t[7 * ts] = at::vec::fmadd(Vec(5.25f), d3 - d5, d7 - d1);
  }
  static void out(const Vec* v, int64_t s, Vec* y, int64_t ys) {
    const Vec s1 = v[s] + v[2 * s], d1 = v[s] - v[2 * s], s2 = v[3 * s] + v[4 * s], d2 = v[3 * s] - v[4 * s];
    const Vec s3 = v[5 * s] + v[6 * s], d3 = v[5 * s] - v[6 * s];
    y[0] = v[0] + s1 + s2 + s3;
    y[ys] = at::vec::fmadd(Vec(.5f), d3, at::vec::fmadd(Vec(2.f), d2, d1));
    y[2 * ys] = at::vec::fmadd(Vec(.25f), s3, at::vec::fmadd(Vec(4.f), s2, s1));
    y[3 * ys] = at::vec::fmadd(Vec(.125f), d3, at::vec::fmadd(Vec(8.f), d2, d1));
    y[4 * ys] = at::vec::fmadd(Vec(.0625f), s3, at::vec::fmadd(Vec(16.f), s2, s1));
    y[5 * ys] = at::vec::fmadd(Vec(.03125f), d3, at::vec::fmadd(Vec(32.f), d2, d1)) + v[7 * s];
  }
};

// Floats from one tile's frames in V to the next tile's: its nf frames of C channels and a cache line more, so that
// the GEMMs' rows (tiles) are not a multiple of 4 KiB apart, on a few cache sets, with 1024 channels (1024-channel
// convs of 4 frames of 16x16: 1.1x faster on 2 Zen cores).
int64_t tile_stride(int64_t nf, int64_t C) { return nf * C + 16; }

// V[p][tile][f][c] for tiles tile0 .. tile0+tiles-1 and the input frames, from V (tile0's place) on; p = a*u + v
// indexes B^T d B, p's rows start pstride floats apart, and a tile's frames tile_stride(nf, C) after the previous.
template <int m, typename T>
void input_transform(const Frame<T>* frames, int64_t nf, int64_t H, int64_t W, int64_t tw, int64_t tile0,
                     int64_t tiles, int64_t C, float* V, int64_t pstride) {
  const int64_t ts = tile_stride(nf, C);
  constexpr int a = Tile<m>::kPatch;
  for (int64_t i = 0; i < tiles; ++i) {
    const int64_t h0 = m * ((tile0 + i) / tw) - 1, w0 = m * ((tile0 + i) % tw) - 1;
    bool rows[a], cols[a];
    for (int k = 0; k < a; ++k) {
      rows[k] = h0 + k >= 0 && h0 + k < H;
      cols[k] = w0 + k >= 0 && w0 + k < W;
    }
    for (int64_t f = 0; f < nf; ++f) {
      const Frame<T>& fr = frames[f];
      float* dst = V + i * ts + f * C;
      for (int64_t c = 0; c < C; c += kLanes) {
        const int64_t n = std::min(kLanes, C - c);
        Vec d[a][a], t[a][a], v[a];
        for (int r = 0; r < a; ++r) {
          for (int q = 0; q < a; ++q) {
            const int64_t at = ((h0 + r) >> fr.up) * fr.sh + ((w0 + q) >> fr.up) * fr.sw + c;
            d[r][q] = fr.data && rows[r] && cols[q] ? load(fr.data + at, n) : Vec(0.f);
          }
        }
        for (int q = 0; q < a; ++q) Tile<m>::in(&d[0][q], a, &t[0][q], a);  // B^T d
        for (int u = 0; u < a; ++u) {                                           // (B^T d) B
          Tile<m>::in(t[u], 1, v, 1);
          for (int q = 0; q < a; ++q) store(v[q], dst + (a * u + q) * pstride + c, n);
        }
      }
    }
  }
}

// out (+ residual) for tiles tile0 .. tile0+tiles-1 and the output frames from M[p][f][row][c], rows of `rows`
// tiles per frame (M points at tile0's row).
template <int m, typename T>
void output_transform(const float* M, int64_t frames, int64_t tiles, int64_t rows, int64_t C, int64_t tile0,
                      int64_t tw, int64_t H, int64_t W, const float* bias, const Grid<T>& out,
                      const Grid<const T>* residual, int64_t n, int64_t f0) {
  constexpr int a = Tile<m>::kPatch;
  const int64_t pstride = frames * rows * C;
  for (int64_t f = 0; f < frames; ++f) {
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t h0 = m * ((tile0 + i) / tw), w0 = m * ((tile0 + i) % tw);
      const float* src = M + (f * rows + i) * C;
      for (int64_t c = 0; c < C; c += kLanes) {
        const int64_t len = std::min(kLanes, C - c);
        Vec v[a][a], s[m][a], y[m];
        for (int p = 0; p < a * a; ++p) v[p / a][p % a] = Vec::loadu(src + p * pstride + c, len);
        for (int q = 0; q < a; ++q) Tile<m>::out(&v[0][q], a, &s[0][q], a);  // A^T M
        const Vec b = bias ? Vec::loadu(bias + c, len) : Vec(0.f);
        for (int r = 0; r < m && h0 + r < H; ++r) {
          Tile<m>::out(s[r], 1, y, 1);  // (A^T M) A
          for (int e = 0; e < m && w0 + e < W; ++e) {
            Vec o = y[e] + b;
            if (residual) o = o + load(residual->at(n, f0 + f, h0 + r, w0 + e) + c, len);
            store(o, out.at(n, f0 + f, h0 + r, w0 + e) + c, len);
          }
        }
      }
    }
  }
}

// [Cout, Cin, kt, 3, 3] -> U [a*a, kt*Cin, Cout] float32, (G g[o, i, k] G^T)[u, v] for point a*u+v, row k*Cin+i and
// column o, output channels in SIMD lanes; a loop threaded over U's rows. In training every weight changes at every
// step, so this runs once per step (the data gradient permutes its result: flipped_transformed_weight): scalar
// in double it took 6% of a full-size decoder's training step (Zen 3); in float32 lanes its rounding (a few
// additions of halves for m = 2) stays below the float32 parity tests' bar. Each point's [kt*Cin, Cout] is stored as
// its blocks of slices(kt, Cin, Cout).cols columns one after the other, each block's rows dense (see tap_gemms).
template <int m>
at::Tensor transformed_weight(const at::Tensor& weight) {
  constexpr int a = Tile<m>::kPatch;
  constexpr auto& G = Tile<m>::kG;
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const int64_t cout = w.size(0), cin = w.size(1), kt = w.size(2), rows = kt * cin;
  const int64_t cols = slices(kt, cin, cout).cols;
  at::Tensor U = at::empty({a * a, rows, cout}, at::kFloat);
  const float* src = w.const_data_ptr<float>();
  float* dst = U.mutable_data_ptr<float>();
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    float taps[9][kLanes] = {};
    for (int64_t row = begin; row < end; ++row) {
      const int64_t k = row / cin, i = row % cin;
      int64_t len = 0;
      for (int64_t o0 = 0; o0 < cout; o0 += len) {
        const int64_t j = o0 / cols * cols, width = std::min(cols, cout - j);  // o0's column block
        len = std::min(kLanes, j + width - o0);                                // lanes within it
        for (int64_t l = 0; l < len; ++l) {
          const float* g = src + (((o0 + l) * cin + i) * kt + k) * 9;
          for (int q = 0; q < 9; ++q) taps[q][l] = g[q];
        }
        Vec g[9], t[a][3];  // G g
        for (int q = 0; q < 9; ++q) g[q] = Vec::loadu(taps[q]);
        for (int u = 0; u < a; ++u) {
          for (int c = 0; c < 3; ++c) {
            t[u][c] = Vec(G[u][0]) * g[c] + Vec(G[u][1]) * g[3 + c] + Vec(G[u][2]) * g[6 + c];
          }
        }
        for (int u = 0; u < a; ++u) {
          for (int v = 0; v < a; ++v) {
            const Vec y = t[u][0] * Vec(G[v][0]) + t[u][1] * Vec(G[v][1]) + t[u][2] * Vec(G[v][2]);
            y.store(dst + (u * a + v) * rows * cout + j * rows + row * width + o0 - j, len);
          }
        }
      }
    }
  });
  return U;
}

// U of the weight, made at its first use and kept while the weight is unchanged (derived_weight)
template <int m>
at::Tensor cached_transformed_weight(const at::Tensor& weight) {
  return derived_weight(weight, "winograd" + std::to_string(m), [&] { return transformed_weight<m>(weight); });
}

// uninitialised floats (a vector would write them all first), from torch's CPU allocator (the block pool in a span)
at::Tensor scratch(int64_t n) { return at::empty({n}, at::kFloat); }

// The conv by the transformed weight U (of transformed_weight's layout, kt taps, Cout output channels) over the
// time sequence of time_frames.
template <int m, typename T>
void run(const at::Tensor& x, const at::Tensor& U, int64_t Cout, int64_t kt, const std::optional<at::Tensor>& bias,
         const std::optional<at::Tensor>& cache, int64_t zeros, const std::optional<at::Tensor>& residual,
         const at::Tensor& out, int up, int64_t trailing = 0) {
  // the conv's plane is out's: x's, or twice x's when x is read upsampled
  const int64_t N = x.size(0), C = x.size(1), H = out.size(3), W = out.size(4), frames_out = out.size(2);
  constexpr int64_t points = Tile<m>::kPatch * Tile<m>::kPatch;
  const int64_t tw = (W + m - 1) / m, tiles = (H + m - 1) / m * tw;
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor r;  // the residual in x's dtype with dense channels, kept alive for `res`
  std::optional<Grid<const T>> res;
  if (residual) {
    r = residual->to(x.scalar_type());
    if (r.stride(1) != 1) r = r.contiguous(at::MemoryFormat::ChannelsLast3d);
    res = grid<const T>(r);
  }
  const Grid<T> dst = grid<T>(out);

  const std::vector<std::vector<Frame<T>>> seq = time_frames<T>(x, cache, zeros, up, trailing);

  // frames split evenly: 5 frames as 3 + 2, not 4 + 1
  const int64_t fewest_blocks = (frames_out + kMaxBlockFrames - 1) / kMaxBlockFrames;
  const int64_t block_frames = (frames_out + fewest_blocks - 1) / fewest_blocks;
  const int64_t frame_blocks = (frames_out + block_frames - 1) / block_frames;
  const int64_t per_tile = points * int64_t(sizeof(float)) * ((block_frames + kt - 1) * C + block_frames * Cout);
  // blocks that fit the scratch, at least one per thread; when they are few, a multiple of the thread count, so
  // that no thread waits on a lone last block
  const int64_t threads = at::get_num_threads(), outer = N * frame_blocks;
  const int64_t budget = scratch_bytes();
  int64_t tile_blocks = std::max((tiles * per_tile + budget - 1) / budget, (threads + outer - 1) / outer);
  while (outer * tile_blocks < 8 * threads && (outer * tile_blocks) % threads && tile_blocks < tiles) ++tile_blocks;
  const int64_t block_tiles = (tiles + std::min(tile_blocks, tiles) - 1) / std::min(tile_blocks, tiles);
  tile_blocks = (tiles + block_tiles - 1) / block_tiles;
  const float* Uptr = U.const_data_ptr<float>();
  const float* bptr = bias ? b.const_data_ptr<float>() : nullptr;
  const Grid<const T>* rptr = res ? &*res : nullptr;

  // Each block reads all of U, at 2 * block_tiles * block_frames flops per float of it. With many channels the
  // blocks that fit in L2 are small (7 tiles x 4 frames at 384 channels for F(4x4, 3x3), whose U is 64 MiB), and
  // U's traffic bounds the speed: there, V and M of many tiles go through memory instead (groups of tiles whose V
  // and M take up to kGroupBytes, so that large planes keep the memory bounded), and each point's slice of U is
  // read once per group. Measured on 2 cores: with 28-32 tile-frames per block (384 channels) that was 1.1-1.5x
  // faster, with 44-128 (192 channels) 1.1-2x slower. Groups of 16 MiB rather than 32 cut the bf16 encode / decode
  // peaks at 17x128x128 by 20 / 16 MiB (96-channel F(6x6) convs at 128x128 take this path) at the same speed (Zen 3).
  constexpr int64_t kMinBlockTileFrames = 40;
  constexpr int64_t kGroupBytes = 16 << 20;
  const bool fused = block_tiles * block_frames >= kMinBlockTileFrames;
  if (!fused) {
    const int64_t group = std::clamp<int64_t>(kGroupBytes / per_tile, 1, tiles);
    const at::Tensor v_buf = scratch(points * group * tile_stride(block_frames + kt - 1, C));
    const at::Tensor m_buf = scratch(points * block_frames * group * Cout);
    float *V = v_buf.data_ptr<float>(), *M = m_buf.data_ptr<float>();
    const int64_t cols = slices(kt, C, Cout).cols, col_blocks = (Cout + cols - 1) / cols;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t f0 = 0; f0 < frames_out; f0 += block_frames) {
        const int64_t nfo = std::min(block_frames, frames_out - f0), nfi = nfo + kt - 1, ts = tile_stride(nfi, C);
        for (int64_t g0 = 0; g0 < tiles; g0 += group) {
          const int64_t gt = std::min(group, tiles - g0);  // this group's tiles, g0 .. g0+gt-1
          at::parallel_for(0, gt, 8, [&](int64_t begin, int64_t end) {
            input_transform<m>(seq[n].data() + f0, nfi, H, W, tw, g0 + begin, end - begin, C, V + begin * ts, gt * ts);
          });
          int64_t lo, hi;
          std::tie(lo, hi) = read_frames(seq[n].data() + f0, nfi);
          // a task per point and column block
          at::parallel_for(0, points * col_blocks, 1, [&](int64_t begin, int64_t end) {
            for (int64_t item = begin; item < end; ++item) {
              const int64_t p = item / col_blocks, j0 = item % col_blocks * cols;
              tap_gemms(gt, C, Cout, kt, nfo, V + p * gt * ts, ts, Uptr + p * kt * C * Cout,
                          M + p * nfo * gt * Cout, gt * Cout, j0, std::min(Cout, j0 + cols), lo, hi);
            }
          });
          at::parallel_for(0, gt, 8, [&](int64_t begin, int64_t end) {
            output_transform<m>(M + begin * Cout, nfo, end - begin, gt, Cout, g0 + begin, tw, H, W, bptr, dst, rptr,
                                n, f0);
          });
        }
      }
    }
    return;
  }

  at::parallel_for(0, N * frame_blocks * tile_blocks, 1, [&](int64_t begin, int64_t end) {
    const at::Tensor v_buf = scratch(points * block_tiles * tile_stride(block_frames + kt - 1, C));
    const at::Tensor m_buf = scratch(points * block_frames * block_tiles * Cout);
    float *V = v_buf.data_ptr<float>(), *M = m_buf.data_ptr<float>();
    for (int64_t item = begin; item < end; ++item) {
      // frame blocks vary fastest, so each thread's share of items holds all of them (they differ in cost)
      const int64_t n = item / (frame_blocks * tile_blocks), fb = item % frame_blocks;
      const int64_t tile0 = item / frame_blocks % tile_blocks * block_tiles, nt = std::min(block_tiles, tiles - tile0);
      const int64_t f0 = fb * block_frames, nfo = std::min(block_frames, frames_out - f0), nfi = nfo + kt - 1;
      const int64_t ts = tile_stride(nfi, C);
      input_transform<m>(seq[n].data() + f0, nfi, H, W, tw, tile0, nt, C, V, nt * ts);
      int64_t lo, hi;
      std::tie(lo, hi) = read_frames(seq[n].data() + f0, nfi);
      for (int64_t p = 0; p < points; ++p) {
        tap_gemms(nt, C, Cout, kt, nfo, V + p * nt * ts, ts, Uptr + p * kt * C * Cout,
                    M + p * nfo * nt * Cout, nt * Cout, 0, Cout, lo, hi);
      }
      output_transform<m>(M, nfo, nt, nt, Cout, tile0, tw, H, W, bptr, dst, rptr, n, f0);
    }
  });
}


// The weight's gradient by the same F(2x2, 3x3) tiles: for y = A^T [(G g G^T) . (B^T d B)] A, the gradient of g is
// G^T [(A dy A^T) . (B^T d B)] G summed over tiles, i.e. 16 GEMMs per time tap, [Cout, tiles] x [tiles, Cin], whose
// long K (the tiles and frames) is what a direct weight gradient's 9 taps per output run over with 2.25x the
// products. Only m = 2: its transforms hold 0, +-1 and 1/2, so the sums round like a direct gradient's (within 2-3x
// of ATen's float32 error against float64 in the tests).

// A dy A^T over one line of a 2-output tile: the transpose of Tile<2>::out
inline void grad_in(const Vec* y, int64_t s, Vec* t, int64_t ts) {
  t[0] = y[0];
  t[ts] = y[0] + y[s];
  t[2 * ts] = y[0] - y[s];
  t[3 * ts] = Vec(0.f) - y[s];
}

// Yt[p][c][f * frame_tiles + i] for the output gradient's frames f < nf and tiles tile0 + i (i < tiles), Yt pointing
// at tile0's column, p's rows C * ldy floats apart: transposed, so that each point's GEMM reduces along its rows
// (brgemm has no transposed operand). kLanes tiles x kLanes channels at a time, transposed in registers (scattered
// single floats took a quarter of the 96-channel gradient's time).
template <typename T>
void grad_transform(const Grid<const T>& dy, int64_t n, int64_t f0, int64_t nf, int64_t H, int64_t W, int64_t tw,
                    int64_t tile0, int64_t tiles, int64_t frame_tiles, int64_t C, float* Yt, int64_t ldy) {
  const int64_t pstride = C * ldy;
  float stage[16][kLanes][kLanes];  // [point][tile][channel]
  for (int64_t f = 0; f < nf; ++f) {
    for (int64_t i0 = 0; i0 < tiles; i0 += kLanes) {
      const int nt = static_cast<int>(std::min(kLanes, tiles - i0));
      for (int64_t c = 0; c < C; c += kLanes) {
        const int len = static_cast<int>(std::min(kLanes, C - c));
        for (int j = 0; j < nt; ++j) {
          const int64_t h0 = 2 * ((tile0 + i0 + j) / tw), w0 = 2 * ((tile0 + i0 + j) % tw);
          Vec y[2][2], t[4][2], v[4];
          for (int r = 0; r < 2; ++r) {
            for (int e = 0; e < 2; ++e) {
              y[r][e] = h0 + r < H && w0 + e < W ? load(dy.at(n, f0 + f, h0 + r, w0 + e) + c, len) : Vec(0.f);
            }
          }
          for (int e = 0; e < 2; ++e) grad_in(&y[0][e], 2, &t[0][e], 2);  // A dy
          for (int u = 0; u < 4; ++u) {                                    // (A dy) A^T
            grad_in(t[u], 1, v, 1);
            for (int q = 0; q < 4; ++q) v[q].store(stage[4 * u + q][j]);
          }
        }
        float* dst = Yt + c * ldy + f * frame_tiles + i0;
        for (int p = 0; p < 16; ++p) {
          if (nt == kLanes && len == kLanes) {
            at::vec::transpose_mxn<float, kLanes, kLanes>(stage[p][0], kLanes, dst + p * pstride, ldy);
          } else {
            at::vec::transpose_mxn<float>(stage[p][0], kLanes, dst + p * pstride, ldy, nt, len);
          }
        }
      }
    }
  }
}

template <typename T>
void weight_grad_run(const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& cache,
                     int64_t zeros, int64_t kt, float* acc) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(3), W = x.size(4), Cout = grad.size(1);
  const int64_t frames_out = grad.size(2);
  constexpr int64_t points = 16;
  const int64_t tw = (W + 1) / 2, tiles = (H + 1) / 2 * tw, ts = tile_stride(1, C);
  const Grid<const T> dy = grid<const T>(grad);
  const std::vector<std::vector<Frame<T>>> seq = time_frames<T>(x, cache, zeros, 0);
  // blocks of output frames x tiles whose transforms (V: the input frames, Yt: the gradient's) take up to
  // kBlockBytes; each point's GEMMs then stream them from L3 at K = the block's tile-frames per weight row block
  constexpr int64_t kBlockBytes = 8 << 20;
  const int64_t block_frames = std::min(kMaxBlockFrames, frames_out);
  const int64_t per_tile = points * int64_t(sizeof(float)) * ((block_frames + kt - 1) * ts + block_frames * Cout);
  const int64_t group = std::clamp<int64_t>(kBlockBytes / per_tile, 1, tiles);
  const at::Tensor v_buf = scratch(points * (block_frames + kt - 1) * group * ts);
  const int64_t ldy = block_frames * group + 16;  // +16: rows not a multiple of 4 KiB apart
  const at::Tensor y_buf = scratch(points * Cout * ldy);
  float *V = v_buf.data_ptr<float>(), *Yt = y_buf.data_ptr<float>();
  constexpr int64_t kRows = 64;  // weight rows (output channels) per GEMM
  const int64_t row_blocks = (Cout + kRows - 1) / kRows;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t f0 = 0; f0 < frames_out; f0 += block_frames) {
      const int64_t nfo = std::min(block_frames, frames_out - f0), nfi = nfo + kt - 1;
      for (int64_t g0 = 0; g0 < tiles; g0 += group) {
        const int64_t gt = std::min(group, tiles - g0), rows = nfo * gt, vstride = nfi * gt * ts;
        const bool first = n == 0 && f0 == 0 && g0 == 0;
        at::parallel_for(0, gt, 8, [&](int64_t begin, int64_t end) {
          for (int64_t f = 0; f < nfi; ++f) {  // V[p][f][tile]: a tap's rows one range
            input_transform<2>(seq[n].data() + f0 + f, 1, H, W, tw, g0 + begin, end - begin, C,
                               V + (f * gt + begin) * ts, vstride);
          }
          grad_transform<T>(dy, n, f0, nfo, H, W, tw, g0 + begin, end - begin, gt, Cout, Yt + begin, ldy);
        });
        // a task per point, tap and block of weight rows: each adds into its own part of acc (the first block writes
        // it), blocks in order
        at::parallel_for(0, points * kt * row_blocks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end; ++item) {
            const int64_t p = item / (kt * row_blocks), k = item / row_blocks % kt, r0 = item % row_blocks * kRows;
            at::native::cpublas::brgemm(std::min(kRows, Cout - r0), C, rows, ldy, ts, C, !first,
                                        Yt + (p * Cout + r0) * ldy, V + p * vstride + k * gt * ts,
                                        acc + ((p * kt + k) * Cout + r0) * C, false);
          }
        });
      }
    }
  }
}
}  // namespace

bool brgemm_convs_serve(at::ScalarType dtype) {
  // ATen's float32 brgemm needs oneDNN's micro-kernels and AVX-512 or AVX2
  static const bool works = [] {
    try {
      const float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1};
      float c[4] = {0, 0, 0, 0};
      at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, false);
      return c[0] == 1 && c[1] == 2 && c[2] == 3 && c[3] == 4;
    } catch (const std::exception&) {
      return false;
    }
  }();
  return works && !(dtype == at::kBFloat16 && bf16_on_amx());
}

bool winograd_applies(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& cache,
                      at::IntArrayRef stride, at::IntArrayRef padding) {
  // Few output channels (the RGB head) do not make the GEMMs too short to pay, unlike few input channels: oneDNN's
  // direct conv is slow there too (96 -> 3 channels, 10 frames of 128x128 on 2 cores: 83 ms in bf16 and 50 ms in
  // float32, Winograd 32 and 46 ms).
  // Large weights over few positions too (Wan2.2's 1024-channel convs of 1 to 4 frames of 8x8 and 16x16): there it
  // was 1.4-2x faster than oneDNN's direct conv (2 Zen cores, float32 and bf16), once its GEMMs read rows that are
  // not 4 KiB apart (see tap_gemms and tile_stride).
  return weight.size(3) == 3 && weight.size(4) == 3 && padding[1] == 1 && padding[2] == 1 && stride[0] == 1 &&
         stride[1] == 1 && stride[2] == 1 && weight.size(1) >= kMinBrgemmInChannels && x.stride(1) == 1 &&
         (!cache || cache->stride(1) == 1 || cache->size(2) == 0) && brgemm_convs_serve(x.scalar_type());
}

int64_t winograd_tile(const at::Tensor& x, int64_t H, int64_t W) {
  // float32 is the parity mode: F(4x4, 3x3) rounds about 5x worse than a direct conv there (measured by the
  // tests' oracle), F(2x2, 3x3) no worse. For bfloat16 data the float32 error of F(4x4) and F(6x6) is far below
  // one bf16 rounding, and they do 1.8x and 2.25x fewer products than F(2x2). F(6x6) on the 64x64 and 128x128
  // planes made those convs 10-30% faster than F(4x4) (2 Zen 3 cores; bf16 encode and decode at 17x128x128 about
  // 9% each) for 1.8x F(4x4)'s transformed weight (their channel counts are small: about +160 MB for the model).
  // On 16x16 planes F(4x4) made the 640- and 1024-channel convs 1.4-1.6x faster per call than F(2x2), for a
  // transformed weight 2.25x as large (432 MB per 1024-channel conv): in interleaved A/B on 2 Zen cores, 17x128x128
  // bf16, Wan2.2 encode 0.965x and decode 0.904x the time (its decoder's prepared weights +1.5 GB), Wan2.1 0.988x
  // (+35 MB per 384-channel conv). Wan2.1's clips of 256x256 and Wan2.2's of 512x512 and more have no plane under
  // 32x32, so this costs memory on small clips only. On 8x8 planes (4 tiles of 4x4) F(4x4) did not make the models
  // faster.
  if (x.scalar_type() != at::kBFloat16 || H * W < 16 * 16) return 2;
  return H * W >= 64 * 64 ? 6 : 4;
}

void winograd_conv3d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& cache, int64_t zeros, const std::optional<at::Tensor>& residual,
                     const at::Tensor& out, bool upsample) {
  TORCH_CHECK(out.stride(1) == 1, "winograd_conv3d: out must have dense channels");
  const int up = upsample ? 1 : 0;
  if (out.numel() == 0) return;
  const int64_t m = winograd_tile(x, out.size(3), out.size(4)), Cout = weight.size(0), kt = weight.size(2);
  if (m == 2) {
    const at::Tensor U = cached_transformed_weight<2>(weight);
    x.scalar_type() == at::kFloat ? run<2, float>(x, U, Cout, kt, bias, cache, zeros, residual, out, up)
                                  : run<2, at::BFloat16>(x, U, Cout, kt, bias, cache, zeros, residual, out, up);
  } else if (m == 4) {
    run<4, at::BFloat16>(x, cached_transformed_weight<4>(weight), Cout, kt, bias, cache, zeros, residual, out, up);
  } else {
    run<6, at::BFloat16>(x, cached_transformed_weight<6>(weight), Cout, kt, bias, cache, zeros, residual, out, up);
  }
}

// The data gradient's conv takes the weight with its channels swapped and its taps reversed in time and space. In
// F(2x2, 3x3), G applied to a reversed 3-tap kernel gives G's four outputs with the first and last swapped (G's
// middle rows are symmetric), so that weight's U is the forward's U with points (u, v) -> (s(u), s(v)), s swapping
// 0 and 3, its taps reversed and each point's [Cin, Cout] transposed: a copy (8x8 register transposes) instead of
// a transform of a flipped copy of the weight, which training paid per chunk and layer, and the forward's U is
// the cached one.
at::Tensor flipped_transformed_weight(const at::Tensor& U, int64_t kt, int64_t cin, int64_t cout) {
  constexpr int64_t kSwap[4] = {3, 1, 2, 0};
  const int64_t cols = slices(kt, cin, cout).cols, fcols = slices(kt, cout, cin).cols;
  const int64_t rows = kt * cin, frows = kt * cout;
  at::Tensor F = at::empty({16, frows, cin}, at::kFloat);
  const float* src = U.const_data_ptr<float>();
  float* dst = F.mutable_data_ptr<float>();
  at::parallel_for(0, 16 * kt, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p = item / kt, k = item % kt, fp = 4 * kSwap[p / 4] + kSwap[p % 4], fk = kt - 1 - k;
      // 8x8 blocks never straddle a column block: those are whole or multiples of 16 wide (slices)
      for (int64_t o0 = 0; o0 < cout; o0 += 8) {
        const int64_t j = o0 / cols * cols, width = std::min(cols, cout - j), no = std::min<int64_t>(8, cout - o0);
        for (int64_t i0 = 0; i0 < cin; i0 += 8) {
          const int64_t fj = i0 / fcols * fcols, fwidth = std::min(fcols, cin - fj);
          const int64_t ni = std::min<int64_t>(8, cin - i0);
          const float* a = src + p * rows * cout + j * rows + (k * cin + i0) * width + o0 - j;  // [ni rows, no]
          float* b = dst + fp * frows * cin + fj * frows + (fk * cout + o0) * fwidth + i0 - fj;  // [no rows, ni]
          if (ni == 8 && no == 8) {
            at::vec::transpose_mxn<float, 8, 8>(a, width, b, fwidth);
          } else {
            at::vec::transpose_mxn<float>(a, width, b, fwidth, static_cast<int>(ni), static_cast<int>(no));
          }
        }
      }
    }
  });
  return F;
}

bool data_grad_applies(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef padding) {
  return grad.scalar_type() == at::kFloat && weight.size(3) == 3 && weight.size(4) == 3 && padding[0] == 1 &&
         padding[1] == 1 && weight.size(0) >= kMinBrgemmInChannels && grad.stride(1) == 1 &&
         brgemm_convs_serve(at::kFloat);
}

void winograd_conv3d_data_grad(const at::Tensor& grad, const at::Tensor& weight, int64_t front, const at::Tensor& out) {
  TORCH_CHECK(out.stride(1) == 1, "winograd_conv3d_data_grad: out must have dense channels");
  if (out.numel() == 0) return;
  const int64_t cout = weight.size(0), cin = weight.size(1), kt = weight.size(2);
  const at::Tensor U = flipped_transformed_weight(cached_transformed_weight<2>(weight), kt, cin, cout);
  // the zero frames around the gradient are nullptr frames of the sequence: no padded copy
  run<2, float>(grad, U, cin, kt, std::nullopt, std::nullopt, front, std::nullopt, out, 0, kt - 1);
}

bool weight_grad_applies(const at::Tensor& x, at::IntArrayRef weight_size, at::IntArrayRef stride,
                         at::IntArrayRef padding) {
  return weight_size.size() == 5 && weight_size[3] == 3 && weight_size[4] == 3 && padding[1] == 1 &&
         padding[2] == 1 && stride[0] == 1 && stride[1] == 1 && stride[2] == 1 &&
         weight_size[1] >= kMinBrgemmInChannels && brgemm_convs_serve(x.scalar_type());
}

at::Tensor causal_conv3d_weight_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& cache, at::IntArrayRef stride,
                                     at::IntArrayRef padding) {
  TORCH_CHECK(weight_grad_applies(x, weight.sizes(), stride, padding),
              "causal_conv3d_weight_grad (C++): 3x3 spatial taps with padding 1, stride 1, 8+ input channels, "
              "and float32 (or bfloat16 without AMX) only");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && (!cache || cache->scalar_type() == x.scalar_type()),
              "causal_conv3d_weight_grad (C++): grad, x and cache must share a dtype");
  const int64_t c = cache ? cache->size(2) : 0, kt = weight.size(2), Cout = weight.size(0), C = weight.size(1);
  const int64_t zeros = std::max<int64_t>(0, 2 * padding[0] - c);
  TORCH_CHECK(grad.size(2) == zeros + c + x.size(2) - kt + 1 && grad.size(3) == x.size(3) &&
                  grad.size(4) == x.size(4) && grad.size(1) == Cout && x.size(1) == C,
              "causal_conv3d_weight_grad (C++): grad's shape does not match the conv's output");
  // dense channels, as the transforms read them: the model's tensors already are (channels-last)
  const auto dense = [](const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast3d); };
  const at::Tensor g = dense(grad), xs = dense(x);
  const std::optional<at::Tensor> cs = cache && c ? std::optional<at::Tensor>(dense(*cache)) : std::nullopt;
  at::Tensor acc = at::empty({16, kt, Cout, C}, at::kFloat);  // the first block's GEMMs write it
  if (grad.numel() == 0) return at::zeros(weight.sizes(), weight.options());
  x.scalar_type() == at::kFloat ? weight_grad_run<float>(g, xs, cs, zeros, kt, acc.data_ptr<float>())
                                : weight_grad_run<at::BFloat16>(g, xs, cs, zeros, kt, acc.data_ptr<float>());
  // G^T M G for each (output channel, tap), input channels in SIMD lanes, each lane's 9 values then written in the
  // gradient's layout (a permuted copy of a [Cout, kt, 9, Cin] result took 4.5 ms per 384-channel conv, 1 thread)
  constexpr auto& G = Tile<2>::kG;
  at::Tensor out = at::empty({Cout, C, kt, 3, 3}, at::kFloat);
  const float* M = acc.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const int64_t plane = kt * Cout * C;
  at::parallel_for(0, Cout, 4, [&](int64_t begin, int64_t end) {
    float taps[9][kLanes];
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t k = 0; k < kt; ++k) {
        const float* m = M + (k * Cout + o) * C;
        for (int64_t i = 0; i < C; i += kLanes) {
          const int64_t len = std::min(kLanes, C - i);
          Vec t[3][4];  // G^T M
          for (int v = 0; v < 4; ++v) {
            Vec col[4];
            for (int u = 0; u < 4; ++u) col[u] = Vec::loadu(m + (4 * u + v) * plane + i, len);
            for (int r = 0; r < 3; ++r) {
              t[r][v] = col[0] * Vec(G[0][r]) + col[1] * Vec(G[1][r]) + col[2] * Vec(G[2][r]) + col[3] * Vec(G[3][r]);
            }
          }
          for (int r = 0; r < 3; ++r) {
            for (int q = 0; q < 3; ++q) {
              (t[r][0] * Vec(G[0][q]) + t[r][1] * Vec(G[1][q]) + t[r][2] * Vec(G[2][q]) + t[r][3] * Vec(G[3][q]))
                  .store(taps[r * 3 + q]);
            }
          }
          for (int64_t l = 0; l < len; ++l) {
            float* w = dst + ((o * C + i + l) * kt + k) * 9;
            for (int q = 0; q < 9; ++q) w[q] = taps[q][l];
          }
        }
      }
    }
  });
  return out.to(weight.scalar_type());
}

}  // namespace vaekernels
