// The FIFO rule with pins ("fifo" with {"pins": true}): every offered item is stored; when the
// table is full the oldest unpinned item is evicted, so pinned items (an anchor set, GeRe's
// general samples) stay while the others turn over in the remaining slots.
//
// The lock-free ring (fifo_writer.h) maps insertion numbers to slots, which a pinned slot
// would break; this writer decides under the table's writer lock instead (locked_writer.h)
// and keeps the unpinned items in a doubly linked list in insertion order, in the region:
//  - a new item goes to a free slot if there is one, else to the list's head (the oldest
//    unpinned item), and is appended at the tail (unless it is pinned as it is placed);
//  - pinning an item takes it out of the list; unpinning puts it back by its insertion
//    number, so an item pinned long ago is the next to go;
//  - a table whose items are all pinned refuses writes (ValueError, nothing stored), as
//    does one with PinAll set and fewer free slots than the call offers.
// Cost: O(1) per item written, O(1) per pin, O(size + m log m) per unpin call of m items.
// Not with max_times_sampled (a used-up item leaves, a pinned one never does), an episode
// view or a selector that ranks by ring order (recency).
#pragma once

#include <vector>

#include "reverie/locked_writer.h"

namespace reverie {

class LockedFifo final : public LockedWriter {
 public:
  explicit LockedFifo(int64_t capacity) : LockedWriter("fifo", capacity, /*pins=*/true) {}
  void OnRemove(int64_t slot) override;

 protected:
  void Check(const WriteBatch& batch) const override;
  int64_t Decide(const WriteBatch& batch, int64_t i, int64_t offer, int64_t free_slot,
                 int64_t insertion) override;
  void Placed(int64_t slot) override;
  void OnPins(const std::vector<int64_t>& slots, bool pin) override;
  std::vector<size_t> DerivedSections() const override;
  void BindDerived(const std::vector<uint8_t*>& sections, bool fresh) override;
  void RestoreDerived(const ConfigValue& scalars, const Ring& stamps) override;

 private:
  static constexpr int64_t kUnlinked = -2;  // next_ of a slot not in the list
  struct Ends {
    int64_t head;  // oldest unpinned item (-1: none)
    int64_t tail;  // newest
  };
  bool linked(int64_t slot) const { return next_[slot] != kUnlinked; }
  void Unlink(int64_t slot);
  void Append(int64_t slot);
  void InsertBefore(int64_t slot, int64_t at);  // at == -1: at the tail
  void Clear();

  Ends* ends_ = nullptr;
  int64_t* next_ = nullptr;  // [capacity]
  int64_t* prev_ = nullptr;  // [capacity]
};

// The "fifo" writer's factory: the lock-free ring (fifo_writer.h), or with "pins" this one.
std::unique_ptr<Writer> MakeFifoWriter(const ConfigValue& settings, const TableContext& table);
// Whether a writer's settings ask for pins ({"pins": true}).
bool PinsSetting(const ConfigValue& settings, const std::string& writer);

}  // namespace reverie
