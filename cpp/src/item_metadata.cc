#include "reverie/item_metadata.h"

#include <atomic>

#include "reverie/common.h"
#include "reverie/ring.h"

namespace reverie {
namespace {

constexpr uint64_t kCountMask = 0xFFFFFFFFull;
constexpr uint64_t kCallMask = (uint64_t{1} << 48) - 1;

uint64_t CountTag(int64_t generation) { return static_cast<uint64_t>(generation) << 32; }
uint64_t CallTag(int64_t generation) { return (static_cast<uint64_t>(generation) & 0xFFFF) << 48; }

// The words live in plain region memory shared with other threads (and processes): accessed
// as atomics through these (std::atomic_ref is C++20).
uint64_t Load(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
void Store(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
bool Cas(uint64_t* p, uint64_t* expected, uint64_t desired) {
  return __atomic_compare_exchange_n(p, expected, desired, true, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

}  // namespace

ItemMetadata::ItemMetadata(int64_t capacity, bool columns, int64_t max_times, bool gate)
    : capacity_(capacity), columns_(columns), max_times_(max_times), gate_on_(gate) {}

std::vector<size_t> ItemMetadata::Sections() const {
  const size_t array = static_cast<size_t>(capacity_) * 8;
  std::vector<size_t> out = {array};
  if (columns_) out.insert(out.end(), {array, array});
  if (gate_on_) out.push_back(array);
  return out;
}

void ItemMetadata::Bind(const std::vector<uint8_t*>& sections, bool) {
  sampled_ = reinterpret_cast<uint64_t*>(sections[0]);
  size_t next = 1;
  if (columns_) {
    version_ = reinterpret_cast<int64_t*>(sections[next++]);
    last_ = reinterpret_cast<uint64_t*>(sections[next++]);
  }
  if (gate_on_) gate_ = reinterpret_cast<uint64_t*>(sections[next]);
}

bool ItemMetadata::Gate(int64_t slot, int64_t generation, uint64_t clock, uint64_t interval) {
  const uint64_t tag = CallTag(generation);
  const uint64_t mine = tag | ((clock + 1) & kCallMask);
  uint64_t w = Load(gate_ + slot);
  for (;;) {
    if ((w & ~kCallMask) != tag) return false;  // another generation holds the slot now
    if ((w & kCallMask) != 0) {  // this item was drawn at `last`
      const uint64_t last = (w & kCallMask) - 1;
      if (clock < last || clock - last < interval) return false;
    }
    if (Cas(gate_ + slot, &w, mine)) return true;
  }
}

int64_t ItemMetadata::OnStore(int64_t slot, int64_t generation, int64_t version, int64_t previous) {
  int64_t old_count = 0;
  if (max_times_ > 0) {
    // One exchange: the old occupant's final count, exact even while samplers still count it
    // (the table's count of samples left needs it).
    const uint64_t old = __atomic_exchange_n(sampled_ + slot, CountTag(generation), __ATOMIC_ACQ_REL);
    if (previous >= 0 && (old & ~kCountMask) == CountTag(previous)) old_count = static_cast<int64_t>(old & kCountMask);
  } else {
    // Nobody needs the old count: a store (a sampler's CAS on the old word then fails and it
    // sees the new generation, as after the exchange), without the exchange's full barrier.
    Store(sampled_ + slot, CountTag(generation));
  }
  if (columns_) {
    __atomic_store_n(version_ + slot, version, __ATOMIC_RELEASE);
    Store(last_ + slot, CallTag(generation));
  }
  if (gate_on_) Store(gate_ + slot, CallTag(generation));  // never drawn
  return old_count;
}

int64_t ItemMetadata::OnSample(int64_t slot, int64_t generation, uint64_t call, int64_t* previous_last) {
  const uint64_t tag = CountTag(generation);
  uint64_t w = Load(sampled_ + slot);
  for (;;) {
    if ((w & ~kCountMask) != tag) return -1;  // another generation holds the slot now
    const uint64_t count = w & kCountMask;
    if (max_times_ > 0 && count >= static_cast<uint64_t>(max_times_)) return -1;  // used up
    if (count == kCountMask) return -1;  // 2^32 - 1 samples: the count is saturated
    if (Cas(sampled_ + slot, &w, w + 1)) break;
  }
  const auto before = static_cast<int64_t>(w & kCountMask);
  if (columns_) {
    const uint64_t call_tag = CallTag(generation);
    const uint64_t mine = call_tag | ((call + 1) & kCallMask);
    uint64_t l = Load(last_ + slot);
    *previous_last = -1;
    while ((l & ~kCallMask) == call_tag) {
      *previous_last = static_cast<int64_t>(l & kCallMask) - 1;
      if ((l & kCallMask) >= (mine & kCallMask) || Cas(last_ + slot, &l, mine)) break;
    }
  }
  return before;
}

void ItemMetadata::Unsample(int64_t slot, int64_t generation) {
  const uint64_t tag = CountTag(generation);
  uint64_t w = Load(sampled_ + slot);
  while ((w & ~kCountMask) == tag && (w & kCountMask) > 0) {
    if (Cas(sampled_ + slot, &w, w - 1)) return;
  }
}

int64_t ItemMetadata::TimesSampled(int64_t slot, int64_t generation) const {
  const uint64_t w = Load(sampled_ + slot);
  return (w & ~kCountMask) == CountTag(generation) ? static_cast<int64_t>(w & kCountMask) : 0;
}

int64_t ItemMetadata::LastSampled(int64_t slot, int64_t generation) const {
  if (!columns_) return -1;
  const uint64_t l = Load(last_ + slot);
  return (l & ~kCallMask) == CallTag(generation) ? static_cast<int64_t>(l & kCallMask) - 1 : -1;
}

int64_t ItemMetadata::Version(int64_t slot) const {
  return columns_ ? __atomic_load_n(version_ + slot, __ATOMIC_ACQUIRE) : 0;
}

void ItemMetadata::StateArrays(std::vector<StateArray>* out) {
  out->push_back(StateArray{"meta.sampled", "uint64", {capacity_}, reinterpret_cast<uint8_t*>(sampled_), true});
  if (columns_) {
    out->push_back(StateArray{"meta.version", "int64", {capacity_}, reinterpret_cast<uint8_t*>(version_), true});
    out->push_back(StateArray{"meta.last_sampled", "uint64", {capacity_}, reinterpret_cast<uint8_t*>(last_), true});
  }
  if (gate_on_) out->push_back(StateArray{"meta.gate", "uint64", {capacity_}, reinterpret_cast<uint8_t*>(gate_), true});
}

void ItemMetadata::Restore(const ConfigValue&, const Ring& stamps) {
  const KeyCodec& codec = stamps.codec();
  for (int64_t slot = 0; slot < capacity_; ++slot) {
    const uint64_t stamp = stamps.LoadStamp(slot);
    if (!Stamp::IsCommitted(stamp)) continue;
    const int64_t generation = codec.Generation(Stamp::KeyOf(stamp));
    REVERIE_CHECK((sampled_[slot] & ~kCountMask) == CountTag(generation), "item metadata: slot ",
                  slot, "'s sample count is of another item than the one stored");
    REVERIE_CHECK(max_times_ == 0 || (sampled_[slot] & kCountMask) < static_cast<uint64_t>(max_times_),
                  "item metadata: slot ", slot, " holds an item sampled ", sampled_[slot] & kCountMask,
                  " times, at least max_times_sampled = ", max_times_);
    if (columns_) {
      REVERIE_CHECK((last_[slot] & ~kCallMask) == CallTag(generation), "item metadata: slot ",
                    slot, "'s last sample call is of another item than the one stored");
    }
  }
}

}  // namespace reverie
