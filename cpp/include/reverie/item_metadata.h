// Item metadata kept by the core, per slot: the caller's version stamped when the item was
// written, how many times it was sampled, and the last sample call that drew it. (Its
// insertion number comes from the writer, which knows insertion order.)
//
// Counting is exact under any number of sampler threads and concurrent overwrites: a slot's
// count is one 64-bit word packing the occupant's generation (low 32 bits) with the count,
// and a sample adds one with a compare-and-swap that succeeds only while the word still
// names the generation the sample read and (with max_times_sampled = N) the count is below
// N. So every sample of an item gets a distinct ordinal 1, 2, ..., at most N, and a sample
// that raced an overwrite is not counted for the new occupant. The last-sample word packs
// the generation's low 16 bits with the call number + 1 (48 bits) the same way, keeping the
// largest call. The version is written once, by the slot's writer, before it publishes.
#pragma once

#include <cstdint>
#include <memory>

#include "reverie/part.h"

namespace reverie {

class ItemMetadata final : public Part {
 public:
  // `columns`: keep version and last-sample columns (metadata=True); the counts are kept
  // always (max_times_sampled needs them). `max_times` 0: unlimited. `gate`: keep the reuse
  // gate (a minimum interval between draws of an item, table.h).
  ItemMetadata(int64_t capacity, bool columns, int64_t max_times, bool gate = false);

  bool columns() const { return columns_; }
  int64_t max_times() const { return max_times_; }

  // The writer of `slot`, holding it (its stamp WRITING): a new item of `generation`,
  // written while the table's version was `version`. Returns how often the item it replaces
  // (of generation `previous`, or -1: none) was sampled (0 when none; always 0 without
  // max_times_sampled, which alone needs it). O(1).
  int64_t OnStore(int64_t slot, int64_t generation, int64_t version, int64_t previous);
  // Counts one sample by call `call` of the item of `generation` in `slot`. Returns how often
  // it had been sampled before (>= 0) and sets *previous_last to its last sample call before
  // (-1: none; columns only), or returns -1, counting nothing, when the slot holds another
  // generation now or the item was sampled max_times already. O(1), lock-free.
  int64_t OnSample(int64_t slot, int64_t generation, uint64_t call, int64_t* previous_last);
  // Starts loading the words OnSample of `slot` will touch (a hint; changes nothing).
  // `counts`: the count and last-call words (OnSample); `version`: the version (a staleness
  // check).
  void Prefetch(int64_t slot, bool counts = true, bool version = false) const {
    if (counts) __builtin_prefetch(sampled_ + slot, 1);
    if (counts && columns_) __builtin_prefetch(last_ + slot, 1);
    if (version && columns_) __builtin_prefetch(version_ + slot, 0);
    if (gate_on_) __builtin_prefetch(gate_ + slot, 1);
  }
  // The reuse gate: claims the item of `generation` in `slot` for a draw at `clock` (a call
  // number or a count of items written) only if clock >= last + interval, `last` the clock
  // of its last claimed draw. So the claimed clocks of an item rise by >= interval in the
  // order of the claims: a slow call whose clock is below the last claim's (it began
  // earlier) is refused too, rather than setting the gate back, which would let a third
  // draw in too soon after the later one. Refused too when the slot holds another
  // generation now (the word carries it: OnStore). Returns whether it was claimed. O(1),
  // lock-free (a compare-and-swap on one word).
  bool Gate(int64_t slot, int64_t generation, uint64_t clock, uint64_t interval);
  // Takes back one count of OnSample (a call that failed after counting). O(1).
  void Unsample(int64_t slot, int64_t generation);
  // Of the item of `generation` in `slot` (0 / -1 when the slot holds another generation).
  int64_t TimesSampled(int64_t slot, int64_t generation) const;
  int64_t LastSampled(int64_t slot, int64_t generation) const;
  int64_t Version(int64_t slot) const;

  std::vector<size_t> Sections() const override;
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) override;
  // "meta.sampled" (uint64 words), and with columns "meta.version", "meta.last_sampled".
  void StateArrays(std::vector<StateArray>* out) override;
  // Checks every stored slot's words name its generation.
  void Restore(const ConfigValue& scalars, const Ring& stamps) override;

 private:
  int64_t capacity_;
  bool columns_;
  int64_t max_times_;
  uint64_t* sampled_ = nullptr;  // [capacity] generation (low 32) << 32 | count
  int64_t* version_ = nullptr;   // [capacity]
  uint64_t* last_ = nullptr;     // [capacity] generation (low 16) << 48 | (call + 1)
  bool gate_on_ = false;
  uint64_t* gate_ = nullptr;     // [capacity] generation (low 16) << 48 | (clock + 1)
};

}  // namespace reverie
