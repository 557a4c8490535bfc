// Splitting a batch of variable-length sequences into micro-batches of balanced cost (RL on
// language models: a prompt's group of responses, a packed micro-batch per device step).
//
// A sequence of L tokens costs a*L + L^2 (the linear layers' work per token, and attention's
// per pair of tokens: a ~ 6 x hidden size makes the two FLOP counts comparable). Units are
// the sequences, or whole groups (a prompt's G responses) when group ids are given: a unit
// costs the sum of its sequences' costs and is never split.
//
// The split is the Karmarkar-Karp largest differencing method for k subsets: every unit
// starts as a partial partition (its cost in one subset, the others empty); the two partial
// partitions of largest spread (largest minus smallest subset cost) are combined, pairing the
// costliest subset of one with the cheapest of the other, until one partition is left. Ties
// go to the earlier unit, so the split is a function of the input alone.
//
// A token budget (max_tokens > 0) bounds every micro-batch's tokens. A unit of more tokens
// than the budget (oversize) gets a micro-batch of its own, which is the only one allowed
// over the budget; the other units are split over the remaining micro-batches. Without a
// given count (k = 0) the count is the smallest k, from the lower bound up (the tokens over
// the budget, and one per unit of more than half of it), for which the split keeps the
// budget, tried one by one for 64 counts and then in doubling steps; with a given count and
// budget, a split over the budget is an error (ValueError naming the smallest count found
// that fits). Every micro-batch is non-empty (a sequence of length 0 is a unit too).
//
// Cost: O(n log n + n k log k) for n units, memory O(n + k).
#pragma once

#include <cstdint>
#include <vector>

namespace reverie {

struct MicroBatchSplit {
  // Micro-batch b holds the sequences order[starts[b] .. starts[b + 1]) (ascending within
  // each), so that `order` is a permutation of 0 .. n-1.
  std::vector<int64_t> order;
  std::vector<int64_t> starts;  // [k + 1]
  std::vector<double> costs;    // [k] the sum of a*L + L^2 of each micro-batch
  std::vector<int64_t> tokens;  // [k]
};

// lengths[n] >= 0; groups[n] (may be null): sequences of one id form one unit (ids are any
// int64, their sequences need not be adjacent); k >= 0 (0: from the budget, which is then
// required); max_tokens 0: no budget. ValueError for bad input (negative lengths, k > units
// with... see above, k = 0 without a budget).
MicroBatchSplit SplitMicroBatches(const int64_t* lengths, int64_t n, const int64_t* groups, int64_t k,
                                  int64_t max_tokens, double a);

}  // namespace reverie
