// The ring writer's index arithmetic: where item k goes and whether it is still stored.
#pragma once

#include <cstdint>

namespace reverie {

// Item k (the k-th item ever added, from 0) lives in slot k % capacity until item
// k + capacity overwrites it. Its key is k itself: it names the slot (k % capacity) and the
// slot's generation (k / capacity) in one int64, so a priority update carrying a key can
// tell whether the slot still holds that item. Plain arithmetic; no state besides `written`.
// Thread-safety: none; ReplayBuffer guards `written`.
struct Ring {
  int64_t capacity = 0;
  int64_t written = 0;  // items ever added

  int64_t size() const { return written < capacity ? written : capacity; }
  int64_t slot_of(int64_t key) const { return key % capacity; }
  // Whether key k was ever written and is still stored. O(1).
  bool was_written(int64_t key) const { return key >= 0 && key < written; }
  bool is_stored(int64_t key) const { return was_written(key) && key >= written - capacity; }
  // The key of the item now in `slot` (precondition: slot < size()). O(1).
  int64_t key_of(int64_t slot) const {
    return slot + (written - 1 - slot) / capacity * capacity;
  }
  // key_of for n slots in place, with one division for all of them. O(n).
  void SlotsToKeys(int64_t* slots, int64_t n) const {
    const int64_t last = written - 1;  // the newest key; its slot is last % capacity
    const int64_t newest_slot = last % capacity;
    const int64_t base = last - newest_slot;  // key of slot 0 in the newest lap
    for (int64_t i = 0; i < n; ++i) {
      slots[i] += slots[i] <= newest_slot ? base : base - capacity;
    }
  }
};

}  // namespace reverie
