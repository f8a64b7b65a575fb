// causal_conv3d on CPU. 3x3 spatial kernels with 8+ input channels (the model's bulk) run as Winograd F(m x m, 3x3)
// (winograd_conv3d.cpp), spatially strided ones (the downsamplers) as a direct conv on brgemm (strided_conv3d.cpp);
// the others on oneDNN's channels-last convolution, fed without per-call copies:
//
// - The engine places a conv's cache right in front of its input in one buffer, so cache+x is one
//   channels-last tensor: that view goes to oneDNN as it is, spatial padding is done by the conv.
//   Only a caller that did not do this (or that needs zero frames in front) pays for a cat.
// - The weight is reordered once into oneDNN's blocked layout and kept per weight tensor.
// - Bias is the conv's bias; the residual is added by the conv as a binary post-op (the sum is
//   rounded once, in bf16 too), so neither costs a pass over the output. A channels-last `out`
//   is written in place: zeroed (or given the residual), then the conv adds itself (sum post-op).
// - Convs that are 1x1 in space and whose output is a strided view (the time-upsampler's
//   interleaved frames) or whose cache is elsewhere (the time-downsampler's pending frames) are
//   GEMMs accumulated into `out` tap by tap, reading cache and x where they lie, as the torch
//   backend does (bf16 on AMX: on the tiles, pointwise_gemm_amx); everything else, 1x1x1 convs
//   included, goes to oneDNN, which was faster here.
#include "vec.h"  // first: it sets the SIMD width ATen headers see

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/Utils.h>
#include <ATen/native/CPUBlas.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string_view>
#include <tuple>

#include "vaekernels.h"

namespace vaekernels {

// ---------------------------------------------------------------------------------------------
// Derived weights, cached per source weight.
// The entry is found by the weight's storage, offset, the derivation's tag and its variant, and is valid while
// that storage is alive with the same shape, strides, dtype, version counter and content. Content is compared by a 64-bit
// fingerprint of the weight's bytes (content_hash), taken at most once per weight in each encode or decode call
// (a span of the CPU pool, weight_epoch()) unless its version counter moves, and at every op call outside a span:
// so writes through `.data` (which do not bump the version counter: `p.data.mul_(2)`, a loader's
// `p.data.copy_(w)`) are seen at the next call, as are load_state_dict, optimizer steps and in-place ops. The cost
// is one read of each weight per call (see README, "Weights may change"). The storage is held weakly, so a freed
// weight's entry is dropped at the next insertion. Inference tensors are never cached. Of one weight and tag, the
// kVariants most recently used variants are kept.
// ---------------------------------------------------------------------------------------------
namespace {

// A clip's chunks give a conv about three input shapes (first, steady, last chunk): room for those and one more.
constexpr size_t kVariants = 4;

struct CacheEntry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  int64_t version;
  uint64_t content;  // content_hash of the weight it was made from
  at::Tensor value;
  uint64_t last_use;
};

using CacheKey = std::tuple<const void*, int64_t, std::string, std::vector<int64_t>>;

std::mutex cache_mutex;
std::map<CacheKey, CacheEntry> cache_entries;
uint64_t cache_clock = 0, made = 0;

bool entry_matches(const CacheEntry& e, const at::Tensor& w, uint64_t content) {
  return !e.storage.expired() && e.sizes == w.sizes() && e.strides == w.strides() && e.dtype == w.scalar_type() &&
         e.version == w._version() && e.content == content;
}

// A fingerprint of the tensor's bytes, read at memory speed: each 64-bit word w at index q gives
// rot32(w) + lo32(k) * hi32(k) with k = w ^ (q * kGolden), summed modulo 2^64 in one of kHashLanes lanes (by q mod
// kHashLanes); the lanes are then mixed into 64 bits. The rotation keeps every bit of w in the sum (a single changed
// word always moves its term unless the product moves by exactly the opposite amount); the index in k makes a swap
// of two words, or of two equal-sized blocks, change it; the product moves with every bit of w, so a sign flip or a
// power-of-two scale of every word does not cancel out as in plain sums. Not cryptographic: it detects changes,
// not attacks. One 32x32->64 multiply per 8 bytes: 10.7 GB/s on 2 Sapphire Rapids cores, where the earlier hash (two
// 32-bit mixes per 4-byte word) read 3.7.
constexpr int kHashLanes = 8;
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // 2^64 / the golden ratio: spreads consecutive indices

// adds to `lanes` the terms of the words [lo, hi) of `words` (lo a multiple of kHashLanes)
void add_words(const char* words, int64_t lo, int64_t hi, uint64_t* lanes) {
  uint64_t acc[kHashLanes] = {}, key[kHashLanes];
  for (int l = 0; l < kHashLanes; ++l) key[l] = uint64_t(lo + l) * kGolden;
  char last[8 * kHashLanes] = {};  // the last, partial block, zero-padded
  const int64_t whole = lo + (hi - lo) / kHashLanes * kHashLanes;
  std::memcpy(last, words + 8 * whole, 8 * (hi - whole));
  for (int64_t q = lo; q < hi; q += kHashLanes) {
    const char* block = q < whole ? words + 8 * q : last;
    for (int l = 0; l < kHashLanes; ++l) {  // one vector of lanes (gcc vectorises this loop, not the outer one)
      uint64_t w;
      std::memcpy(&w, block + 8 * l, 8);
      const uint64_t k = w ^ key[l];
      acc[l] += ((w << 32) | (w >> 32)) + uint64_t(uint32_t(k)) * uint32_t(k >> 32);
      key[l] += kHashLanes * kGolden;
    }
  }
  for (int l = 0; l < kHashLanes; ++l) lanes[l] += acc[l];
}

// a bijection of 64-bit words that spreads every input bit over the output (xor-shift-multiply rounds)
inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 31)) * 0xD6E8FEB86659FD93ull;
  x = (x ^ (x >> 29)) * 0xC2B2AE3D27D4EB4Full;
  return x ^ (x >> 32);
}

uint64_t content_hash(const at::Tensor& weight) {
  const at::Tensor w = weight.is_non_overlapping_and_dense() ? weight : weight.contiguous();
  const char* bytes = static_cast<const char*>(w.const_data_ptr());  // dense: its elements fill nbytes from here
  const int64_t nbytes = int64_t(w.nbytes()), words = nbytes / 8, tail = nbytes % 8;
  // parts of whole blocks of kHashLanes words, so that every part's lanes line up with the global ones
  constexpr int64_t kParts = 64;
  const int64_t blocks = (words + kHashLanes - 1) / kHashLanes;
  uint64_t sums[kParts][kHashLanes] = {};
  // threads only where there is a few MiB to read
  at::parallel_for(0, kParts, nbytes >= (int64_t(1) << 22) ? 1 : kParts, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      const int64_t lo = blocks * part / kParts * kHashLanes;
      const int64_t hi = std::min(words, blocks * (part + 1) / kParts * kHashLanes);
      if (lo < hi) add_words(bytes, lo, hi, sums[part]);
    }
  });
  uint64_t lanes[kHashLanes] = {};
  for (const auto& part : sums) {
    for (int l = 0; l < kHashLanes; ++l) lanes[l] += part[l];
  }
  uint64_t last = 0;  // the tail's bytes, and the length (a tail of zero bytes must still count)
  std::memcpy(&last, bytes + 8 * words, tail);
  uint64_t h = mix64(last ^ uint64_t(nbytes) * kGolden);
  for (int l = 0; l < kHashLanes; ++l) h = mix64(h ^ mix64(lanes[l] + uint64_t(l + 1) * kGolden));
  return h;
}

struct Fingerprint {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  int64_t version;
  uint64_t epoch, content;
};
std::mutex fingerprint_mutex;
std::map<std::pair<const void*, int64_t>, Fingerprint> fingerprints;  // by storage and offset

// content_hash(w), reused within one span while w's version counter stays
uint64_t fingerprint(const at::Tensor& w) {
  const uint64_t epoch = weight_epoch();
  const auto key = std::make_pair<const void*, int64_t>(w.storage().unsafeGetStorageImpl(), w.storage_offset());
  {
    std::lock_guard<std::mutex> lock(fingerprint_mutex);
    const auto it = fingerprints.find(key);
    if (epoch != 0 && it != fingerprints.end()) {
      const Fingerprint& f = it->second;
      if (!f.storage.expired() && f.epoch == epoch && f.version == w._version() && f.sizes == w.sizes() &&
          f.strides == w.strides() && f.dtype == w.scalar_type()) {
        return f.content;
      }
    }
  }
  const uint64_t content = content_hash(w);
  std::lock_guard<std::mutex> lock(fingerprint_mutex);
  for (auto f = fingerprints.begin(); f != fingerprints.end();) {
    f = f->second.storage.expired() ? fingerprints.erase(f) : std::next(f);
  }
  fingerprints.insert_or_assign(key, Fingerprint{w.storage().getWeakStorageImpl(), w.sizes().vec(),
                                                 w.strides().vec(), w.scalar_type(), w._version(), epoch, content});
  return content;
}

// The entries of `key`'s weight and tag, all variants: [first, last).
std::pair<std::map<CacheKey, CacheEntry>::iterator, std::map<CacheKey, CacheEntry>::iterator> variants_of(
    const CacheKey& key) {
  const auto first = cache_entries.lower_bound({std::get<0>(key), std::get<1>(key), std::get<2>(key), {}});
  auto last = first;
  while (last != cache_entries.end() && std::get<0>(last->first) == std::get<0>(key) &&
         std::get<1>(last->first) == std::get<1>(key) && std::get<2>(last->first) == std::get<2>(key)) {
    ++last;
  }
  return {first, last};
}

// Drops the least recently used variant of `key`'s weight and tag when there are kVariants already.
void make_room(const CacheKey& key) {
  const auto [first, last] = variants_of(key);
  if (static_cast<size_t>(std::distance(first, last)) < kVariants) return;
  auto oldest = first;
  for (auto it = first; it != last; ++it) {
    if (it->second.last_use < oldest->second.last_use) oldest = it;
  }
  cache_entries.erase(oldest);  // one insertion at a time: never more than one too many
}

// A tensor's bytes: oneDNN's opaque tensors (packed weights) through mkldnn's ops, dense ones directly.
std::string_view bytes_of(const at::Tensor& t) {
  if (t.is_mkldnn()) {
    static auto data =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::data_ptr", "").typed<int64_t(const at::Tensor&)>();
    static auto size =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_nbytes", "").typed<int64_t(const at::Tensor&)>();
    return {reinterpret_cast<const char*>(data.call(t)), static_cast<size_t>(size.call(t))};
  }
  if (!t.is_contiguous()) return {};
  return {static_cast<const char*>(t.const_data_ptr()), t.nbytes()};
}

// `value`, or a tensor of the same bytes already kept for another variant of `key`'s weight and tag: oneDNN's
// layout is the same for most input shapes, and the variants then share one packed weight. (Equal bytes in two
// layouts, as of a constant weight, give the same values but make oneDNN convert it per call: only slower.)
at::Tensor shared_variant(const CacheKey& key, at::Tensor value) {
  const std::string_view bytes = bytes_of(value);
  if (bytes.empty()) return value;
  const auto [first, last] = variants_of(key);
  for (auto it = first; it != last; ++it) {
    const at::Tensor& other = it->second.value;
    if (other.sizes() == value.sizes() && other.scalar_type() == value.scalar_type() && bytes_of(other) == bytes) {
      return other;
    }
  }
  return value;
}

}  // namespace

uint64_t derived_weights_made() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return made;
}

at::Tensor derived_weight(const at::Tensor& weight, const std::string& tag, const std::function<at::Tensor()>& make,
                          at::IntArrayRef variant) {
  if (weight.is_inference()) return make();
  const uint64_t content = fingerprint(weight);
  const CacheKey key{weight.storage().unsafeGetStorageImpl(), weight.storage_offset(), tag, variant.vec()};
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache_entries.find(key);
  if (it != cache_entries.end() && entry_matches(it->second, weight, content)) {
    it->second.last_use = ++cache_clock;
    return it->second.value;
  }
  for (auto e = cache_entries.begin(); e != cache_entries.end();) {
    e = e->second.storage.expired() ? cache_entries.erase(e) : std::next(e);
  }
  cache_entries.erase(key);  // a stale entry
  make_room(key);
  ++made;
  CacheEntry entry{weight.storage().getWeakStorageImpl(), weight.sizes().vec(), weight.strides().vec(),
                   weight.scalar_type(), weight._version(), content, shared_variant(key, make()), ++cache_clock};
  at::Tensor value = entry.value;
  cache_entries.insert_or_assign(key, std::move(entry));
  return value;
}

// ---------------------------------------------------------------------------------------------
// oneDNN through ATen's mkldnn ops (the ones inductor's CPU fusion emits); libtorch does not export
// oneDNN's own symbols, so these are the way in.
// ---------------------------------------------------------------------------------------------
namespace {

// oneDNN convolves bf16 only with AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; elsewhere (AVX2 CPUs) bf16 data is
// convolved in float32 and rounded to bf16 once, at the end.
at::ScalarType onednn_compute_dtype(at::ScalarType t) {
  static const bool bf16 = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mkldnn::_is_mkldnn_bf16_supported", "")
                               .typed<bool()>()
                               .call();
  return t == at::kBFloat16 && !bf16 ? at::kFloat : t;
}

}  // namespace

namespace {
std::atomic<bool> amx_allowed{true};
}  // namespace

void allow_amx(bool allowed) { amx_allowed = allowed; }

bool bf16_on_amx() {
  static const bool amx = at::native::cpublas::could_pack(at::kBFloat16) && at::cpu::init_amx();
  return amx && amx_allowed;
}

at::Tensor prepack_conv_weight(const at::Tensor& weight, at::ScalarType dtype, at::IntArrayRef padding,
                               at::IntArrayRef stride, at::IntArrayRef input_size) {
  dtype = onednn_compute_dtype(dtype);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_reorder_convolution_weight", "")
                       .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                                         at::OptionalIntArrayRef)>();
  const std::vector<int64_t> dilation(padding.size(), 1);
  return op.call(weight.to(dtype).contiguous(), padding, stride, dilation, 1, input_size);
}

at::Tensor onednn_conv(const at::Tensor& input, const at::Tensor& packed_weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef padding, at::IntArrayRef stride, const std::optional<at::Tensor>& residual,
                       const at::Tensor* accumulate_into) {
  using ScalarList = c10::List<std::optional<at::Scalar>>;
  static auto unary = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                                            c10::string_view, ScalarList, std::optional<c10::string_view>)>();
  static auto binary = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                                             at::IntArrayRef, int64_t, c10::string_view, std::optional<at::Scalar>,
                                             std::optional<c10::string_view>, ScalarList,
                                             std::optional<c10::string_view>)>();
  static auto binary_inplace = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("mkldnn::_convolution_pointwise_", "binary")
                                   .typed<at::Tensor&(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const std::optional<at::Tensor>&, at::IntArrayRef,
                                                      at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view,
                                                      std::optional<at::Scalar>, std::optional<c10::string_view>,
                                                      ScalarList, std::optional<c10::string_view>)>();
  const at::ScalarType compute = onednn_compute_dtype(input.scalar_type());
  if (compute != input.scalar_type()) {
    // `accumulate_into` holds what the conv adds itself to: a residual like any other here
    const std::optional<at::Tensor> r = accumulate_into ? std::optional<at::Tensor>(*accumulate_into) : residual;
    std::optional<at::Tensor> r_compute;
    if (r) r_compute = r->to(compute);
    const at::Tensor y = onednn_conv(input.to(compute), packed_weight, bias, padding, stride, r_compute, nullptr);
    return accumulate_into ? accumulate_into->copy_(y) : y.to(input.scalar_type());
  }
  const std::vector<int64_t> dilation(padding.size(), 1);
  const auto format = input.dim() == 5 ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(format);
  std::optional<at::Tensor> b;
  if (bias) b = bias->to(input.scalar_type());
  if (accumulate_into) {
    TORCH_CHECK(accumulate_into->is_contiguous(format), "onednn_conv: accumulate_into must be channels-last dense");
    at::Tensor into = *accumulate_into;
    return binary_inplace.call(into, x, packed_weight, b, padding, stride, dilation, 1, "add", std::nullopt,
                               std::nullopt, ScalarList(), std::nullopt);
  }
  if (!residual) return unary.call(x, packed_weight, b, padding, stride, dilation, 1, "none", ScalarList(), std::nullopt);
  const at::Tensor other = residual->to(input.scalar_type()).contiguous(format);
  return binary.call(x, other, packed_weight, b, padding, stride, dilation, 1, "add", std::nullopt, std::nullopt,
                     ScalarList(), std::nullopt);
}

at::MemoryFormat output_format(const at::Tensor& x) {
  if (x.dim() != 5 || x.is_contiguous()) return at::MemoryFormat::Contiguous;
  const bool dense = x.is_contiguous(at::MemoryFormat::ChannelsLast3d) || (x.size(1) > 1 && x.stride(1) == 1);
  return dense ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
}

// ---------------------------------------------------------------------------------------------
// causal_conv3d
// ---------------------------------------------------------------------------------------------
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast3d;

int64_t floordiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

std::vector<int64_t> output_shape(const at::Tensor& x, const at::Tensor& w, int64_t cache_frames,
                                  at::IntArrayRef stride, at::IntArrayRef padding) {
  const int64_t t_in = std::max<int64_t>(0, 2 * padding[0] - cache_frames) + cache_frames + x.size(2);
  const int64_t t_out = t_in >= w.size(2) ? (t_in - w.size(2)) / stride[0] + 1 : 0;
  return {x.size(0), w.size(0), t_out, (x.size(3) + 2 * padding[1] - w.size(3)) / stride[1] + 1,
          (x.size(4) + 2 * padding[2] - w.size(4)) / stride[2] + 1};
}

// `cache` followed by `x` as one view when they are adjacent in one buffer, else nullopt.
std::optional<at::Tensor> joined_view(const at::Tensor& cache, const at::Tensor& x) {
  if (cache.strides() != x.strides() || cache.scalar_type() != x.scalar_type() || !cache.is_alias_of(x)) {
    return std::nullopt;
  }
  const int64_t c = cache.size(2);
  if (static_cast<const char*>(cache.const_data_ptr()) + c * x.stride(2) * x.element_size() != x.const_data_ptr()) {
    return std::nullopt;
  }
  auto sizes = x.sizes().vec();
  sizes[2] += c;
  return cache.as_strided(sizes, x.strides(), cache.storage_offset());
}

// The conv's input in time: `zeros` zero frames, then the cache, then x; a view when possible.
at::Tensor time_sequence(const at::Tensor& x, const std::optional<at::Tensor>& cache, int64_t zeros) {
  const bool has_cache = cache && cache->size(2) > 0;
  if (!has_cache && zeros == 0) return x;
  if (has_cache && zeros == 0) {
    if (auto joined = joined_view(*cache, x)) return *joined;
  }
  std::vector<at::Tensor> parts;
  auto zshape = x.sizes().vec();
  zshape[2] = zeros;
  if (zeros) parts.push_back(at::zeros(zshape, x.options()));
  if (has_cache) parts.push_back(*cache);
  parts.push_back(x);
  return at::cat(parts, 2).contiguous(kCL);
}

// [C, F, H, W] -> [F, H, W, C]: rows of channels.
at::Tensor channels_last_rows(const at::Tensor& t) { return t.permute({1, 2, 3, 0}); }

// Whether dims 0..2 of a [F, H, W, C] view merge into one row dimension without a copy.
bool rows_merge(const at::Tensor& t) {
  for (int d = 0; d < 2; ++d) {
    if (t.size(d) > 1 && t.stride(d) != t.stride(d + 1) * t.size(d + 1)) return false;
  }
  return true;
}

// dst[F, H, W, Cout] += src[F, H, W, Cin] @ w[Cin, Cout], as one GEMM when the frames merge.
void accumulate(const at::Tensor& dst, const at::Tensor& src, const at::Tensor& w) {
  if (rows_merge(dst) && rows_merge(src)) {
    dst.view({-1, dst.size(3)}).addmm_(src.reshape({-1, src.size(3)}), w);
    return;
  }
  for (int64_t f = 0; f < dst.size(0); ++f) {
    // view(): H and W merge in every layout the ops produce; an exotic one raises instead of writing a copy
    dst.select(0, f).view({-1, dst.size(3)}).addmm_(src.select(0, f).reshape({-1, src.size(3)}), w);
  }
}

// Whether t [N, C, T, H, W]'s frames are rows of dense channels, H and W merging: each frame is [H * W, C], C apart.
bool frame_rows(const at::Tensor& t) {
  const int64_t C = t.size(1);
  return t.stride(1) == 1 && (t.size(4) == 1 || t.stride(4) == C) && (t.size(3) == 1 || t.stride(3) == t.size(4) * C);
}

// pointwise_gemm for bf16 on AMX: bf16 products on AMX tiles with float32 sums (ATen's brgemm, its weight packed
// once), per frame and block of kRows rows, each block's sum rounded once into `out` with bias and residual; the
// float32 GEMMs' bf16->float32 copies of x and cache go too. bf16 decode at 17x128x128, 2 AMX cores (profiled):
// these convs took 68 ms of 1.31 s that way, 13 ms so.
void pointwise_gemm_amx(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& cache, int64_t st, int64_t zeros,
                        const std::optional<at::Tensor>& residual, const at::Tensor& out) {
  using bf16 = at::BFloat16;
  const int64_t N = out.size(0), Cin = x.size(1), Cout = out.size(1), kt = weight.size(2), t_out = out.size(2);
  const int64_t rows = out.size(3) * out.size(4), c = cache ? cache->size(2) : 0;
  // oneDNN packs B in blocks of at most 64 columns (rows of 16, 32, 48 or 64): packed[k] holds the blocks of tap k
  // one after another, kCols * Cin elements apart, the last one's rows rounded up to whole 16 columns
  constexpr int64_t kCols = 64;
  const int64_t col_blocks = (Cout + kCols - 1) / kCols, tap_size = Cin * ((Cout + 15) / 16 * 16);
  const auto block_ld = [&](int64_t q) { return (std::min(kCols, Cout - q * kCols) + 15) / 16 * 16; };
  const at::Tensor packed = derived_weight(weight, "gemm_amx", [&] {  // [kt, tap_size]
    const at::Tensor taps = weight.select(4, 0).select(3, 0).permute({2, 1, 0}).to(at::kBFloat16).contiguous();
    at::Tensor p = at::empty({kt, tap_size}, taps.options());
    for (int64_t k = 0; k < kt; ++k) {
      for (int64_t q = 0; q < col_blocks; ++q) {
        at::native::cpublas::pack(Cin, std::min(kCols, Cout - q * kCols), Cout, block_ld(q), at::kBFloat16,
                                  at::kBFloat16, taps[k].const_data_ptr<at::BFloat16>() + q * kCols,
                                  p[k].mutable_data_ptr<at::BFloat16>() + q * kCols * Cin);
      }
    }
    return p;
  });
  const at::Tensor b32 = bias ? bias->to(at::kFloat).contiguous() : at::zeros({Cout}, at::kFloat);
  const bf16 *xp = x.const_data_ptr<bf16>(), *cp = c ? cache->const_data_ptr<bf16>() : nullptr;
  const bf16* rp = residual ? residual->const_data_ptr<bf16>() : nullptr;
  const bf16* wp = packed.const_data_ptr<bf16>();
  const float* bp = b32.const_data_ptr<float>();
  bf16* op = out.mutable_data_ptr<bf16>();
  constexpr int64_t kRows = 32;  // AMX tiles hold 16 rows: two row tiles per GEMM
  const int64_t blocks = (rows + kRows - 1) / kRows;
  at::parallel_for(0, N * t_out * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(kRows * Cout);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / (t_out * blocks), j = i / blocks % t_out, r0 = i % blocks * kRows;
      const int64_t m = std::min(kRows, rows - r0);
      const int64_t k0 = std::max<int64_t>(0, zeros - j * st);  // taps before k0 read zero frames
      for (int64_t q = 0; q < col_blocks; ++q) {
        for (int64_t k = k0; k < kt; ++k) {
          const int64_t s = j * st + k - zeros;  // the tap's frame of (cache, x)
          const bf16* a = s < c ? cp + b * cache->stride(0) + s * cache->stride(2)
                                : xp + b * x.stride(0) + (s - c) * x.stride(2);
          at::native::cpublas::brgemm(m, std::min(kCols, Cout - q * kCols), Cin, Cin, block_ld(q), Cout, k > k0,
                                      a + r0 * Cin, wp + k * tap_size + q * kCols * Cin, acc.data() + q * kCols,
                                      true);
        }
      }
      bf16* dst = op + b * out.stride(0) + j * out.stride(2) + r0 * Cout;
      const bf16* res = rp ? rp + b * residual->stride(0) + j * residual->stride(2) + r0 * Cout : nullptr;
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t n0 = 0; n0 < Cout; n0 += kLanes) {
          const int64_t n = std::min(kLanes, Cout - n0);
          Vec v = Vec::loadu(bp + n0, n);
          if (k0 < kt) v = v + Vec::loadu(acc.data() + r * Cout + n0, n);
          if (res) v = v + load(res + r * Cout + n0, n);
          store(v, dst + r * Cout + n0, n);
        }
      }
    }
    at::native::cpublas::brgemm_release();
  });
}

// A conv that is 1x1 in space: out[j] = sum_k seq[j*st + k] @ W[:, :, k]^T, accumulated in place;
// seq = zeros, cache, x (virtually): each tap reads the frames of cache and of x it needs.
// bf16 data is multiplied in float32 into a float32 sum, rounded to `out` once: ATen's bf16 GEMM is slow
// without bf16 hardware (AVX2: 6.6 of a 15.3 s decode at 17x128x128) and half float32's speed with it (no AMX);
// with AMX, pointwise_gemm_amx serves bf16 instead.
void pointwise_gemm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    const std::optional<at::Tensor>& cache, int64_t st, int64_t zeros,
                    const std::optional<at::Tensor>& residual, const at::Tensor& out) {
  if (x.scalar_type() == at::kBFloat16 && bf16_on_amx() && x.size(1) % 2 == 0 && frame_rows(x) && frame_rows(out) &&
      (!cache || frame_rows(*cache)) && (!residual || frame_rows(*residual))) {
    return pointwise_gemm_amx(x, weight, bias, cache, st, zeros, residual, out);
  }
  const bool fp32 = x.scalar_type() == at::kFloat;
  const at::Tensor acc = fp32 ? out : at::empty(out.sizes(), out.options().dtype(at::kFloat).memory_format(kCL));
  if (residual) {
    acc.copy_(*residual);
    if (bias) acc.add_(bias->view({1, -1, 1, 1, 1}));
  } else if (bias) {
    acc.copy_(bias->view({1, -1, 1, 1, 1}).expand_as(acc));
  } else {
    acc.zero_();
  }
  const int64_t t_out = out.size(2);
  if (t_out == 0) return;
  // [kt, Cin, Cout]
  const at::Tensor taps = derived_weight(weight, "gemm", [&] {
    return weight.select(4, 0).select(3, 0).permute({2, 1, 0}).to(at::kFloat).contiguous();
  });
  std::vector<std::pair<int64_t, at::Tensor>> sources;  // (first frame in seq, frames)
  if (cache && cache->size(2)) sources.emplace_back(zeros, cache->to(at::kFloat));
  sources.emplace_back(zeros + (cache ? cache->size(2) : 0), x.to(at::kFloat));
  for (int64_t k = 0; k < weight.size(2); ++k) {
    for (const auto& [start, src] : sources) {
      // output frames j whose tap-k frame j*st + k falls inside src
      const int64_t j0 = std::max<int64_t>(0, -floordiv(k - start, st));
      const int64_t j1 = std::min(t_out - 1, floordiv(start + src.size(2) - 1 - k, st));
      if (j1 < j0) continue;
      const int64_t s0 = j0 * st + k - start;
      const at::Tensor s = src.slice(2, s0, s0 + (j1 - j0) * st + 1, st);
      const at::Tensor d = acc.slice(2, j0, j1 + 1);
      for (int64_t b = 0; b < out.size(0); ++b) {
        accumulate(channels_last_rows(d.select(0, b)), channels_last_rows(s.select(0, b)), taps.select(0, k));
      }
    }
  }
  if (!fp32) out.copy_(acc);
}

// oneDNN's bf16 convs on AMX (brg_conv_fwd, torch 2.13) slow down 2-3x from 512 input channels on: 3x3x3 convs
// at 32x32 ran at 0.9-1.0 TFLOP/s with 512 or 1024 input channels against 3.0-3.2 with 448 (2 Sapphire Rapids
// cores); Wan2.2's decoder is made of such convs. Split into groups of at most 448 channels (multiples of 32) whose
// convs add up in the output, each group ran at 2.4-3.3. Each group's sum is rounded to bf16 once more, so at most
// three groups (1344 channels): the error stays within twice a single conv's (measured 1.9-2.0x with 2-3 groups).
// Returns the group size: all the channels where no split applies. Measured on 3x3 kernels of stride 1 only, and
// applied to those.
int64_t amx_input_group(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride) {
  constexpr int64_t kFast = 448, kMaxGroups = 3;
  const int64_t c = x.size(1);
  const bool measured = weight.size(3) == 3 && weight.size(4) == 3 && stride[1] == 1 && stride[2] == 1;
  if (x.scalar_type() != at::kBFloat16 || !bf16_on_amx() || !measured || c <= kFast || c > kFast * kMaxGroups) {
    return c;
  }
  const int64_t groups = (c + kFast - 1) / kFast;
  return ((c + groups - 1) / groups + 31) / 32 * 32;
}

// The conv's result; written into `out` when given (and then returned).
at::Tensor run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               const std::optional<at::Tensor>& cache, at::IntArrayRef stride, at::IntArrayRef padding,
               const std::optional<at::Tensor>& residual, const at::Tensor* out) {
  TORCH_CHECK(x.dim() == 5 && weight.dim() == 5 && weight.size(1) == x.size(1),
              "causal_conv3d: x [N, C, T, H, W] and weight [Cout, C, kt, kh, kw] expected");
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3, "causal_conv3d: stride and padding take 3 values");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "causal_conv3d (C++): float32 or bfloat16 only, got ", x.scalar_type());
  const int64_t c = cache ? cache->size(2) : 0;
  const int64_t zeros = std::max<int64_t>(0, 2 * padding[0] - c);
  const auto shape = output_shape(x, weight, c, stride, padding);
  const auto format = output_format(x);
  if (out) TORCH_CHECK(out->sizes() == at::IntArrayRef(shape), "causal_conv3d: out has the wrong shape");

  const bool pointwise = weight.size(3) == 1 && weight.size(4) == 1 && padding[1] == 0 && padding[2] == 0 &&
                         stride[1] == 1 && stride[2] == 1;
  const bool joinable = (c == 0 && zeros == 0) || (zeros == 0 && c > 0 && joined_view(*cache, x));
  const bool dense_out = !out || out->is_contiguous(kCL);
  if (pointwise && (!joinable || !dense_out || format != kCL)) {
    at::Tensor dst = out ? *out : at::empty(shape, x.options().memory_format(format));
    pointwise_gemm(x, weight, bias, cache, stride[0], zeros, residual, dst);
    return dst;
  }

  if (shape[2] == 0) return out ? *out : at::empty(shape, x.options().memory_format(format));
  const bool winograd = winograd_applies(x, weight, cache, stride, padding);
  if (winograd || strided_applies(x, weight, cache, stride, padding)) {
    // written where `out` lies when its channels are dense, else through a temporary
    const bool direct = out && out->stride(1) == 1;
    const at::Tensor dst = direct ? *out : at::empty(shape, x.options().memory_format(kCL));
    if (winograd) {
      winograd_conv3d(x, weight, bias, cache, zeros, residual, dst);
    } else {
      strided_conv3d(x, weight, bias, stride, padding, residual, dst);
    }
    if (out && !direct) return out->copy_(dst);
    return format == kCL ? dst : dst.contiguous(format);
  }
  const at::Tensor seq = time_sequence(x, cache, zeros);
  const std::vector<int64_t> conv_padding{0, padding[1], padding[2]};
  const std::string tag = c10::str("conv3d/", x.scalar_type(), "/", padding, "/", stride);
  const int64_t C = x.size(1), group = amx_input_group(x, weight, stride);
  // oneDNN's packed weight of input channels [first, first + n) for an input of `sizes` (n == C: the whole weight)
  const auto packed = [&](int64_t first, int64_t n, at::IntArrayRef sizes) {
    return derived_weight(
        weight, n == C ? tag : c10::str(tag, "/inputs from ", first),
        [&] { return prepack_conv_weight(weight.narrow(1, first, n), x.scalar_type(), conv_padding, stride, sizes); },
        seq.sizes());
  };
  const bool in_place = out && out->is_contiguous(kCL);
  if (in_place || group < C) {
    // the conv (of each group of input channels) adds itself to `dst`, which starts as the residual or zeros
    at::Tensor dst = in_place ? *out : at::empty(shape, x.options().memory_format(kCL));
    if (residual) {
      dst.copy_(*residual);
    } else {
      dst.zero_();
    }
    for (int64_t first = 0; first < C; first += group) {
      const int64_t n = std::min(group, C - first);
      const at::Tensor part = n == C ? seq : seq.narrow(1, first, n).contiguous(kCL);
      onednn_conv(part, packed(first, n, part.sizes()), first == 0 ? bias : std::nullopt, conv_padding, stride,
                  std::nullopt, &dst);
    }
    if (out && !in_place) return out->copy_(dst);
    return format == kCL ? dst : dst.contiguous(format);
  }
  at::Tensor y = onednn_conv(seq, packed(0, C, seq.sizes()), bias, conv_padding, stride, residual);
  if (out) return out->copy_(y);  // a strided or NCDHW `out` (the decoder head writing into the video)
  return format == kCL ? y : y.contiguous(format);
}

}  // namespace

at::Tensor causal_conv3d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& cache, at::IntArrayRef stride, at::IntArrayRef padding,
                         const std::optional<at::Tensor>& residual) {
  return run(x, weight, bias, cache, stride, padding, residual, nullptr);
}

void causal_conv3d_out(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& cache, at::IntArrayRef stride, at::IntArrayRef padding,
                       const std::optional<at::Tensor>& residual, at::Tensor& out) {
  run(x, weight, bias, cache, stride, padding, residual, &out);
}

at::Tensor causal_conv3d_data_grad(const at::Tensor& grad, const at::Tensor& weight, int64_t front,
                                   at::IntArrayRef padding) {
  TORCH_CHECK(grad.dim() == 5 && weight.dim() == 5 && weight.size(0) == grad.size(1) && padding.size() == 2 &&
                  front >= 0,
              "causal_conv3d_data_grad: grad [N, Cout, T, H, W], weight [Cout, C, kt, kh, kw], front >= 0 and 2 "
              "paddings expected");
  const int64_t kt = weight.size(2);
  if (!data_grad_applies(grad, weight, padding)) {  // a conv of copies: the flipped weight, the padded gradient
    const at::Tensor flipped = weight.transpose(0, 1).flip({2, 3, 4}).contiguous();
    const at::Tensor seq = at::constant_pad_nd(grad, {0, 0, 0, 0, front, kt - 1});
    const at::Tensor y = run(seq, flipped, std::nullopt, std::nullopt, {1, 1, 1}, {0, padding[0], padding[1]},
                             std::nullopt, nullptr);
    return y.contiguous(output_format(grad));
  }
  const std::vector<int64_t> shape{grad.size(0), weight.size(1), front + grad.size(2), grad.size(3), grad.size(4)};
  at::Tensor out = at::empty(shape, grad.options().memory_format(kCL));
  winograd_conv3d_data_grad(grad, weight, front, out);
  return output_format(grad) == kCL ? out : out.contiguous();
}

}  // namespace vaekernels
