#include "reverie/sum_tree.h"

#include <algorithm>

#include "reverie/thread_pool.h"

namespace reverie {
namespace {

int64_t RoundUpToFanout(int64_t n) { return (n + kTreeFanout - 1) / kTreeFanout * kTreeFanout; }

}  // namespace

TreeLayout MakeTreeLayout(int64_t leaves) {
  REVERIE_CHECK(leaves >= 1, "a tree needs at least one leaf, got ", leaves);
  // Count the levels bottom-up, then lay them out top-down.
  int64_t counts[kTreeMaxLevels];
  int levels = 0;
  int64_t n = leaves;
  counts[levels++] = n;
  do {
    n = (n + kTreeFanout - 1) / kTreeFanout;
    counts[levels++] = n;
  } while (n > 1);
  TreeLayout layout;
  layout.depth = levels - 1;
  int64_t offset = 0;
  for (int level = 0; level < levels; ++level) {
    layout.count[level] = counts[levels - 1 - level];
    layout.offset[level] = offset;
    offset += RoundUpToFanout(layout.count[level]);
  }
  layout.total_nodes = offset;
  return layout;
}

size_t SumTree::SumsBytes(int64_t leaves) {
  return static_cast<size_t>(MakeTreeLayout(leaves).total_nodes) * sizeof(uint64_t);
}

size_t SumTree::MinsBytes(int64_t leaves) {
  const TreeLayout layout = MakeTreeLayout(leaves);
  return static_cast<size_t>(layout.offset[layout.depth]) * sizeof(uint64_t);
}

SumTree::SumTree(int64_t leaves)
    : layout_(MakeTreeLayout(leaves)),
      owned_sums_(SumsBytes(leaves)),
      owned_mins_(MinsBytes(leaves)),
      sums_(owned_sums_.as<uint64_t>()),
      mins_(owned_mins_.as<uint64_t>()) {}

SumTree::SumTree(int64_t leaves, uint64_t* sums, uint64_t* mins)
    : layout_(MakeTreeLayout(leaves)), sums_(sums), mins_(mins) {}

void SumTree::RefreshRange(int64_t first_leaf, int64_t last_leaf) {
  int64_t lo = first_leaf, hi = last_leaf;
  for (int level = layout_.depth - 1; level >= 0; --level) {
    lo /= kTreeFanout;
    hi /= kTreeFanout;
    for (int64_t node = lo; node <= hi; ++node) {
      RebuildNode(mutable_sums(), mutable_mins(), layout_, level, node);
    }
  }
}

void SumTree::FillRange(int64_t first, int64_t n, uint64_t units) {
  if (n <= 0) return;
  uint64_t* leaf = mutable_sums() + layout_.offset[layout_.depth];
  for (int64_t i = first; i < first + n; ++i) StoreRelaxed(leaf + i, units);
  RefreshRange(first, first + n - 1);
}

void SumTree::SetLeavesIn(const int64_t* index, const UnitsOf& units_of, int64_t n, int64_t lo,
                          int64_t hi, int top) {
  uint64_t* s = mutable_sums();
  uint64_t* m = mutable_mins();
  const int depth = layout_.depth;
  // First bring in, for every update, the lines its path will touch on the large levels
  // (leaf, parent sum, parent min, grandparent sum), so the paths miss together rather than
  // one after the other; the small upper levels stay cached anyway.
  for (int64_t k = 0; k < n; ++k) {
    const int64_t leaf = index[k];
    if (leaf < lo || leaf >= hi) continue;
    __builtin_prefetch(s + layout_.offset[depth] + leaf, 1);
    __builtin_prefetch(s + layout_.offset[depth - 1] + leaf / kTreeFanout, 1);
    __builtin_prefetch(m + layout_.offset[depth - 1] + leaf / kTreeFanout, 1);
    if (depth >= 2) {
      __builtin_prefetch(s + layout_.offset[depth - 2] + leaf / (kTreeFanout * kTreeFanout), 1);
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    if (index[k] < lo || index[k] >= hi) continue;
    SetLeafSum(s, layout_, index[k], units_of(k), top);
    RefreshMinPath(s, m, layout_, index[k], top);
  }
}

void SumTree::SetLeaves(const int64_t* index, const uint64_t* units, int64_t n) {
  SetLeaves(index, [units](int64_t k) { return units[k]; }, n);
}

void SumTree::SetLeaves(const int64_t* index, const UnitsOf& units_of, int64_t n) {
  constexpr int64_t kParallelUpdates = 128;
  const int depth = layout_.depth;
  if (n < kParallelUpdates || depth < 2 || layout_.count[1] < 2) {
    SetLeavesIn(index, units_of, n, 0, leaves(), 0);
    return;
  }
  // Two halves of the level-1 nodes; each thread updates levels 1 .. depth of its half.
  int64_t leaves_per_node1 = 1;
  for (int level = 1; level < depth; ++level) leaves_per_node1 *= kTreeFanout;
  const int64_t split = (layout_.count[1] + 1) / 2 * leaves_per_node1;
  ThreadPool::Shared().ParallelFor(2, 2, [&](int64_t begin, int64_t end) {
    for (int64_t half = begin; half < end; ++half) {
      SetLeavesIn(index, units_of, n, half == 0 ? 0 : split, half == 0 ? split : leaves(), 1);
    }
  });
  // The root from its children: exact, whatever order the halves ran in.
  uint64_t* s = mutable_sums();
  const uint64_t* children = s + layout_.offset[1];
  uint64_t total = 0;
  for (int k = 0; k < kTreeFanout; ++k) total += LoadRelaxed(children + k);
  StoreRelaxed(s, total);
  StoreRelaxed(mutable_mins(), MinPositive(mins() + layout_.offset[1]));
}

void SumTree::DescendBatch(const uint64_t* u, int64_t* leaf, int64_t n) const {
  constexpr int64_t kBlock = 256;  // queries in flight together (their remainders stay in L1)
  const uint64_t* s = sums();
  uint64_t rest[kBlock];
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t count = std::min(kBlock, n - begin);
    for (int64_t q = 0; q < count; ++q) {
      rest[q] = u[begin + q];
      leaf[begin + q] = 0;
    }
    for (int level = 0; level < layout_.depth; ++level) {
      const uint64_t* next = level + 2 <= layout_.depth ? s + layout_.offset[level + 2] : nullptr;
      for (int64_t q = 0; q < count; ++q) {
        const int64_t node = DescendOneLevel(s, layout_, level, leaf[begin + q], &rest[q]);
        leaf[begin + q] = node;
        if (next != nullptr) __builtin_prefetch(next + node * kTreeFanout);
      }
    }
  }
}

void SumTree::ShiftLeavesRight(int shift, int64_t first, std::atomic<int64_t>* progress) {
  uint64_t* leaf = mutable_sums() + layout_.offset[layout_.depth];
  const int64_t n = leaves();
  for (int64_t i = first; i < n; ++i) {
    StoreRelaxed(leaf + i, ShiftedLeaf(LoadRelaxed(leaf + i), shift));
    if (progress != nullptr) progress->store(i + 1, std::memory_order_release);
  }
  Rebuild();
}

void SumTree::AssignLeaves(const uint64_t* units) {
  uint64_t* leaf = mutable_sums() + layout_.offset[layout_.depth];
  for (int64_t i = 0; i < leaves(); ++i) StoreRelaxed(leaf + i, units[i]);
  Rebuild();
}

void SumTree::Rebuild() {
  // Padding leaves are zero, so refreshing every real leaf's range covers the tree.
  RefreshRange(0, leaves() - 1);
}

}  // namespace reverie
