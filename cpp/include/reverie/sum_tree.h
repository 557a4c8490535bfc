// A wide sum-tree and min-tree of 64-bit fixed-point priorities.
//
// Number format (decided by measurement, below): every leaf holds an
// unsigned 64-bit count of priority units. Integer addition is exact and associative, so
//  - a priority change is applied as a delta along the path with no rounding at all: the
//    tree never drifts, and after any sequence of updates it is bit-identical to a rebuild
//    from its leaves (Rebuild() exists for restored state, not for drift);
//  - a later concurrent or GPU build may apply the deltas with atomic adds in any order and
//    still get the same, deterministic sums;
//  - a positive priority rounds up to at least one unit, so it always keeps a non-empty
//    interval of the total and stays samplable; a zero leaf has an empty interval and is
//    never sampled (PickChild below).
// Measured (`reverie_tests --bench-tree`, 1M leaves, best of 15 x 200 rounds, this project's
// 2-core EPYC, all on one thread): sample(256) + update(256) took 16.6 us in this format,
// min-tree included, against 21-25 us for the same 8-wide interleaved descent and delta
// update over float64 sums without any min-tree. Same node width, faster, and exact.
// The scale from real priorities to units lives in PrioritizedSelector.
//
// Layout: level 0 is the root; level `depth` holds the leaves; node j of level d has the
// children 8j .. 8j+7 on level d+1. Every level starts on a 64-byte boundary and is padded
// with zeros to a multiple of 8 nodes, so a node's children are one aligned cache line.
// The min-tree shares the leaves and stores only the internal levels; a min of 0 means
// "no positive leaf below".
//
// Concurrency: one writer at a time (the buffer's writer lock), any number of lock-free
// readers. Every node is read and written with relaxed atomic accesses (atomics.h), so a
// descent running during an update is well defined; it may see a half-applied path and end
// on a padding leaf (index >= leaves) or a zero leaf, which callers reject and redraw.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "reverie/aligned_buffer.h"
#include "reverie/atomics.h"
#include "reverie/common.h"

namespace reverie {

inline constexpr int kTreeFanout = 8;
inline constexpr int kTreeMaxLevels = 24;  // 8^23 leaves is far beyond any capacity

// Where each level of a tree lives in its node array. Plain data: device code can take it
// by value.
struct TreeLayout {
  int32_t depth = 0;                   // number of levels below the root (>= 1)
  int64_t offset[kTreeMaxLevels] = {};  // first node of each level in the array
  int64_t count[kTreeMaxLevels] = {};   // real nodes of each level (padding not counted)
  int64_t total_nodes = 0;             // array length, padding included
};

// Builds the layout for `leaves` leaves (>= 1). O(log leaves).
TreeLayout MakeTreeLayout(int64_t leaves);

// ---- Kernels shared by the CPU build and a later CUDA build --------------------------

// Picks the child of an 8-child node whose prefix interval holds *u and makes *u relative
// to that child. Precondition: *u < sum of the children. Branch-free. A zero child has an
// empty interval and is never picked. O(1).
REVERIE_HD int PickChild(const uint64_t* children, uint64_t* u) {
  uint64_t prefix = 0, below = 0;
  int child = 0;
  for (int k = 0; k < kTreeFanout - 1; ++k) {
    const uint64_t c = LoadRelaxed(children + k);
    prefix += c;
    const uint64_t passed = static_cast<uint64_t>(*u >= prefix);
    child += static_cast<int>(passed);
    below += c & (0 - passed);
  }
  *u -= below;
  return child;
}

// One step of a descent: from `node` on level `level` to its child on level + 1. O(1).
// The child is clamped to the level's real nodes: only a descent racing an update (whose
// sums do not yet add up) could step onto padding, and it must stay inside the arrays.
REVERIE_HD int64_t DescendOneLevel(const uint64_t* sums, const TreeLayout& layout, int level,
                                   int64_t node, uint64_t* u) {
  const uint64_t* children = sums + layout.offset[level + 1] + node * kTreeFanout;
  const int64_t child = node * kTreeFanout + PickChild(children, u);
  const int64_t last = layout.count[level + 1] - 1;
  return child < last ? child : last;
}

// The whole descent of one query: the leaf whose prefix interval holds u.
// Precondition: u < sums[root]. O(depth).
REVERIE_HD int64_t Descend(const uint64_t* sums, const TreeLayout& layout, uint64_t u) {
  int64_t node = 0;
  for (int level = 0; level < layout.depth; ++level) {
    node = DescendOneLevel(sums, layout, level, node, &u);
  }
  return node;
}

// Sets leaf `leaf` to `units` and adds the (wrapping, hence exact) difference to every
// ancestor on levels top .. depth-1 (top = 0: up to the root). Returns the difference, for
// a caller that settles the levels above `top` itself. O(depth).
REVERIE_HD uint64_t SetLeafSum(uint64_t* sums, const TreeLayout& layout, int64_t leaf,
                               uint64_t units, int top = 0) {
  uint64_t* slot = sums + layout.offset[layout.depth] + leaf;
  const uint64_t delta = units - LoadRelaxed(slot);  // modulo 2^64: adding it back is exact
  StoreRelaxed(slot, units);
  int64_t node = leaf;
  for (int level = layout.depth - 1; level >= top; --level) {
    node /= kTreeFanout;
    uint64_t* sum = sums + layout.offset[level] + node;
    StoreRelaxed(sum, LoadRelaxed(sum) + delta);  // one writer: load + store, no RMW needed
  }
  return delta;
}

// Min of the positive values among 8 children (0 if none). O(1).
REVERIE_HD uint64_t MinPositive(const uint64_t* children) {
  uint64_t best = ~uint64_t{0};
  for (int k = 0; k < kTreeFanout; ++k) {
    const uint64_t c = LoadRelaxed(children + k);
    const uint64_t v = c == 0 ? ~uint64_t{0} : c;
    best = v < best ? v : best;
  }
  return best == ~uint64_t{0} ? 0 : best;
}

// Recomputes the min-tree above leaf `leaf` after it changed, on levels top .. depth-1,
// stopping as soon as a node's value is unchanged (its ancestors are then unchanged too).
// O(depth), usually O(1).
REVERIE_HD void RefreshMinPath(const uint64_t* sums, uint64_t* mins, const TreeLayout& layout,
                               int64_t leaf, int top = 0) {
  int64_t node = leaf / kTreeFanout;
  const uint64_t* children = sums + layout.offset[layout.depth] + node * kTreeFanout;
  for (int level = layout.depth - 1; level >= top; --level) {
    const uint64_t value = MinPositive(children);
    uint64_t* target = mins + layout.offset[level] + node;
    if (LoadRelaxed(target) == value) return;
    StoreRelaxed(target, value);
    if (level == top) return;
    node /= kTreeFanout;
    children = mins + layout.offset[level] + node * kTreeFanout;
  }
}

// Node `node` of level `level` (< depth) from its children: the sum of their sums and the
// smallest positive among them (their mins, or their values for the level above the leaves).
// Exact. O(1).
REVERIE_HD void RebuildNode(uint64_t* sums, uint64_t* mins, const TreeLayout& layout, int level,
                            int64_t node) {
  const uint64_t* children = sums + layout.offset[level + 1] + node * kTreeFanout;
  uint64_t total = 0;
  for (int k = 0; k < kTreeFanout; ++k) total += LoadRelaxed(children + k);
  StoreRelaxed(sums + layout.offset[level] + node, total);
  const uint64_t* child_mins =
      level + 1 == layout.depth ? children : mins + layout.offset[level + 1] + node * kTreeFanout;
  StoreRelaxed(mins + layout.offset[level] + node, MinPositive(child_mins));
}

// Only the min of node `node` of level `level` from its children. O(1).
REVERIE_HD void RefreshMinNode(const uint64_t* sums, uint64_t* mins, const TreeLayout& layout,
                               int level, int64_t node) {
  const uint64_t* children = level + 1 == layout.depth
                                 ? sums + layout.offset[level + 1] + node * kTreeFanout
                                 : mins + layout.offset[level + 1] + node * kTreeFanout;
  StoreRelaxed(mins + layout.offset[level] + node, MinPositive(children));
}

// A leaf after the fixed-point scale drops by 2^shift: a positive leaf stays >= 1. O(1).
REVERIE_HD uint64_t ShiftedLeaf(uint64_t units, int shift) {
  if (units == 0) return 0;
  if (shift >= 64) return 1;
  const uint64_t v = units >> shift;
  return v < 1 ? 1 : v;
}

// ---- The host-side tree -------------------------------------------------------------

// Thread-safety: one writer at a time (the owner serialises them); readers (total, leaf,
// DescendBatch) may run concurrently with it and see each node either before or after.
class SumTree {
 public:
  // All leaves 0, in memory of its own. O(leaves) memory, zero pages until written.
  explicit SumTree(int64_t leaves);
  // In caller-given memory (e.g. a shared-memory region), SumsBytes / MinsBytes long each,
  // zeroed or holding a tree of the same size. The memory must outlive the tree.
  SumTree(int64_t leaves, uint64_t* sums, uint64_t* mins);
  static size_t SumsBytes(int64_t leaves);
  static size_t MinsBytes(int64_t leaves);

  int64_t leaves() const { return layout_.count[layout_.depth]; }
  const TreeLayout& layout() const { return layout_; }
  uint64_t total() const { return LoadRelaxed(sums_); }
  // Smallest positive leaf, 0 when every leaf is 0. O(1).
  uint64_t min_positive() const { return LoadRelaxed(mins_); }
  uint64_t leaf(int64_t i) const { return LoadRelaxed(sums_ + layout_.offset[layout_.depth] + i); }
  const uint64_t* sums() const { return sums_; }
  const uint64_t* mins() const { return mins_; }

  // Sets leaves[first .. first+n) to `units`, then refreshes only the ancestors of that
  // range, level by level. O(n + depth). Precondition: first + n <= leaves().
  void FillRange(int64_t first, int64_t n, uint64_t units);

  // Sets leaves[index[k]] = units[k] in order (so for a repeated index the last wins).
  // O(n * depth) with the misses of all n paths overlapped by prefetching. Large batches
  // on trees with several subtrees under the root are split between two threads by
  // subtree: each thread owns the paths below the root of its half (a repeated index
  // always falls to the same thread, in order), and the root is settled after both, from
  // its children, so the result is exactly the serial one.
  void SetLeaves(const int64_t* index, const uint64_t* units, int64_t n);
  // The same, with the k-th new value computed by units_of(k) on the thread that stores it
  // (so the conversion of the values is split between the threads as well).
  using UnitsOf = std::function<uint64_t(int64_t)>;
  void SetLeaves(const int64_t* index, const UnitsOf& units_of, int64_t n);

  // Finds, for each of n values u[k] < total(), the leaf whose interval holds it. All
  // queries advance one level at a time, so their cache misses overlap. O(n * depth).
  void DescendBatch(const uint64_t* u, int64_t* leaf, int64_t n) const;

  // Replaces every leaf from `first` on with leaf >> shift (a positive leaf stays >= 1),
  // storing the index of the next leaf into *progress after each one (when given: a
  // process killed halfway leaves a record to resume from), then Rebuild(). O(leaves).
  void ShiftLeavesRight(int shift, int64_t first = 0, std::atomic<int64_t>* progress = nullptr);
  // Overwrites all leaves from `units` (leaves() values), then Rebuild(). O(leaves).
  void AssignLeaves(const uint64_t* units);
  // Recomputes every internal sum and min from the leaves. Exact. O(leaves).
  void Rebuild();

 private:
  uint64_t* mutable_sums() { return sums_; }
  uint64_t* mutable_mins() { return mins_; }
  void RefreshRange(int64_t first_leaf, int64_t last_leaf);
  // SetLeaves for the updates whose leaf is in [lo, hi), on levels top .. depth.
  void SetLeavesIn(const int64_t* index, const UnitsOf& units_of, int64_t n, int64_t lo,
                   int64_t hi, int top);

  TreeLayout layout_;
  AlignedBuffer owned_sums_, owned_mins_;  // empty when the memory is the caller's
  uint64_t* sums_ = nullptr;  // layout_.total_nodes entries
  uint64_t* mins_ = nullptr;  // entries of levels 0 .. depth-1 (same offsets)
};

}  // namespace reverie
