// The header of a table's region, shared by the table's .cc files (not part of the API).
#pragma once

#include <atomic>
#include <cstdint>

#include "reverie/rate_limiter.h"
#include "reverie/region.h"
#include "reverie/ring.h"

namespace reverie {

class ConfigValue;
// A table configuration without its live settings (the rate limiter, a selector's beta, a
// threshold's value): what a region's fingerprint is of (table.cc).
ConfigValue FixedPart(const ConfigValue& config);

// The first bytes of a table's region, then its canonical configuration (config_bytes),
// then the stamps, the columns and the parts' sections. Everything here is address-free
// (region.h).
struct TableHeader {
  static constexpr uint64_t kMagic = 0x32424154'45564552ull;  // "REVETAB2" (little endian)
  static constexpr uint32_t kVersion = 2;

  std::atomic<uint64_t> magic{0};  // stored last (release) by the creator
  uint32_t version = kVersion;
  uint64_t total_bytes = 0;
  uint64_t fingerprint = 0;   // of the configuration without its live settings
  uint64_t config_bytes = 0;  // the canonical configuration's length
  RingCounters ring;
  alignas(64) std::atomic<uint64_t> calls{0};
  std::atomic<int64_t> stale{0};
  std::atomic<int64_t> holes{0};      // removed items whose slot is not written again yet
  std::atomic<int64_t> version_stamp{0};
  std::atomic<int64_t> remaining{0};  // max_times_sampled: samples the stored items have left
  // In-place field updates (UpdateFields) bump it before and after: odd while one runs. In
  // the padding before the lock, so the layout of older regions is unchanged (zero: even).
  std::atomic<uint64_t> fields_epoch{0};
  alignas(64) ProcessMutex writer_mu;
  alignas(64) RateLimitState limiter;
};

}  // namespace reverie
