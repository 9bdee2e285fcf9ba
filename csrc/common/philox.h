// Philox4x32-10 + Box-Muller: element (i, j) of the Gaussian sketch Omega (D x l) is
// tl.randn(seed, j * D + i), exactly as eadaprune_kernels/sketch.py defines it.
//
// The integer part (Philox on the counter (offset, 0, 0, 0) keyed by the two 32-bit halves of the
// seed) is reproduced bit for bit; the float part uses the same float32 operations as
// triton.language.random (uint -> uniform, clamp, log, sqrt, cos), so it agrees with the Python and
// GPU streams to within a few float32 ulps (libm's logf/cosf are not bit-identical across devices).
#pragma once

#include <cstdint>
#include <cmath>

#if defined(__CUDACC__)
#define EADAPRUNE_HD __host__ __device__ __forceinline__
#else
#define EADAPRUNE_HD inline
#endif

namespace eadaprune {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;

EADAPRUNE_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * static_cast<uint64_t>(b)) >> 32);
}

// The first two output words of Philox4x32-10 on counter (offset, 0, 0, 0), key (seed_lo, seed_hi).
EADAPRUNE_HD void philox_words(uint64_t seed, uint32_t offset, uint32_t& out0, uint32_t& out1) {
  uint32_t c0 = offset, c1 = 0u, c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed & 0xFFFFFFFFull);
  uint32_t k1 = static_cast<uint32_t>((seed >> 32) & 0xFFFFFFFFull);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = mulhi32(kPhiloxRoundB, a2) ^ c1 ^ k0;
    c2 = mulhi32(kPhiloxRoundA, a0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * a2;
    c3 = kPhiloxRoundA * a0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  out0 = c0;
  out1 = c1;
}

// triton.language.random.uint_to_uniform_float for 32-bit words: bitcast to int32, fold the
// negative half onto the positive one, scale by ~2^-31 in float32.
EADAPRUNE_HD float uint32_to_uniform(uint32_t x) {
  int32_t s = static_cast<int32_t>(x);
  if (s < 0) s = -s - 1;
  return static_cast<float>(s) * 4.6566127342e-10f;
}

// tl.randn(seed, offset) in float32.
EADAPRUNE_HD float philox_randn(uint64_t seed, uint32_t offset) {
  uint32_t w0, w1;
  philox_words(seed, offset, w0, w1);
  float u1 = uint32_to_uniform(w0);
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
  const float u2 = uint32_to_uniform(w1);
  const float theta = 6.283185307179586f * u2;
#if defined(__CUDA_ARCH__)
  const float radius = sqrtf(-2.0f * logf(u1));
  return radius * cosf(theta);
#else
  const float radius = std::sqrt(-2.0f * std::log(u1));
  return radius * std::cos(theta);
#endif
}

}  // namespace eadaprune
