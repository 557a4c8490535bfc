// The selector interface: which stored items a batch takes (and with what weights). Reverb's
// ItemSelector is the model: a selector hears of every item that enters or leaves a slot
// (OnInsert / OnRemove) and draws slots; gathering rows is the table's, shared by all.
//
// Built-in selectors: UniformSelector ("uniform", uniform_selector.h) and
// PrioritizedSelector ("prioritized", prioritized_selector.h). A new one is a file that
// implements this interface and one registration line in parts.cc.
#pragma once

#include <cstdint>
#include <vector>

#include "reverie/part.h"

namespace reverie {

// What one sample call draws from. `call` numbers the table's sample calls; together with
// `seed` it keys the counter-based generator (philox.h), so the draws are reproducible.
struct SampleRequest {
  uint64_t seed = 0;
  uint64_t call = 0;
  int64_t size = 0;   // items stored and committed (for validation)
  int64_t batch = 0;  // items wanted
  int64_t range = 0;  // dense draws come from slots [0, range) (claimed slots, >= size); 0: size
  int64_t claimed = 0;  // items claimed by writers when the call began (newest: claimed - 1)

  int64_t draw_range() const { return range > 0 ? range : size; }
};

// Thread-safety (all selectors): ValidateSample, Draw, Redraw, Drawable, DrawWeight and Weights
// may run at any time, concurrently with each other and with the single writer that the
// table lets into OnInsert / OnRemove / UpdatePriorities / Repair at a time (under its writer
// lock, when write_locked() says so; else OnInsert runs lock-free and does nothing shared).
// A draw that meets a concurrent change may return -1 (nothing valid was hit), or a slot
// that no longer holds an item; the table checks every drawn slot's stamp and redraws.
class Selector : public Part {
 public:
  // Throws ValueError when `request` cannot be served (empty table, too large a batch
  // without replacement, all priorities zero). Does not draw.
  virtual void ValidateSample(const SampleRequest& request) const = 0;
  // Writes the slots drawn for positions [begin, end) of the batch into slots[begin..end)
  // (-1 where a race left nothing valid). Draw i depends only on (seed, call, i), so a batch
  // may be filled in pieces by several threads when splittable(). Precondition:
  // ValidateSample(request) passed.
  virtual void Draw(const SampleRequest& request, int64_t begin, int64_t end,
                    int64_t* slots) const = 0;
  // Another draw for position i (attempt >= 1), when the first hit a slot that was being
  // written: a function of (seed, call, i, attempt). `slots` is the batch so far (selectors
  // without replacement avoid its other entries). May return -1.
  virtual int64_t Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                         const int64_t* slots) const = 0;
  // Whether `slot` may be taken for position i (used when redraws keep failing and the table
  // falls back to probing slot by slot): a positive priority; for a batch without
  // replacement, not another entry of `slots`.
  virtual bool Drawable(const SampleRequest& request, int64_t i, int64_t slot,
                        const int64_t* slots) const = 0;
  // The relative chance that a draw lands on `slot`: 1 for uniform sampling, the slot's leaf
  // (in tree units) for prioritized. For callers that draw among a list of candidates.
  virtual uint64_t DrawWeight(int64_t /*slot*/) const { return 1; }
  // Importance weights of the final slots [begin, end) (prioritized selectors only).
  virtual void Weights(const int64_t* slots, int64_t begin, int64_t end, float* weights) const;
  // Draw + Weights over [begin, end), for callers without concurrent writers (tests).
  void Sample(const SampleRequest& request, int64_t begin, int64_t end, int64_t* slots,
              float* weights) const;
  // Whether Draw may fill a batch in independent pieces.
  virtual bool splittable() const { return true; }
  // Whether draws come from every slot below the draw range (a FIFO ring without holes):
  // then a draw needs no stamp to be valid when no write is in flight (the table's quiet
  // path, ring.h). False when the selector keeps its own set of live slots.
  virtual bool dense() const { return true; }
  // Whether OnInsert / OnRemove change shared state, so that the table runs them (and the
  // row's stamp change) under its writer lock.
  virtual bool write_locked() const { return false; }
  // Slots [first, first + n) (n <= capacity, wrapping at the capacity) now hold new items.
  virtual void OnInsert(int64_t first, int64_t n) = 0;
  // `slot` no longer holds an item (a remover took it; its stamp says removed). Writer lock
  // held. Default: nothing (the stamp alone keeps it from being drawn).
  virtual void OnRemove(int64_t /*slot*/) {}
  // The same for n slots at once (a batch's used-up items); default: one by one.
  virtual void OnRemoveMany(const int64_t* slots, int64_t n) {
    for (int64_t i = 0; i < n; ++i) OnRemove(slots[i]);
  }
  // Changes that invalidate draws in flight (a rescale or rebuild of the tree) bump this;
  // it is odd while one runs. A sample seeing it change starts over.
  virtual uint64_t epoch() const { return 0; }
  // Restores internal consistency after a writer died holding the writer lock.
  virtual void Repair() {}

  // Whether draws follow the FIFO writer's insertion order (recency): other writers refused.
  virtual bool needs_fifo() const { return false; }
  // Whether the selector keeps priorities (and returns importance weights).
  virtual bool prioritized() const { return false; }
  // Throws ValueError unless every priority is finite and >= 0 (names the first bad one).
  virtual void ValidatePriorities(const double* priorities, int64_t n) const;
  // slots[k] gets priorities[k], in order (a repeated slot keeps the last). Precondition:
  // ValidatePriorities passed; every slot is stored. Writer lock held.
  virtual void UpdatePriorities(const int64_t* slots, const double* priorities, int64_t n);
  // The value a score index ordering by priority sees for `slot` (its q), or 0.
  virtual double ScoreOf(int64_t /*slot*/) const { return 0.0; }
  // The smallest positive priority q held (0: none, or not prioritized), and the importance
  // exponent beta: for weights computed across several tables (partitioned_table.h).
  virtual double MinPriority() const { return 0.0; }
  virtual double beta() const { return 0.0; }
};

}  // namespace reverie
