// The common part of the writers that decide under the table's writer lock (reservoir,
// keep-top-k): each slot's insertion number (so keys map to insertion order, for metadata
// and exports), the free slots (never written, or freed by a remover), and counters of the
// items offered and dropped. All in the table's region; every method runs under the writer
// lock (or with the table not in use: Bind, Restore).
//
// A derived writer decides one offered item at a time (Decide); this base walks the batch,
// hands it the next free slot, and records what was placed.
//
// Pins (writers made with pins: the locked FIFO, the reservoir): one byte per slot and a
// count in the region, and a flag that pins every item placed while it is set (PinAll). A
// derived writer never returns a pinned slot from Decide; it learns of pin changes through
// OnPins.
#pragma once

#include <atomic>
#include <string>

#include "reverie/writer.h"

namespace reverie {

class LockedWriter : public Writer {
 public:
  // Sections: the derived writer's own (DerivedSections) after the insertion numbers and the
  // free list.
  std::vector<size_t> Sections() const final;
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) final;
  void StateArrays(std::vector<StateArray>* out) override;
  void SaveScalars(ConfigValue* out) const override;
  void Restore(const ConfigValue& scalars, const Ring& stamps) override;

  int64_t Place(const WriteBatch& batch, const Ring& stamps, int64_t first_insertion,
                int64_t* slots) final;
  void CheckBatch(const WriteBatch& batch) const final { Check(batch); }
  void OnRemove(int64_t slot) override;
  bool pins() const final { return pins_enabled_; }
  int64_t Pin(const int64_t* slots, int64_t n, bool pin) final;
  int64_t PinAll(bool pin, const Ring& stamps) final;
  bool pinned(int64_t slot) const final { return pins_ != nullptr && pins_[slot] != 0; }
  // Read without the lock (buf.pinned): the count is kept with relaxed atomics.
  int64_t pinned_count() const final {
    return pins_ != nullptr ? __atomic_load_n(&counters_->pinned, __ATOMIC_RELAXED) : 0;
  }
  bool pins_new() const final { return pins_ != nullptr && counters_->pin_new != 0; }
  int64_t held() const override { return sizes_->held.load(std::memory_order_acquire); }
  int64_t filled() const override { return sizes_->filled.load(std::memory_order_acquire); }
  void InsertionsOf(const int64_t* keys, int64_t* out, int64_t n, const Ring& stamps) const override;
  bool WasWritten(int64_t key, const Ring& stamps) const override;
  // Sorted by insertion number, under the writer lock (Table::StoredKeys takes it).
  // O(capacity log capacity).
  std::vector<int64_t> StoredKeys(const Ring& stamps) const override;

 protected:
  LockedWriter(std::string name, int64_t capacity, bool pins = false)
      : name_(std::move(name)), capacity_(capacity), pins_enabled_(pins) {}
  // Checks the whole batch before anything changes (ValueError); default: nothing.
  virtual void Check(const WriteBatch& /*batch*/) const {}
  // Offered item i (input row batch.Row(i)), the `offer`-th item ever offered to this writer:
  // returns the slot it goes to, or -1 to drop it. `free_slot` is the slot a new item takes
  // when the table has room (-1: full); returning it takes it. `insertion` is the number
  // it gets if placed. Updates the derived writer's own state.
  virtual int64_t Decide(const WriteBatch& batch, int64_t i, int64_t offer, int64_t free_slot,
                         int64_t insertion) = 0;
  // After a placed item's slot, insertion number and pin (while PinAll is set) are recorded.
  virtual void Placed(int64_t /*slot*/) {}
  // After the pins of `slots` changed to `pin` (each slot holds an item; no repeats).
  virtual void OnPins(const std::vector<int64_t>& /*slots*/, bool /*pin*/) {}
  virtual std::vector<size_t> DerivedSections() const { return {}; }
  virtual void BindDerived(const std::vector<uint8_t*>& /*sections*/, bool /*fresh*/) {}
  // Called by Restore after the base's own state is checked.
  virtual void RestoreDerived(const ConfigValue& /*scalars*/, const Ring& /*stamps*/) {}

  int64_t capacity() const { return capacity_; }
  int64_t insertion(int64_t slot) const { return insertion_[slot]; }
  // Slots never written or freed, that the next offered items take first.
  int64_t free_slots() const { return capacity_ - counters_->filled + counters_->freed; }
  const std::string& name() const { return name_; }

 private:
  // The next free slot (-1: none): never-written slots in order, then freed ones, the most
  // recently freed first. O(1).
  int64_t NextFree() const;
  void TakeFree(int64_t slot);

  // Counters, one cache line in the region (writer lock; read by anyone).
  struct Counters {
    int64_t offers;    // items ever offered (the reservoir's n)
    int64_t rejected;  // items ever dropped by this writer
    int64_t filled;    // slots [0, filled) have been written at least once
    int64_t freed;     // entries on the free stack
    int64_t pinned;    // slots pinned (pins only)
    int64_t pin_new;   // 1: items placed are pinned (PinAll(true)); pins only
  };
  // Copies of the occupancy for samplers, which read them without the lock (an item that
  // replaces another in its slot, as an archive's better entry does, changes neither).
  struct Sizes {
    std::atomic<int64_t> held;
    std::atomic<int64_t> filled;
  };
  std::string name_;
  int64_t capacity_;
  bool pins_enabled_;
  Counters* counters_ = nullptr;
  Sizes* sizes_ = nullptr;
  int64_t* insertion_ = nullptr;  // [capacity] the occupant's insertion number
  int64_t* free_ = nullptr;       // [capacity] freed slots, a stack of `freed` entries
  uint8_t* pins_ = nullptr;       // [capacity] 1: pinned (pins only; else null)
};

}  // namespace reverie
