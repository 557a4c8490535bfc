// Gathering sampled rows of a column into a batch. Shared by all samplers.
#pragma once

#include <cstdint>
#include <cstring>

#include "reverie/atomics.h"
#include "reverie/common.h"

namespace reverie {

// Copies rows slots[begin..end) of `column` (rows of `row_bytes`) to rows begin..end of
// `out`. Word-sized rows are moved as words; others by memcpy (or a byte loop on device).
// A row may be changed by a writer during the copy: the caller validates it (ring.h).
// Preconditions: every slot is a valid row; out has room for `end` rows. O((end-begin) *
// row_bytes).
REVERIE_HD void GatherRows(uint8_t* out, const uint8_t* column, size_t row_bytes,
                           const int64_t* slots, int64_t begin, int64_t end) {
#if defined(__CUDA_ARCH__)
  for (int64_t i = begin; i < end; ++i) {
    const uint8_t* src = column + static_cast<size_t>(slots[i]) * row_bytes;
    uint8_t* dst = out + static_cast<size_t>(i) * row_bytes;
    for (size_t b = 0; b < row_bytes; ++b) dst[b] = src[b];
  }
#elif defined(REVERIE_TSAN)
  // A row may be overwritten while it is copied (the seqlock of ring.h rejects such a copy);
  // under ThreadSanitizer the copy is made of atomic accesses so TSan can check that.
  for (int64_t i = begin; i < end; ++i) {
    RacyCopy(out + static_cast<size_t>(i) * row_bytes,
             column + static_cast<size_t>(slots[i]) * row_bytes, row_bytes);
  }
#else
  // Random rows miss the cache; prefetching a few rows ahead keeps many misses in flight.
  constexpr int64_t kAhead = 16;
  const auto prefetch = [&](int64_t i) {
    if (i < end) {
      const uint8_t* row = column + static_cast<size_t>(slots[i]) * row_bytes;
      __builtin_prefetch(row);
      if (row_bytes > 64) __builtin_prefetch(row + row_bytes - 1);
    }
  };
  if (row_bytes <= 256) {
    for (int64_t i = begin; i < begin + kAhead; ++i) prefetch(i);
  }
  switch (row_bytes) {
    case 1:
      for (int64_t i = begin; i < end; ++i) {
        prefetch(i + kAhead);
        out[i] = column[slots[i]];
      }
      return;
    case 4: {
      for (int64_t i = begin; i < end; ++i) {
        prefetch(i + kAhead);
        std::memcpy(out + i * 4, column + slots[i] * 4, 4);
      }
      return;
    }
    case 8: {
      for (int64_t i = begin; i < end; ++i) {
        prefetch(i + kAhead);
        std::memcpy(out + i * 8, column + slots[i] * 8, 8);
      }
      return;
    }
    default:
      if (row_bytes <= 256) {
        for (int64_t i = begin; i < end; ++i) {
          prefetch(i + kAhead);
          std::memcpy(out + static_cast<size_t>(i) * row_bytes,
                      column + static_cast<size_t>(slots[i]) * row_bytes, row_bytes);
        }
        return;
      }
      // Large rows: the copy itself streams; hardware prefetch follows it.
      for (int64_t i = begin; i < end; ++i) {
        std::memcpy(out + static_cast<size_t>(i) * row_bytes,
                    column + static_cast<size_t>(slots[i]) * row_bytes, row_bytes);
      }
  }
#endif
}

}  // namespace reverie
