// The shared kernels of the device buffer: priority math, draws, the tree's batched update
// and insert, and the row gather, written once as REVERIE_HD code. (One header of ~530
// lines: nvcc and the host compiler must both see every kernel inline.)
//
// Every function here is run twice over:
//  - the CPU build runs it through the host backend (device_buffer.cc), over the same grids
//    and blocks as a GPU (below), and the CPU samplers call the per-item math (StratifiedPoint,
//    ImportanceWeight, PriorityUnits, ...), so the C++ and Python tests of the CPU build
//    test this code;
//  - the CUDA build (cpp/cuda/cuda_backend.cu) launches the same functions as kernels over device
//    memory, one query / update / row per thread or block.
// The programs that need a barrier between phases (UpdateProgram, InsertProgram) take a
// Block: a SharedBlock runs them on a block of threads with barriers and BlockReduce between
// phases: the CUDA block (__syncthreads), or on the host a team of threads (device_buffer.cc, which the tests run
// at several block sizes, under TSan in CI). Within a phase, threads touch disjoint words, or
// add to the same sums with atomic adds (exact: the sums are integers, sum_tree.h), or store
// the same value to the same min node. A word that only one thread touches in a phase (a
// leaf being set) is accessed plainly, not with LoadRelaxed/StoreRelaxed: in a TSan build
// those are atomics, which TSan never reports, while a plain access that no barrier orders
// against another thread's access to the word is a reported race, whatever the timing.
//
// What each thread of a kernel's grid does (SampleThread, GatherRowThread, GatherWarpThread)
// and the grid itself (SampleLaunch, GatherLaunch) are here too: the CUDA kernels are one
// line each, and the host backend can walk the very same grid.
#pragma once

#include <cmath>
#include <cstdint>

#include "reverie/common.h"
#include "reverie/key.h"
#include "reverie/philox.h"
#include "reverie/sum_tree.h"

namespace reverie {

// ---- Atomics on plain words, for code that runs on either side --------------------------

REVERIE_HD void AtomicAddU64(uint64_t* p, uint64_t v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
#else
  __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
#endif
}

REVERIE_HD void AtomicAddI64(int64_t* p, int64_t v) {
  AtomicAddU64(reinterpret_cast<uint64_t*>(p), static_cast<uint64_t>(v));
}

// Raises *p to at least v.
REVERIE_HD void AtomicMaxU64(uint64_t* p, uint64_t v) {
#if defined(__CUDA_ARCH__)
  atomicMax(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
#else
  uint64_t seen = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (seen < v && !__atomic_compare_exchange_n(p, &seen, v, true, __ATOMIC_RELAXED,
                                                  __ATOMIC_RELAXED)) {
  }
#endif
}

// Sets *p from `expected` to `desired`; true if it did.
REVERIE_HD bool AtomicClaimI64(int64_t* p, int64_t expected, int64_t desired) {
#if defined(__CUDA_ARCH__)
  auto* w = reinterpret_cast<unsigned long long*>(p);
  return atomicCAS(w, static_cast<unsigned long long>(expected),
                   static_cast<unsigned long long>(desired)) ==
         static_cast<unsigned long long>(expected);
#else
  return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED);
#endif
}

// ---- Priority math (PER, prioritized_sampler.h) -----------------------------------------

// q = (p + eps)^alpha, with exact shortcuts for the common exponents. O(1).
REVERIE_HD double PriorityTransform(double priority, double alpha, double eps) {
  const double x = priority + eps;
  if (alpha == 1.0) return x;
  if (alpha == 0.5) return std::sqrt(x);
  if (alpha == 0.0) return 1.0;  // as pow(x, 0): uniform
  return std::pow(x, alpha);
}

// Tree units of q at the scale 2^scale_exp (`scale`): 0 for q <= 0, else at least 1. O(1).
REVERIE_HD uint64_t PriorityUnits(double q, double scale) {
  if (q <= 0) return 0;
  const double scaled = std::nearbyint(q * scale);  // scale is a power of two: the product is exact
  return scaled < 1 ? 1 : static_cast<uint64_t>(scaled);
}

// A raw priority the tree accepts: finite, >= 0, and (for alpha > 1) not overflowing q.
REVERIE_HD bool PriorityValid(double priority, double alpha, double eps) {
  if (!(priority >= 0) || !std::isfinite(priority)) return false;
  return alpha <= 1.0 || std::isfinite(PriorityTransform(priority, alpha, eps));
}

// The largest power-of-two exponent e with q * 2^e <= limit (ilogb is exact on both sides,
// where a log2 might round differently on a GPU near a power of two).
REVERIE_HD int PriorityScaleFor(double q, double limit) { return std::ilogb(limit / q); }

// The point of draw i of a stratified batch of `batch` over a total of `total` units: one
// uniform draw inside segment i, [total*i/B, total*(i+1)/B). Precondition: total > 0. O(1).
REVERIE_HD uint64_t StratifiedPoint(uint64_t total, uint64_t batch, uint64_t i, uint64_t seed,
                                    uint64_t call) {
  // floor(total * i / B) without 128-bit integers: with total = qB + r it is q*i + r*i/B,
  // and r*i < B^2 < 2^64 since B < 2^32.
  const uint64_t q = total / batch, rem = total % batch;
  const uint64_t lo = q * i + rem * i / batch;
  const uint64_t hi = q * (i + 1) + rem * (i + 1) / batch;
  const uint64_t r = RandomBits(seed, call, static_cast<uint32_t>(i));
  if (hi > lo) return lo + MulHi64(r, hi - lo);
  return lo < total - 1 ? lo : total - 1;
}

// A uniform draw in [0, range). O(1).
REVERIE_HD int64_t UniformDraw(uint64_t seed, uint64_t call, int64_t i, int64_t range) {
  return static_cast<int64_t>(
      MulHi64(RandomBits(seed, call, static_cast<uint32_t>(i)), static_cast<uint64_t>(range)));
}

// The PER importance weight (min / units)^beta, which is (N P(i))^-beta / max_j (N P(j))^-beta
// with N cancelled. The ratio is formed in double and the power taken in float (relative
// error ~1e-7). A ratio above 1 or a zero leaf (only an update racing the sample, on the CPU)
// gives weight 1. O(1).
REVERIE_HD float ImportanceWeight(uint64_t min_units, uint64_t units, double beta) {
  if (beta == 0) return 1.0f;
  const double lo = static_cast<double>(min_units), v = static_cast<double>(units);
  const float ratio = v > lo ? static_cast<float>(lo / v) : 1.0f;
  return ratio == 1.0f ? 1.0f : std::exp(static_cast<float>(beta) * std::log(ratio));
}

// ---- Keys of the device buffer's FIFO ring (key.h) -----------------------------------------
// The device buffer is a one-stream FIFO ring: insertion n is slot n % capacity, generation
// n / capacity. These two are its whole relation between keys and insertion order.

// The key now stored in `slot`, `written` items having been written (slot < written). O(1).
REVERIE_HD int64_t FifoKeyOfSlot(const KeyCodec& codec, int64_t slot, int64_t written,
                                 int64_t capacity) {
  return codec.Key((written - 1 - slot) / capacity, slot);
}

// The insertion number of `key`, or -1 when it is not a key of this table. O(1).
REVERIE_HD int64_t FifoInsertionOfKey(const KeyCodec& codec, int64_t key, int64_t capacity) {
  if (!codec.WellFormed(key, capacity)) return -1;
  return codec.Generation(key) * capacity + codec.Slot(key);
}

// ---- Blocks: threads with barriers and shared scratch -------------------------------------

struct MinOf {
  template <typename T>
  REVERIE_HD T operator()(T x, T y) const { return y < x ? y : x; }
};
struct MaxOf {
  template <typename T>
  REVERIE_HD T operator()(T x, T y) const { return y > x ? y : x; }
};

// A block-wide reduction over `shared` (one entry per thread): pairwise steps with a barrier
// after each; every thread gets the result. `lanes` gives thread(), threads() (a power of
// two) and Sync(). O(log threads) barriers.
template <typename T, typename Op, typename Lanes>
REVERIE_HD T BlockReduce(T v, T* shared, Op op, const Lanes& lanes) {
  const int t = lanes.thread();
  shared[t] = v;
  lanes.Sync();
  for (int stride = lanes.threads() / 2; stride > 0; stride /= 2) {
    if (t < stride) shared[t] = op(shared[t], shared[t + stride]);
    lanes.Sync();
  }
  const T result = shared[0];
  lanes.Sync();  // before the array is used again
  return result;
}

// A block of threads with one int64 and one double of shared scratch per thread: the Block of
// the programs below, over the threads and barrier of `Lanes` (a CUDA block, or the host's
// thread team).
template <typename Lanes>
struct SharedBlock {
  Lanes lanes;
  int64_t* ints;
  double* doubles;
  REVERIE_HD int thread() const { return lanes.thread(); }
  REVERIE_HD int threads() const { return lanes.threads(); }
  REVERIE_HD void Sync() const { lanes.Sync(); }
  REVERIE_HD int64_t Min(int64_t v) const { return BlockReduce(v, ints, MinOf{}, lanes); }
  REVERIE_HD double Max(double v) const { return BlockReduce(v, doubles, MaxOf{}, lanes); }
};

// ---- Device-side state and the arguments of each kernel ----------------------------------

// Lives in device memory next to the tree: what the kernels change without the host
// looking (the running max, the scale) and what they report back (stale updates, errors).
struct DeviceStatus {
  double max_q = 1.0;      // the largest q seen (new items get it)
  int64_t scale_exp = 0;   // leaves hold q * 2^scale_exp
  int64_t stale = 0;       // updates ignored because their item was overwritten
  int64_t error = 0;       // kError* of the first failed call since the host last looked
  int64_t error_pos = 0;   // position in that call's input
  int64_t error_key = 0;   // the key given there
  double error_value = 0;  // the priority given there
};

enum DeviceError : int64_t {
  kErrorNone = 0,
  kErrorPriority = 1,    // a priority NaN, infinite, negative or overflowing
  kErrorKey = 2,         // a key never written (or negative)
  kErrorAllZero = 3,     // a prioritized sample while every priority was 0
};

// Records an error unless one is already recorded: later ones are dropped until the host
// reads and clears it. (Of threads failing at once, whichever claims the word first.)
REVERIE_HD void RecordError(DeviceStatus* status, int64_t code, int64_t pos, int64_t key,
                            double value) {
  if (AtomicClaimI64(&status->error, kErrorNone, -1)) {  // -1: being written
    status->error_pos = pos;
    status->error_key = key;
    status->error_value = value;
    AtomicClaimI64(&status->error, -1, code);  // atomic: other threads may be claiming it
  }
}

struct TreeView {
  uint64_t* sums = nullptr;  // nullptr: a uniform buffer (no tree)
  uint64_t* mins = nullptr;
  TreeLayout layout;
};

struct PriorityParams {
  double alpha = 0.6, eps = 1e-6;
  double unit_budget = 0;  // 2^62 / capacity
};

// Draws, keys and weights of one sample call.
struct SampleArgs {
  TreeView tree;
  DeviceStatus* status = nullptr;
  uint64_t seed = 0, call = 0;
  int64_t batch = 0, size = 0, written = 0, capacity = 0;
  KeyCodec codec;
  double beta = 0;
  int64_t* keys = nullptr;   // out: the key of each draw (-1 if none)
  float* weights = nullptr;  // out (prioritized): importance weights
};

// Draw i of a sample call: uniform over the stored slots, or a stratified descent of the
// tree; then its key and weight. O(depth).
REVERIE_HD void SampleOne(const SampleArgs& a, int64_t i) {
  int64_t slot;
  if (a.tree.sums == nullptr) {
    slot = UniformDraw(a.seed, a.call, i, a.size);
  } else {
    const uint64_t total = LoadRelaxed(a.tree.sums);
    if (total == 0) {
      RecordError(a.status, kErrorAllZero, i, -1, 0.0);
      a.keys[i] = -1;
      a.weights[i] = 0.0f;
      return;
    }
    const uint64_t u = StratifiedPoint(total, static_cast<uint64_t>(a.batch),
                                       static_cast<uint64_t>(i), a.seed, a.call);
    slot = Descend(a.tree.sums, a.tree.layout, u);
    const uint64_t units = LoadRelaxed(a.tree.sums + a.tree.layout.offset[a.tree.layout.depth] + slot);
    a.weights[i] = ImportanceWeight(LoadRelaxed(a.tree.mins), units, a.beta);
  }
  a.keys[i] = FifoKeyOfSlot(a.codec, slot, a.written, a.capacity);
}

// The rows of one sample call, for every field at once.
inline constexpr int kMaxGatherFields = 16;
struct GatherArgs {
  const int64_t* keys = nullptr;  // from SampleOne; -1 gathers row 0
  int64_t batch = 0, capacity = 0;
  KeyCodec codec;
  int fields = 0;
  uint8_t* out[kMaxGatherFields] = {};
  const uint8_t* column[kMaxGatherFields] = {};
  int64_t row_bytes[kMaxGatherFields] = {};
};

// Copies part `lane` of `lanes` of row `item` of field `field`: words lane, lane + lanes, ...
// Words are 16, 4 or 1 bytes, the widest that the row size and both addresses allow. O(row
// bytes / lanes).
REVERIE_HD void GatherPart(const GatherArgs& a, int64_t item, int field, int lane, int lanes) {
  const int64_t key = a.keys[item];
  const int64_t slot = key < 0 ? 0 : a.codec.Slot(key);
  const int64_t bytes = a.row_bytes[field];
  const uint8_t* src = a.column[field] + slot * bytes;
  uint8_t* dst = a.out[field] + item * bytes;
  const auto aligned = [&](uintptr_t w) {
    return bytes % static_cast<int64_t>(w) == 0 && reinterpret_cast<uintptr_t>(src) % w == 0 &&
           reinterpret_cast<uintptr_t>(dst) % w == 0;
  };
  struct alignas(16) Word16 {
    uint64_t lo, hi;
  };
  if (aligned(16)) {
    const auto* s = reinterpret_cast<const Word16*>(src);
    auto* d = reinterpret_cast<Word16*>(dst);
    for (int64_t w = lane; w < bytes / 16; w += lanes) d[w] = s[w];
  } else if (aligned(4)) {
    const auto* s = reinterpret_cast<const uint32_t*>(src);
    auto* d = reinterpret_cast<uint32_t*>(dst);
    for (int64_t w = lane; w < bytes / 4; w += lanes) d[w] = s[w];
  } else {
    for (int64_t w = lane; w < bytes; w += lanes) dst[w] = src[w];
  }
}

// ---- Launch shapes: each kernel's grid, and what one thread of it does --------------------

// A grid of blocks_x * blocks_y blocks of `threads` threads each.
struct Launch {
  int64_t blocks_x = 1;
  int blocks_y = 1;
  int threads = 1;
};

inline constexpr int kProgramThreads = 512;  // the one-block tree programs
inline constexpr int kSampleThreads = 256;   // a thread per draw
inline constexpr int kRowThreads = 256;      // a block per row for large rows
inline constexpr int kWarpThreads = 32;      // a warp per row for small rows
inline constexpr int kWarpRowsPerBlock = 8;
inline constexpr int64_t kLargeRowBytes = 1024;

inline Launch SampleLaunch(const SampleArgs& a) {
  return {(a.batch + kSampleThreads - 1) / kSampleThreads, 1, kSampleThreads};
}

REVERIE_HD void SampleThread(const SampleArgs& a, int64_t block, int thread) {
  const int64_t i = block * kSampleThreads + thread;
  if (i < a.batch) SampleOne(a, i);
}

// Whether some field's rows are large enough for a block per row.
inline bool GatherByRow(const GatherArgs& a) {
  for (int f = 0; f < a.fields; ++f) {
    if (a.row_bytes[f] >= kLargeRowBytes) return true;
  }
  return false;
}

// Block (x, y): row x of field y (GatherByRow), or rows 8x .. 8x+7 of field y, one per warp.
inline Launch GatherLaunch(const GatherArgs& a) {
  if (GatherByRow(a)) return {a.batch, a.fields, kRowThreads};
  return {(a.batch + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock, a.fields,
          kWarpThreads * kWarpRowsPerBlock};
}

REVERIE_HD void GatherRowThread(const GatherArgs& a, int64_t block, int field, int thread) {
  GatherPart(a, block, field, thread, kRowThreads);
}

REVERIE_HD void GatherWarpThread(const GatherArgs& a, int64_t block, int field, int thread) {
  const int64_t item = block * kWarpRowsPerBlock + thread / kWarpThreads;
  if (item < a.batch) GatherPart(a, item, field, thread % kWarpThreads, kWarpThreads);
}

// ---- The tree programs (one block) ---------------------------------------------------------

// Recomputes the sums and mins of the ancestors of leaves [first, last] level by level, a
// barrier between levels. Exact (integer sums). O((last - first) + depth * threads).
template <typename Block>
REVERIE_HD void RebuildAbove(const TreeView& t, int64_t first, int64_t last, const Block& b) {
  int64_t lo = first, hi = last;
  for (int level = t.layout.depth - 1; level >= 0; --level) {
    lo /= kTreeFanout;
    hi /= kTreeFanout;
    for (int64_t node = lo + b.thread(); node <= hi; node += b.threads()) {
      RebuildNode(t.sums, t.mins, t.layout, level, node);
    }
    b.Sync();
  }
}

// New items: leaves [first, first + n) (wrapping at the capacity) get the running max q.
struct InsertArgs {
  TreeView tree;
  DeviceStatus* status = nullptr;
  int64_t first = 0, n = 0, capacity = 0;
};

template <typename Block>
REVERIE_HD void InsertProgram(const InsertArgs& a, const Block& b) {
  const uint64_t units = PriorityUnits(a.status->max_q, std::ldexp(1.0, static_cast<int>(a.status->scale_exp)));
  uint64_t* leaves = a.tree.sums + a.tree.layout.offset[a.tree.layout.depth];
  for (int64_t j = b.thread(); j < a.n; j += b.threads()) {
    leaves[(a.first + j) % a.capacity] = units;
  }
  b.Sync();
  const int64_t head = a.n < a.capacity - a.first ? a.n : a.capacity - a.first;
  RebuildAbove(a.tree, a.first, a.first + head - 1, b);
  if (a.n > head) RebuildAbove(a.tree, 0, a.n - head - 1, b);
}

// A batched priority update: keys[k] gets priorities[k] (float32 or float64), in order, so a
// repeated key keeps its last value, as on the CPU.
struct UpdateArgs {
  TreeView tree;
  DeviceStatus* status = nullptr;
  uint64_t* winner = nullptr;  // capacity words, all 0 between calls
  const int64_t* keys = nullptr;
  const void* priorities = nullptr;
  bool f64 = false;
  int64_t n = 0, written = 0, capacity = 0;
  KeyCodec codec;
  PriorityParams params;
};

// The insertion number of keys[k] (-1: not a key of this buffer).
REVERIE_HD int64_t InsertionAt(const UpdateArgs& a, int64_t k) {
  return FifoInsertionOfKey(a.codec, a.keys[k], a.capacity);
}

REVERIE_HD double PriorityAt(const UpdateArgs& a, int64_t k) {
  return a.f64 ? static_cast<const double*>(a.priorities)[k]
               : static_cast<double>(static_cast<const float*>(a.priorities)[k]);
}

// The phases, each but the last ending at a barrier:
//  1. validate every key (written, >= 0) and priority; on any bad one record the first and
//     change nothing;
//  2. settle the fixed-point scale for the largest new q (shifting every leaf right and
//     rebuilding when it no longer fits, as PrioritizedSelector::Reserve);
//  3. mark, per slot, the last position k that names it (atomic max of k + 1);
//  4. the marked positions set their leaf and add the difference to every ancestor sum;
//     keys overwritten since they were sampled are counted as stale and skipped;
//  5. the min-tree above each changed leaf, level by level;
//  6. clear the marks.
// O(n * depth / threads + depth) barriers; a rescale adds O(capacity / threads).
template <typename Block>
REVERIE_HD void UpdateProgram(const UpdateArgs& a, const Block& b) {
  const TreeLayout& layout = a.tree.layout;
  uint64_t* leaves = a.tree.sums + layout.offset[layout.depth];
  const int64_t oldest = a.written > a.capacity ? a.written - a.capacity : 0;
  // 1.
  int64_t bad = INT64_MAX;
  double largest = -1;  // of the live (not stale) keys' priorities; -1: none
  for (int64_t k = b.thread(); k < a.n; k += b.threads()) {
    const double p = PriorityAt(a, k);
    const int64_t n = InsertionAt(a, k);
    if (n < 0 || n >= a.written || !PriorityValid(p, a.params.alpha, a.params.eps)) {
      bad = k < bad ? k : bad;
    } else if (n >= oldest) {
      largest = p > largest ? p : largest;
    }
  }
  bad = b.Min(bad);
  if (bad != INT64_MAX) {
    if (b.thread() == 0) {
      const int64_t n = InsertionAt(a, bad);
      RecordError(a.status, n < 0 || n >= a.written ? kErrorKey : kErrorPriority, bad, a.keys[bad],
                  PriorityAt(a, bad));
    }
    return;
  }
  largest = b.Max(largest);
  // 2. Every thread reads the status, then thread 0 writes it (after a barrier).
  const double q = PriorityTransform(largest < 0 ? 0.0 : largest, a.params.alpha, a.params.eps);
  const double max_q = a.status->max_q;
  const int scale_exp = static_cast<int>(a.status->scale_exp);
  int new_scale = scale_exp;
  const bool any_live = largest >= 0;  // as on the CPU, only live keys can raise the max
  if (any_live && q > max_q && std::ldexp(q, scale_exp) > a.params.unit_budget) {
    new_scale = PriorityScaleFor(q, a.params.unit_budget / 16.0);  // kHeadroom
  }
  b.Sync();
  if (b.thread() == 0 && any_live && q > max_q) a.status->max_q = q;
  if (new_scale != scale_exp) {
    const int shift = scale_exp - new_scale;
    for (int64_t i = b.thread(); i < layout.count[layout.depth]; i += b.threads()) {
      leaves[i] = ShiftedLeaf(leaves[i], shift);
    }
    if (b.thread() == 0) a.status->scale_exp = new_scale;
    b.Sync();
    RebuildAbove(a.tree, 0, layout.count[layout.depth] - 1, b);
  }
  const double scale = std::ldexp(1.0, new_scale);
  // 3.
  for (int64_t k = b.thread(); k < a.n; k += b.threads()) {
    if (InsertionAt(a, k) >= oldest) {
      AtomicMaxU64(a.winner + a.codec.Slot(a.keys[k]), static_cast<uint64_t>(k) + 1);
    }
  }
  b.Sync();
  // 4.
  for (int64_t k = b.thread(); k < a.n; k += b.threads()) {
    if (InsertionAt(a, k) < oldest) {
      AtomicAddI64(&a.status->stale, 1);
      continue;
    }
    const int64_t slot = a.codec.Slot(a.keys[k]);
    if (LoadRelaxed(a.winner + slot) != static_cast<uint64_t>(k) + 1) continue;
    const uint64_t units =
        PriorityUnits(PriorityTransform(PriorityAt(a, k), a.params.alpha, a.params.eps), scale);
    const uint64_t delta = units - leaves[slot];  // modulo 2^64: exact
    leaves[slot] = units;
    int64_t node = slot;
    for (int level = layout.depth - 1; level >= 0; --level) {
      node /= kTreeFanout;
      AtomicAddU64(a.tree.sums + layout.offset[level] + node, delta);
    }
  }
  b.Sync();
  // 5.
  for (int level = layout.depth - 1; level >= 0; --level) {
    for (int64_t k = b.thread(); k < a.n; k += b.threads()) {
      if (InsertionAt(a, k) < oldest) continue;
      const int64_t slot = a.codec.Slot(a.keys[k]);
      if (LoadRelaxed(a.winner + slot) != static_cast<uint64_t>(k) + 1) continue;
      int64_t node = slot;
      for (int l = layout.depth - 1; l >= level; --l) node /= kTreeFanout;
      RefreshMinNode(a.tree.sums, a.tree.mins, layout, level, node);
    }
    b.Sync();
  }
  // 6.
  for (int64_t k = b.thread(); k < a.n; k += b.threads()) {
    if (InsertionAt(a, k) < oldest) continue;
    const int64_t slot = a.codec.Slot(a.keys[k]);
    if (LoadRelaxed(a.winner + slot) == static_cast<uint64_t>(k) + 1) StoreRelaxed(a.winner + slot, 0);
  }  // no barrier: the program ends, and the end of a kernel orders everything after it
}

}  // namespace reverie
