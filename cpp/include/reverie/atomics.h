// Access to plain memory that another thread may write at the same time.
//
// The priority tree and the columns live in plain memory (possibly shared between processes,
// possibly on a device), so they cannot be arrays of std::atomic. Readers that may run while
// a writer changes the same words (tree descents during priority updates, row gathers during
// an overwrite that the seqlock of ring.h later rejects) go through these functions. In the
// memory model such accesses must be relaxed atomics (Boehm, "Can seqlocks get along with
// programming language memory models?", MSPC 2012).
//  - The ThreadSanitizer build compiles them as relaxed atomics, so TSan checks that every
//    racing access is one of them.
//  - Release builds use the plain instructions those atomics stand for on x86-64 and AArch64
//    (aligned 64-bit loads and stores do not tear; memcpy for rows). That leaves the compiler
//    free to vectorise the 8-child scans of the tree: the atomic form made the 1M-leaf
//    descent and update about 30% slower (`reverie_tests --bench-tree`).
// Readers never trust what they read: a view torn by a concurrent write only yields a draw or
// a row copy that is rejected and redone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "reverie/common.h"

#if defined(__SANITIZE_THREAD__)
#define REVERIE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define REVERIE_TSAN 1
#endif
#endif

namespace reverie {

// A 64-bit word (on a device: a volatile access).
REVERIE_HD uint64_t LoadRelaxed(const uint64_t* p) {
#if defined(__CUDA_ARCH__)
  return *static_cast<const volatile uint64_t*>(p);
#elif defined(REVERIE_TSAN)
  return __atomic_load_n(p, __ATOMIC_RELAXED);
#else
  return *p;
#endif
}

REVERIE_HD void StoreRelaxed(uint64_t* p, uint64_t v) {
#if defined(__CUDA_ARCH__)
  *static_cast<volatile uint64_t*>(p) = v;
#elif defined(REVERIE_TSAN)
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
#else
  *p = v;
#endif
}

// Copies `bytes` from `src` to `dst` where either side may be written or read concurrently
// by another thread, the result being checked afterwards by the seqlock protocol (ring.h).
// TSan build: relaxed atomic byte accesses; release: memcpy (see above). Host only.
inline void RacyCopy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;  // an empty run may come with a null pointer (memcpy's null is undefined)
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
