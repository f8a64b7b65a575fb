// float32 SIMD lanes for the CPU ops, loading and storing float32 or bfloat16 memory.
#pragma once

// ATen picks its Vectorized<> width from these macros; map the compiler's target (-march) onto them.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#ifndef CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY_AVX512
#endif
#elif defined(__AVX2__) && defined(__FMA__)
#ifndef CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY_AVX2
#endif
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace vaekernels {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();

// Load/store the first n (<= kLanes) elements as float32 lanes; lanes past n load as 0.
// Full bf16 vectors move kLanes elements directly: Vectorized<BFloat16> holds twice kLanes, and its partial
// loads and stores go through a stack copy on AVX2 (rms_norm_silu in bf16 ran slower than in float32 there).
inline Vec load(const float* p, int64_t n) { return Vec::loadu(p, n); }
inline Vec load(const at::BFloat16* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if (n == kLanes) {
    __m512 v;
    at::vec::cvtbf16_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), v);
    return Vec(v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (n == kLanes) {
    __m256 v;
    at::vec::cvtbf16_fp32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), v);
    return Vec(v);
  }
#endif
  return std::get<0>(at::vec::convert_to_float<at::BFloat16>(at::vec::Vectorized<at::BFloat16>::loadu(p, n)));
}
inline void store(const Vec& v, float* p, int64_t n) { v.store(p, n); }
inline void store(const Vec& v, at::BFloat16* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  // one instruction (round to nearest even, as ATen's; subnormal inputs become zero) for ATen's eight
  if (n == kLanes) return _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(__m512(v)));
#elif defined(CPU_CAPABILITY_AVX512)
  if (n == kLanes) return _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), at::vec::cvtfp32_bf16(__m512(v)));
#elif defined(CPU_CAPABILITY_AVX2)
  if (n == kLanes) return _mm_storeu_si128(reinterpret_cast<__m128i*>(p), at::vec::cvtfp32_bf16(__m256(v)));
#endif
  at::vec::convert_from_float<at::BFloat16>(v, v).store(p, n);
}

}  // namespace vaekernels
