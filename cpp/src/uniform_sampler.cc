#include "reverie/uniform_sampler.h"

#include <cmath>
#include <unordered_set>

#include "reverie/common.h"
#include "reverie/kernels.h"
#include "reverie/philox.h"

namespace reverie {

void Sampler::Weights(const int64_t*, int64_t, int64_t, float*) const {}

void Sampler::Sample(const SampleRequest& request, int64_t begin, int64_t end, int64_t* slots,
                     float* weights) const {
  Draw(request, begin, end, slots);
  if (weights != nullptr && prioritized()) Weights(slots, begin, end, weights);
}

void Sampler::ValidatePriorities(const double*, int64_t) const {
  throw std::invalid_argument(
      "update_priorities needs a prioritized sampler; this buffer samples uniformly");
}

void Sampler::UpdatePriorities(const int64_t*, const double*, int64_t) {
  throw std::invalid_argument(
      "update_priorities needs a prioritized sampler; this buffer samples uniformly");
}

void UniformSampler::ValidateSample(const SampleRequest& request) const {
  REVERIE_CHECK(request.batch > 0, "batch_size must be > 0, got ", request.batch);
  REVERIE_CHECK(request.size > 0, "cannot sample ", request.batch,
                " items: the buffer is empty (add items first)");
  REVERIE_CHECK(replacement_ || request.batch <= request.size, "cannot sample ", request.batch,
                " distinct items without replacement: the buffer holds only ", request.size);
}

void UniformSampler::Draw(const SampleRequest& request, int64_t begin, int64_t end,
                          int64_t* slots) const {
  const uint64_t range = static_cast<uint64_t>(request.draw_range());
  if (replacement_) {
    for (int64_t i = begin; i < end; ++i) {
      slots[i] = UniformDraw(request.seed, request.call, i, static_cast<int64_t>(range));
    }
    return;
  }
  // Floyd: for j = range-B .. range-1 draw t in [0, j]; take t unless taken, else j.
  std::unordered_set<int64_t> taken;
  taken.reserve(static_cast<size_t>(request.batch) * 2);
  const int64_t first = request.draw_range() - request.batch;
  for (int64_t i = 0; i < request.batch; ++i) {
    const int64_t j = first + i;
    const auto t = static_cast<int64_t>(MulHi64(
        RandomBits(request.seed, request.call, static_cast<uint32_t>(i)), static_cast<uint64_t>(j) + 1));
    const int64_t pick = taken.insert(t).second ? t : j;
    if (pick == j) taken.insert(j);
    slots[i] = pick;
  }
}

bool UniformSampler::Drawable(const SampleRequest& request, int64_t i, int64_t slot,
                              const int64_t* slots) const {
  if (replacement_) return true;
  for (int64_t k = 0; k < request.batch; ++k) {
    if (k != i && slots[k] == slot) return false;
  }
  return true;
}

int64_t UniformSampler::Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                               const int64_t* slots) const {
  const auto slot = static_cast<int64_t>(
      MulHi64(RandomBits(request.seed, request.call, static_cast<uint32_t>(i), attempt),
              static_cast<uint64_t>(request.draw_range())));
  // Rare (a row overwritten under a draw): without replacement a linear scan keeps the
  // batch distinct.
  return Drawable(request, i, slot, slots) ? slot : -1;
}

}  // namespace reverie
