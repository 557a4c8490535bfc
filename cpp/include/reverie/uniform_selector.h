// Uniform sampling over the stored items, with or without replacement ("uniform").
//
// Settings: {"kind": "uniform", "replacement": bool (default true)}.
//
// Two forms, chosen by the table's other parts:
//  - dense (no remover frees slots: FIFO, reservoir, top-k): every slot below the draw range
//    holds an item, so a draw is one multiply, slot = floor(r * range / 2^64);
//  - live set (max_times_sampled frees slots): the slots that hold items are kept in an
//    array `live` (insertion order, a removed slot's place taken by the last entry) with
//    each slot's position, in the table's region; a draw is live[floor(r * count / 2^64)].
//    Inserting and removing are O(1) under the writer lock; draws read the array lock-free
//    (relaxed) and the table checks each drawn slot's stamp.
#pragma once

#include <atomic>
#include <cstdint>

#include "reverie/selector.h"

namespace reverie {

class UniformSelector final : public Selector {
 public:
  // `live_set`: keep the live-slot set (see above) for a table whose slots can be freed.
  UniformSelector(bool replacement, bool live_set, int64_t capacity);

  bool replacement() const { return replacement_; }
  void ValidateSample(const SampleRequest& request) const override;
  // With replacement: slot_i = floor(r_i * n / 2^64) (of the range, or of the live set),
  // r_i the i-th draw of the call. O(B). Without: Floyd's algorithm (a uniform B-subset, in
  // draw order; only as a whole batch, begin = 0 and end = B). O(B) expected.
  void Draw(const SampleRequest& request, int64_t begin, int64_t end,
            int64_t* slots) const override;
  // Uniform over the range (or the live set); without replacement, -1 when it hits another
  // entry of the batch.
  int64_t Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                 const int64_t* slots) const override;
  bool Drawable(const SampleRequest& request, int64_t i, int64_t slot,
                const int64_t* slots) const override;
  // Floyd's algorithm is sequential.
  bool splittable() const override { return replacement_; }
  bool dense() const override { return !live_set_; }
  bool write_locked() const override { return live_set_; }
  // O(n) with a live set (each new slot appended), else nothing.
  void OnInsert(int64_t first, int64_t n) override;
  // O(1): the last live entry takes the removed one's place.
  void OnRemove(int64_t slot) override;
  // O(n), the slots' live-set positions loaded together.
  void OnRemoveMany(const int64_t* slots, int64_t n) override;
  // Slots in the live set (the dense form: -1).
  int64_t live_count() const;

  // Part: the live set's count, array and positions (when kept).
  std::vector<size_t> Sections() const override;
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) override;
  void StateArrays(std::vector<StateArray>* out) override;
  void SaveScalars(ConfigValue* out) const override;
  void Restore(const ConfigValue& scalars, const Ring& slots) override;

 private:
  int64_t Pick(uint64_t random_bits, const SampleRequest& request) const;
  int64_t Population(const SampleRequest& request) const;

  bool replacement_;
  bool live_set_;
  int64_t capacity_;
  std::atomic<int64_t>* count_ = nullptr;  // live entries (writer lock; read relaxed)
  uint64_t* live_ = nullptr;               // [capacity] slots, first `count` valid
  uint64_t* position_ = nullptr;           // [capacity] index in live + 1, 0: not live
};

std::unique_ptr<Selector> MakeUniformSelector(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
