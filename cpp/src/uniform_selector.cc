#include "reverie/uniform_selector.h"

#include <cmath>
#include <memory>
#include <unordered_set>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/kernels.h"
#include "reverie/philox.h"
#include "reverie/ring.h"

namespace reverie {

void Selector::Weights(const int64_t*, int64_t, int64_t, float*) const {}

void Selector::Sample(const SampleRequest& request, int64_t begin, int64_t end, int64_t* slots,
                      float* weights) const {
  Draw(request, begin, end, slots);
  if (weights != nullptr && prioritized()) Weights(slots, begin, end, weights);
}

void Selector::ValidatePriorities(const double*, int64_t) const {
  throw std::invalid_argument(
      "priority updates need a prioritized sampler; this buffer samples uniformly");
}

void Selector::UpdatePriorities(const int64_t*, const double*, int64_t) {
  throw std::invalid_argument(
      "priority updates need a prioritized sampler; this buffer samples uniformly");
}

std::unique_ptr<Selector> MakeUniformSelector(const ConfigValue& settings, const TableContext& table) {
  const ConfigValue& r = settings.Get("replacement");
  const bool replacement = r.is_null() ? true : r.AsBool("uniform sampler 'replacement'");
  return std::make_unique<UniformSelector>(replacement, table.removals, table.capacity);
}

UniformSelector::UniformSelector(bool replacement, bool live_set, int64_t capacity)
    : replacement_(replacement), live_set_(live_set), capacity_(capacity) {}

std::vector<size_t> UniformSelector::Sections() const {
  if (!live_set_) return {};
  const size_t array = static_cast<size_t>(capacity_) * sizeof(uint64_t);
  return {sizeof(std::atomic<int64_t>), array, array};
}

void UniformSelector::Bind(const std::vector<uint8_t*>& sections, bool fresh) {
  if (!live_set_) return;
  count_ = reinterpret_cast<std::atomic<int64_t>*>(sections[0]);
  if (fresh) new (count_) std::atomic<int64_t>(0);
  live_ = reinterpret_cast<uint64_t*>(sections[1]);
  position_ = reinterpret_cast<uint64_t*>(sections[2]);
}

int64_t UniformSelector::live_count() const {
  return live_set_ ? count_->load(std::memory_order_acquire) : -1;
}

int64_t UniformSelector::Population(const SampleRequest& request) const {
  return live_set_ ? count_->load(std::memory_order_acquire) : request.draw_range();
}

int64_t UniformSelector::Pick(uint64_t random_bits, const SampleRequest& request) const {
  const int64_t n = Population(request);
  if (n <= 0) return -1;
  const auto index = static_cast<int64_t>(MulHi64(random_bits, static_cast<uint64_t>(n)));
  if (!live_set_) return index;
  return static_cast<int64_t>(LoadRelaxed(live_ + index));
}

void UniformSelector::ValidateSample(const SampleRequest& request) const {
  REVERIE_CHECK(request.batch > 0, "batch_size must be > 0, got ", request.batch);
  REVERIE_CHECK(request.size > 0, "cannot sample ", request.batch,
                " items: the buffer is empty (add items first)");
  REVERIE_CHECK(replacement_ || request.batch <= request.size, "cannot sample ", request.batch,
                " distinct items without replacement: the buffer holds only ", request.size);
}

void UniformSelector::Draw(const SampleRequest& request, int64_t begin, int64_t end,
                           int64_t* slots) const {
  if (replacement_) {
    if (!live_set_) {
      for (int64_t i = begin; i < end; ++i) {
        slots[i] = Pick(RandomBits(request.seed, request.call, static_cast<uint32_t>(i)), request);
      }
      return;
    }
    // The live set: every lookup is a random cache miss. Draw the indices first and start
    // all their loads, then read them (Pick's result, the misses overlapped).
    const int64_t n = Population(request);
    if (n <= 0) {
      std::fill(slots + begin, slots + end, -1);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      slots[i] = static_cast<int64_t>(MulHi64(RandomBits(request.seed, request.call, static_cast<uint32_t>(i)),
                                              static_cast<uint64_t>(n)));
      __builtin_prefetch(live_ + slots[i]);
    }
    for (int64_t i = begin; i < end; ++i) slots[i] = static_cast<int64_t>(LoadRelaxed(live_ + slots[i]));
    return;
  }
  // Floyd: for j = n-B .. n-1 draw t in [0, j]; take t unless taken, else j.
  const int64_t n = Population(request);
  if (n < request.batch) {  // the live set shrank under us: the table redraws the call
    std::fill(slots, slots + request.batch, -1);
    return;
  }
  std::unordered_set<int64_t> taken;
  taken.reserve(static_cast<size_t>(request.batch) * 2);
  const int64_t first = n - request.batch;
  for (int64_t i = 0; i < request.batch; ++i) {
    const int64_t j = first + i;
    const auto t = static_cast<int64_t>(MulHi64(
        RandomBits(request.seed, request.call, static_cast<uint32_t>(i)), static_cast<uint64_t>(j) + 1));
    const int64_t pick = taken.insert(t).second ? t : j;
    if (pick == j) taken.insert(j);
    slots[i] = live_set_ ? static_cast<int64_t>(LoadRelaxed(live_ + pick)) : pick;
  }
}

bool UniformSelector::Drawable(const SampleRequest& request, int64_t i, int64_t slot,
                               const int64_t* slots) const {
  if (live_set_ && LoadRelaxed(position_ + slot) == 0) return false;
  if (replacement_) return true;
  for (int64_t k = 0; k < request.batch; ++k) {
    if (k != i && slots[k] == slot) return false;
  }
  return true;
}

int64_t UniformSelector::Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                                const int64_t* slots) const {
  const int64_t slot =
      Pick(RandomBits(request.seed, request.call, static_cast<uint32_t>(i), attempt), request);
  // Rare (a row overwritten under a draw): without replacement a linear scan keeps the
  // batch distinct.
  return slot >= 0 && Drawable(request, i, slot, slots) ? slot : -1;
}

void UniformSelector::OnInsert(int64_t first, int64_t n) {
  if (!live_set_) return;
  int64_t count = count_->load(std::memory_order_relaxed);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t slot = (first + j) % capacity_;
    if (position_[slot] != 0) continue;  // an item replaced in place: already live
    StoreRelaxed(live_ + count, static_cast<uint64_t>(slot));
    StoreRelaxed(position_ + slot, static_cast<uint64_t>(count) + 1);
    ++count;
  }
  count_->store(count, std::memory_order_release);
}

void UniformSelector::OnRemoveMany(const int64_t* slots, int64_t n) {
  if (!live_set_) return;
  for (int64_t i = 0; i < n; ++i) __builtin_prefetch(position_ + slots[i]);
  for (int64_t i = 0; i < n; ++i) OnRemove(slots[i]);
}

void UniformSelector::OnRemove(int64_t slot) {
  if (!live_set_ || position_[slot] == 0) return;
  const int64_t index = static_cast<int64_t>(position_[slot]) - 1;
  const int64_t last = count_->load(std::memory_order_relaxed) - 1;
  const auto moved = static_cast<int64_t>(live_[last]);
  StoreRelaxed(live_ + index, static_cast<uint64_t>(moved));
  StoreRelaxed(position_ + moved, static_cast<uint64_t>(index) + 1);
  StoreRelaxed(position_ + slot, 0);
  count_->store(last, std::memory_order_release);
}

void UniformSelector::StateArrays(std::vector<StateArray>* out) {
  if (!live_set_) return;
  // The order of the live set decides the draws, so it is state (positions are derived).
  out->push_back(StateArray{"uniform.live", "uint64", {capacity_}, reinterpret_cast<uint8_t*>(live_), false});
}

void UniformSelector::SaveScalars(ConfigValue* out) const {
  if (!live_set_) return;
  out->Set("uniform.live_count", ConfigValue::Int(count_->load(std::memory_order_acquire)));
}

void UniformSelector::Restore(const ConfigValue& scalars, const Ring& slots) {
  if (!live_set_) return;
  const int64_t count = StateInt(scalars, "uniform.live_count");
  REVERIE_CHECK(count >= 0 && count <= capacity_, "uniform live set: ", count,
                " live slots in a capacity of ", capacity_);
  std::fill(position_, position_ + capacity_, 0);
  for (int64_t i = 0; i < count; ++i) {
    const auto slot = static_cast<int64_t>(live_[i]);
    REVERIE_CHECK(slot >= 0 && slot < capacity_ && position_[slot] == 0,
                  "uniform live set: entry ", i, " (slot ", live_[i], ") is out of range or repeated");
    REVERIE_CHECK(Stamp::IsCommitted(slots.LoadStamp(slot)), "uniform live set: slot ", slot,
                  " is listed but holds no item");
    position_[slot] = static_cast<uint64_t>(i) + 1;
  }
  for (int64_t slot = 0; slot < capacity_; ++slot) {
    REVERIE_CHECK(position_[slot] != 0 || !Stamp::IsCommitted(slots.LoadStamp(slot)),
                  "uniform live set: slot ", slot, " holds an item but is not listed");
  }
  std::fill(live_ + count, live_ + capacity_, 0);
  count_->store(count, std::memory_order_release);
}

}  // namespace reverie
