// Uniform sampling over the stored items, with or without replacement.
#pragma once

#include "reverie/sampler.h"

namespace reverie {

class UniformSampler final : public Sampler {
 public:
  explicit UniformSampler(bool replacement) : replacement_(replacement) {}

  bool replacement() const { return replacement_; }
  void ValidateSample(const SampleRequest& request) const override;
  // With replacement: slot_i = floor(r_i * range / 2^64), r_i the i-th draw of the call.
  // O(B). Without: Floyd's algorithm (a uniform B-subset of [0, range), in draw order; only
  // as a whole batch, begin = 0 and end = B). O(B) expected.
  void Draw(const SampleRequest& request, int64_t begin, int64_t end,
            int64_t* slots) const override;
  // Uniform over [0, range); without replacement, -1 when it hits another entry of the batch.
  int64_t Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                 const int64_t* slots) const override;
  bool Drawable(const SampleRequest& request, int64_t i, int64_t slot,
                const int64_t* slots) const override;
  // Floyd's algorithm is sequential.
  bool splittable() const override { return replacement_; }
  void OnInsert(int64_t, int64_t) override {}

 private:
  bool replacement_;
};

}  // namespace reverie
