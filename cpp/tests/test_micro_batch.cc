// Tests of the micro-batch splitter (micro_batch.h): a partition of the sequences, groups
// whole, the token budget kept but for an oversize unit alone, the smallest count under a
// budget, determinism, and refusals.
#include <algorithm>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness.h"
#include "reverie/micro_batch.h"

using namespace reverie;

TEST(MicroBatchesPartitionKeepGroupsAndBudget) {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 200; ++round) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 80);
    std::vector<int64_t> len(static_cast<size_t>(n)), group(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      len[static_cast<size_t>(i)] = static_cast<int64_t>(rng() % 2000);
      group[static_cast<size_t>(i)] = static_cast<int64_t>(rng() % 7);
    }
    const int64_t budget = 1500 + static_cast<int64_t>(rng() % 6000);
    const bool grouped = round % 2 == 1;
    const MicroBatchSplit s = SplitMicroBatches(len.data(), n, grouped ? group.data() : nullptr, 0, budget, 64.0);
    std::vector<int64_t> seen = s.order;
    std::sort(seen.begin(), seen.end());
    for (int64_t i = 0; i < n; ++i) CHECK(seen[static_cast<size_t>(i)] == i);
    CHECK(static_cast<int64_t>(s.starts.size()) == static_cast<int64_t>(s.tokens.size()) + 1);
    std::vector<int64_t> batch_of_group(7, -1);
    for (size_t b = 0; b + 1 < s.starts.size(); ++b) {
      int64_t tokens = 0;
      std::vector<int64_t> units;
      for (int64_t p = s.starts[b]; p < s.starts[b + 1]; ++p) {
        const int64_t i = s.order[static_cast<size_t>(p)];
        tokens += len[static_cast<size_t>(i)];
        const int64_t unit = grouped ? group[static_cast<size_t>(i)] : i;
        if (std::find(units.begin(), units.end(), unit) == units.end()) units.push_back(unit);
        if (grouped) {
          int64_t& at = batch_of_group[static_cast<size_t>(unit)];
          CHECK(at < 0 || at == static_cast<int64_t>(b));
          at = static_cast<int64_t>(b);
        }
      }
      CHECK(tokens == s.tokens[b]);
      CHECK(tokens <= budget || units.size() == 1);  // over the budget: one unit alone
    }
    const MicroBatchSplit again = SplitMicroBatches(len.data(), n, grouped ? group.data() : nullptr, 0, budget, 64.0);
    CHECK(again.order == s.order && again.starts == s.starts);
  }
}

TEST(MicroBatchesRefuseWhatTheyCannotDo) {
  const std::vector<int64_t> len = {10, 20, 30};
  bool refused = false;
  try {
    SplitMicroBatches(len.data(), 3, nullptr, 4, 0, 1.0);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused);
  refused = false;
  try {
    SplitMicroBatches(len.data(), 3, nullptr, 1, 40, 1.0);  // 60 tokens in one batch of budget 40
  } catch (const std::invalid_argument& e) {
    refused = std::string(e.what()).find("smallest count that does is 2") != std::string::npos;
  }
  CHECK(refused);
  refused = false;
  const std::vector<int64_t> over = {2, 2, 2};  // all over the budget: 3 micro-batches at least
  try {
    SplitMicroBatches(over.data(), 3, nullptr, 2, 1, 1.0);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused);
  CHECK(SplitMicroBatches(over.data(), 3, nullptr, 3, 1, 1.0).tokens.size() == 3);
  CHECK(SplitMicroBatches(over.data(), 3, nullptr, 0, 1, 1.0).tokens.size() == 3);
  const MicroBatchSplit s = SplitMicroBatches(len.data(), 3, nullptr, 2, 0, 1.0);
  CHECK(s.tokens.size() == 2 && std::max(s.tokens[0], s.tokens[1]) == 30);
}
