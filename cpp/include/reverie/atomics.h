// Relaxed atomic access to plain arrays that are read while another thread writes them.
//
// The priority tree and the columns live in plain memory (possibly shared between processes,
// possibly on a device), so they cannot be arrays of std::atomic. Readers that may run while
// a writer changes the same words (tree descents during priority updates, row gathers during
// an overwrite that the seqlock of ring.h later rejects) use these accessors, so that every
// racing access is an atomic one in the C++ memory model (Boehm, "Can seqlocks get along with
// programming language memory models?", MSPC 2012). On x86-64 and AArch64 a relaxed 64-bit
// load or store is the plain instruction, so this costs nothing over ordinary access.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "reverie/common.h"

namespace reverie {

REVERIE_HD uint64_t LoadRelaxed(const uint64_t* p) {
#if defined(__CUDA_ARCH__)
  return *static_cast<const volatile uint64_t*>(p);
#else
  return __atomic_load_n(p, __ATOMIC_RELAXED);
#endif
}

REVERIE_HD void StoreRelaxed(uint64_t* p, uint64_t v) {
#if defined(__CUDA_ARCH__)
  *static_cast<volatile uint64_t*>(p) = v;
#else
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
#endif
}

#if defined(__SANITIZE_THREAD__)
#define REVERIE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define REVERIE_TSAN 1
#endif
#endif

// Copies `bytes` from `src` to `dst` where either side may be written or read concurrently
// by another thread, the result being checked afterwards by the seqlock protocol (ring.h).
// Built for ThreadSanitizer it is a loop of relaxed atomic byte accesses, which is what the
// memory model asks for and lets TSan verify the protocol; otherwise it is memcpy, which
// compiles to the same plain loads and stores those relaxed accesses would (a torn copy is
// possible either way and is discarded by the protocol). Host only.
inline void RacyCopy(void* dst, const void* src, size_t bytes) {
#if defined(REVERIE_TSAN)
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < bytes; ++i) {
    __atomic_store_n(d + i, __atomic_load_n(s + i, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
  }
#else
  std::memcpy(dst, src, bytes);
#endif
}

}  // namespace reverie
