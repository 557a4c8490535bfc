// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011). A draw is a pure function of (key, counter), so the numbers a
// sample call uses depend only on the seed, the call number and the query's position in the
// batch, never on thread timing or on how many threads work on the call.
#pragma once

#include <cstdint>

#include "reverie/common.h"

namespace reverie {

struct PhiloxKey {
  uint32_t k0, k1;
};

struct PhiloxCounter {
  uint32_t c0, c1, c2, c3;
};

namespace internal {

REVERIE_HD uint32_t MulHiLo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

}  // namespace internal

// Ten rounds of Philox4x32. O(1); pure.
REVERIE_HD PhiloxCounter Philox4x32(PhiloxCounter ctr, PhiloxKey key) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = internal::MulHiLo32(kMul0, ctr.c0, &hi0);
    const uint32_t lo1 = internal::MulHiLo32(kMul1, ctr.c2, &hi1);
    ctr = PhiloxCounter{hi1 ^ ctr.c1 ^ key.k0, lo1, hi0 ^ ctr.c3 ^ key.k1, lo0};
    key.k0 += kWeyl0;
    key.k1 += kWeyl1;
  }
  return ctr;
}

// 64 random bits for query `index` of call `call` (with a sub-stream `lane` when one query
// needs several draws). O(1); pure.
REVERIE_HD uint64_t RandomBits(uint64_t seed, uint64_t call, uint32_t index, uint32_t lane = 0) {
  const PhiloxKey key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  const PhiloxCounter out = Philox4x32(
      PhiloxCounter{index, lane, static_cast<uint32_t>(call), static_cast<uint32_t>(call >> 32)},
      key);
  return (static_cast<uint64_t>(out.c0) << 32) | out.c1;
}

// floor(a * b / 2^64): maps 64 random bits `a` onto [0, b) without modulo bias beyond 2^-64
// per value. O(1).
REVERIE_HD uint64_t MulHi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

}  // namespace reverie
