// The reservoir writer ("reservoir"): Algorithm R (Vitter, "Random sampling with a
// reservoir", 1985) over every item ever offered, as continual learning's reservoir
// rehearsal uses it.
//
// Settings: {"kind": "reservoir"}. The n-th offered item (n from 1) is kept while the table
// has room (n <= capacity k); after that it replaces slot j with j = floor(r_n * n / 2^64)
// when j < k, else it is dropped. So after n offers every offered item is held with
// probability exactly k/n (up to the 2^-64 granularity of r_n), pairs with k(k-1)/(n(n-1)).
// r_n is the counter-based generator keyed by the table's seed and n alone (a stream of its
// own, apart from sampling's), so a batch of offers decides exactly as the same offers one
// by one, on any machine; the offer count n is state (checkpoints keep it).
//
// Pins ({"pins": true}): an offer whose slot j is pinned is dropped, so with P items pinned
// the other k - P slots hold a reservoir of the stream: an offered item is in them with
// probability (k - P) / n, replacing a uniformly drawn unpinned item (Algorithm R of size
// k - P, as j is uniform over [0, n)).
//
// Cost: O(1) per offered item (one 64-bit draw), under the writer lock. No remover frees a
// reservoir's slots (max_times_sampled is refused: the probability k/n would not hold).
#pragma once

#include "reverie/locked_writer.h"

namespace reverie {

class ReservoirWriter final : public LockedWriter {
 public:
  ReservoirWriter(int64_t capacity, uint64_t seed, bool pins = false)
      : LockedWriter("reservoir", capacity, pins), seed_(seed) {}

  // The slot offer n (from 0) replaces once the reservoir is full (n >= capacity), or -1.
  // Pure: a function of the seed and n. O(1).
  static int64_t Replaces(uint64_t seed, int64_t offer, int64_t capacity);

 protected:
  int64_t Decide(const WriteBatch& batch, int64_t i, int64_t offer, int64_t free_slot,
                 int64_t insertion) override;

 private:
  uint64_t seed_;
};

std::unique_ptr<Writer> MakeReservoirWriter(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
