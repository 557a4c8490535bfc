#include "reverie/locked_fifo.h"

#include <algorithm>

#include "reverie/common.h"
#include "reverie/fifo_writer.h"
#include "reverie/ring.h"

namespace reverie {

bool PinsSetting(const ConfigValue& settings, const std::string& writer) {
  const ConfigValue& pins = settings.Get("pins");
  return !pins.is_null() && pins.AsBool("the " + writer + " writer's 'pins'");
}

std::unique_ptr<Writer> MakeFifoWriter(const ConfigValue& settings, const TableContext& table) {
  if (!PinsSetting(settings, "fifo")) return std::make_unique<FifoWriter>();
  REVERIE_CHECK(table.max_times_sampled == 0, "a FIFO writer with pins cannot be combined with max_times_sampled: "
                "a used-up item leaves the table, a pinned one never does");
  return std::make_unique<LockedFifo>(table.capacity);
}

std::vector<size_t> LockedFifo::DerivedSections() const {
  const size_t array = static_cast<size_t>(capacity()) * sizeof(int64_t);
  return {sizeof(Ends), array, array};
}

void LockedFifo::BindDerived(const std::vector<uint8_t*>& sections, bool fresh) {
  ends_ = reinterpret_cast<Ends*>(sections[0]);
  next_ = reinterpret_cast<int64_t*>(sections[1]);
  prev_ = reinterpret_cast<int64_t*>(sections[2]);
  if (fresh) Clear();
}

void LockedFifo::Clear() {
  *ends_ = Ends{-1, -1};
  std::fill(next_, next_ + capacity(), kUnlinked);
  std::fill(prev_, prev_ + capacity(), int64_t{-1});
}

void LockedFifo::Unlink(int64_t slot) {
  if (!linked(slot)) return;
  const int64_t p = prev_[slot], n = next_[slot];
  (p >= 0 ? next_[p] : ends_->head) = n;
  (n >= 0 ? prev_[n] : ends_->tail) = p;
  next_[slot] = kUnlinked;
  prev_[slot] = -1;
}

void LockedFifo::InsertBefore(int64_t slot, int64_t at) {
  const int64_t p = at >= 0 ? prev_[at] : ends_->tail;
  prev_[slot] = p;
  next_[slot] = at;
  (p >= 0 ? next_[p] : ends_->head) = slot;
  (at >= 0 ? prev_[at] : ends_->tail) = slot;
}

void LockedFifo::Append(int64_t slot) { InsertBefore(slot, -1); }

void LockedFifo::Check(const WriteBatch& batch) const {
  if (batch.count == 0) return;
  const int64_t free = free_slots();
  if (pins_new()) {
    REVERIE_CHECK(batch.count <= free, "this table pins every item as it is written, and only ", free, " of its ",
                  capacity(), " slots are free: ", batch.count, " items would evict pinned ones (nothing was "
                  "stored; unpin, or raise the capacity)");
    return;
  }
  REVERIE_CHECK(free > 0 || ends_->head >= 0, "all ", capacity(), " items of this table are pinned: a new item "
                "would evict a pinned one (nothing was stored; unpin some, or raise the capacity)");
}

int64_t LockedFifo::Decide(const WriteBatch&, int64_t, int64_t, int64_t free_slot, int64_t) {
  if (free_slot >= 0) return free_slot;
  return ends_->head;  // the oldest unpinned item (Check made sure there is one)
}

void LockedFifo::Placed(int64_t slot) {
  Unlink(slot);  // the evicted item (a free slot is not linked)
  if (!pinned(slot)) Append(slot);
}

void LockedFifo::OnRemove(int64_t slot) {
  Unlink(slot);
  LockedWriter::OnRemove(slot);
}

void LockedFifo::OnPins(const std::vector<int64_t>& slots, bool pin) {
  if (pin) {
    for (int64_t slot : slots) Unlink(slot);
    return;
  }
  // Back in insertion order: one walk of the list, merging the unpinned items sorted by age.
  std::vector<int64_t> back(slots);
  std::sort(back.begin(), back.end(), [&](int64_t a, int64_t b) { return insertion(a) < insertion(b); });
  int64_t at = ends_->head;
  for (int64_t slot : back) {
    while (at >= 0 && insertion(at) < insertion(slot)) at = next_[at];
    InsertBefore(slot, at);
  }
}

void LockedFifo::RestoreDerived(const ConfigValue&, const Ring& stamps) {
  Clear();
  std::vector<int64_t> held;
  for (int64_t slot = 0; slot < capacity(); ++slot) {
    if (Stamp::IsCommitted(stamps.LoadStamp(slot)) && !pinned(slot)) held.push_back(slot);
  }
  std::sort(held.begin(), held.end(), [&](int64_t a, int64_t b) { return insertion(a) < insertion(b); });
  for (int64_t slot : held) Append(slot);
}

}  // namespace reverie
