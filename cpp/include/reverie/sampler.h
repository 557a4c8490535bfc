// The sampler interface: which stored items a batch takes (and with what weights).
#pragma once

#include <cstdint>
#include <vector>

namespace reverie {

// What one sample call draws from. `call` numbers the buffer's sample calls; together with
// `seed` it keys the counter-based generator (philox.h), so the draws are reproducible.
struct SampleRequest {
  uint64_t seed = 0;
  uint64_t call = 0;
  int64_t size = 0;   // items stored and committed (for validation)
  int64_t batch = 0;  // items wanted
  int64_t range = 0;  // draws come from slots [0, range) (claimed slots, >= size); 0: size

  int64_t draw_range() const { return range > 0 ? range : size; }
};

// Thread-safety (all samplers): ValidateSample, Draw, Redraw and Weights may run at any time,
// concurrently with each other and with the single writer that the buffer lets into
// OnInsert / UpdatePriorities / Repair at a time. A draw that meets a concurrent change may
// return -1 (nothing valid was hit); the buffer then redraws.
class Sampler {
 public:
  virtual ~Sampler() = default;

  // Throws ValueError when `request` cannot be served (empty buffer, too large a batch
  // without replacement, all priorities zero). Does not draw.
  virtual void ValidateSample(const SampleRequest& request) const = 0;
  // Writes the slots drawn for positions [begin, end) of the batch into slots[begin..end)
  // (-1 where a race left nothing valid). Draw i depends only on (seed, call, i), so a batch
  // may be filled in pieces by several threads when splittable(). Precondition:
  // ValidateSample(request) passed.
  virtual void Draw(const SampleRequest& request, int64_t begin, int64_t end,
                    int64_t* slots) const = 0;
  // Another draw for position i (attempt >= 1), when the first hit a slot that was being
  // written: a function of (seed, call, i, attempt). `slots` is the batch so far (samplers
  // without replacement avoid its other entries). May return -1.
  virtual int64_t Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                         const int64_t* slots) const = 0;
  // Whether `slot` may be taken for position i (used when redraws keep failing and the buffer
  // falls back to probing slot by slot): a positive priority; for a batch without
  // replacement, not another entry of `slots`.
  virtual bool Drawable(const SampleRequest& request, int64_t i, int64_t slot,
                        const int64_t* slots) const = 0;
  // The relative chance that a draw lands on `slot`: 1 for uniform sampling, the slot's leaf
  // (in tree units) for prioritized. For samplers that draw among a list of candidates.
  virtual uint64_t DrawWeight(int64_t /*slot*/) const { return 1; }
  // Importance weights of the final slots [begin, end) (prioritized samplers only).
  virtual void Weights(const int64_t* slots, int64_t begin, int64_t end, float* weights) const;
  // Draw + Weights over [begin, end), for callers without concurrent writers (tests).
  void Sample(const SampleRequest& request, int64_t begin, int64_t end, int64_t* slots,
              float* weights) const;
  // Whether Draw may fill a batch in independent pieces.
  virtual bool splittable() const { return true; }
  // Slots [first, first + n) (n <= capacity, wrapping at the capacity) now hold new items.
  virtual void OnInsert(int64_t first, int64_t n) = 0;
  // Changes that invalidate draws in flight (a rescale or rebuild of the tree) bump this;
  // it is odd while one runs. A sample seeing it change starts over.
  virtual uint64_t epoch() const { return 0; }
  // Restores internal consistency after a writer died holding the writer lock.
  virtual void Repair() {}

  // Whether the sampler keeps priorities (and returns importance weights).
  virtual bool prioritized() const { return false; }
  // Throws ValueError unless every priority is finite and >= 0 (names the first bad one).
  virtual void ValidatePriorities(const double* priorities, int64_t n) const;
  // slots[k] gets priorities[k], in order (a repeated slot keeps the last). Precondition:
  // ValidatePriorities passed; every slot is stored.
  virtual void UpdatePriorities(const int64_t* slots, const double* priorities, int64_t n);
};

}  // namespace reverie
