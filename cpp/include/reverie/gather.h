// Gathering sampled rows of a column into a batch. Shared by all samplers.
#pragma once

#include <cstdint>
#include <cstring>

#include "reverie/common.h"

namespace reverie {

// Copies rows slots[begin..end) of `column` (rows of `row_bytes`) to rows begin..end of
// `out`. Word-sized rows are moved as words; others by memcpy (or a byte loop on device).
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
#else
  switch (row_bytes) {
    case 1:
      for (int64_t i = begin; i < end; ++i) out[i] = column[slots[i]];
      return;
    case 4: {
      auto* dst = reinterpret_cast<uint32_t*>(out);
      for (int64_t i = begin; i < end; ++i) std::memcpy(dst + i, column + slots[i] * 4, 4);
      return;
    }
    case 8: {
      auto* dst = reinterpret_cast<uint64_t*>(out);
      for (int64_t i = begin; i < end; ++i) std::memcpy(dst + i, column + slots[i] * 8, 8);
      return;
    }
    default:
      for (int64_t i = begin; i < end; ++i) {
        std::memcpy(out + static_cast<size_t>(i) * row_bytes,
                    column + static_cast<size_t>(slots[i]) * row_bytes, row_bytes);
      }
  }
#endif
}

}  // namespace reverie
