#include "reverie/reservoir_writer.h"

#include "reverie/common.h"
#include "reverie/locked_fifo.h"
#include "reverie/philox.h"

namespace reverie {
namespace {

// The generator's index lane for admission draws: sampling uses indices below the batch size
// (< 2^32 - 1), so (call = offer, index = kAdmissionLane) is a stream of its own.
constexpr uint32_t kAdmissionLane = 0xFFFFFFFFu;

}  // namespace

std::unique_ptr<Writer> MakeReservoirWriter(const ConfigValue& settings, const TableContext& table) {
  REVERIE_CHECK(table.max_times_sampled == 0,
                "the reservoir writer cannot be combined with max_times_sampled: items that leave "
                "early would break the reservoir's k/n inclusion probability");
  return std::make_unique<ReservoirWriter>(table.capacity, table.seed, PinsSetting(settings, "reservoir"));
}

int64_t ReservoirWriter::Replaces(uint64_t seed, int64_t offer, int64_t capacity) {
  const uint64_t r = RandomBits(seed, static_cast<uint64_t>(offer), kAdmissionLane, 1);
  const auto j = static_cast<int64_t>(MulHi64(r, static_cast<uint64_t>(offer) + 1));
  return j < capacity ? j : -1;
}

int64_t ReservoirWriter::Decide(const WriteBatch&, int64_t, int64_t offer, int64_t free_slot,
                                int64_t) {
  if (free_slot >= 0) return free_slot;  // the first `capacity` offers fill the reservoir
  const int64_t j = Replaces(seed_, offer, capacity());
  return j >= 0 && pinned(j) ? -1 : j;  // a pinned slot is kept: the item is dropped
}

}  // namespace reverie
