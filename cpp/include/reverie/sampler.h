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
  int64_t size = 0;   // items stored, in slots [0, size)
  int64_t batch = 0;  // items wanted
};

// Thread-safety (all samplers): ReplayBuffer serialises OnInsert / UpdatePriorities /
// state changes against everything else; Sample and ValidateSample may run concurrently
// with each other.
class Sampler {
 public:
  virtual ~Sampler() = default;

  // Throws ValueError when `request` cannot be served (empty buffer, too large a batch
  // without replacement, all priorities zero). Does not draw.
  virtual void ValidateSample(const SampleRequest& request) const = 0;
  // Writes the slots [begin, end) of the request's batch into slots[begin..end) (and their
  // importance weights when `weights` is not null and the sampler has them). Draw i depends
  // only on (seed, call, i), so a batch may be filled in pieces by several threads when
  // splittable(). Precondition: ValidateSample(request) passed.
  virtual void Sample(const SampleRequest& request, int64_t begin, int64_t end, int64_t* slots,
                      float* weights) const = 0;
  // Whether Sample may fill a batch in independent pieces.
  virtual bool splittable() const { return true; }
  // Slots [first, first + n) (n <= capacity, wrapping at the capacity) now hold new items.
  virtual void OnInsert(int64_t first, int64_t n) = 0;

  // Whether the sampler keeps priorities (and returns importance weights).
  virtual bool prioritized() const { return false; }
  // Throws ValueError unless every priority is finite and >= 0 (names the first bad one).
  virtual void ValidatePriorities(const double* priorities, int64_t n) const;
  // slots[k] gets priorities[k], in order (a repeated slot keeps the last). Precondition:
  // ValidatePriorities passed; every slot is stored.
  virtual void UpdatePriorities(const int64_t* slots, const double* priorities, int64_t n);
};

}  // namespace reverie
