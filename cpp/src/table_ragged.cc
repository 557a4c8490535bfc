// Table: batches of a table with ragged fields (arena.h): packed or padded layouts, token
// budgets, gathered once into memory the caller owns.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/philox.h"
#include "reverie/region.h"
#include "reverie/table.h"
#include "reverie/thread_pool.h"
#include "table_internal.h"

namespace reverie {

namespace {

constexpr int kRaggedAttempts = 64;  // draws taken back (their items evicted) before a call gives up
constexpr size_t kParallelCopyBytes = size_t{256} << 10;  // smaller batches: one thread copies  // copies redone after evictions before a call gives up
constexpr uint64_t kBudgetSalt = 0x6a09e667f3bcc908ull;  // the budget's shuffle, apart from the selector's draws

int64_t RoundUp(int64_t n, int64_t m) { return m <= 1 ? n : (n + m - 1) / m * m; }

// Fills `tokens` tokens of `token_elements` elements each with one element's bytes.
void FillPad(uint8_t* dst, int64_t tokens, int64_t token_elements, const std::vector<uint8_t>& element) {
  const size_t esize = element.size();
  const int64_t n = tokens * token_elements;
  bool zero = true;
  for (uint8_t b : element) zero = zero && b == 0;
  if (zero) {
    std::memset(dst, 0, static_cast<size_t>(n) * esize);
    return;
  }
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + static_cast<size_t>(i) * esize, element.data(), esize);
}

void CheckLayout(const TokenArena& arena, const RaggedLayout& layout) {
  REVERIE_CHECK(layout.left.size() == static_cast<size_t>(arena.num_groups()) && layout.pad.size() == arena.fields().size(),
                "a ragged layout needs one padding side per group and one pad value per ragged field");
  for (size_t f = 0; f < layout.pad.size(); ++f) {
    REVERIE_CHECK(layout.pad[f].size() == DTypeSize(arena.fields()[f].dtype), "the pad value of ragged field '",
                  arena.fields()[f].name, "' must be one ", DTypeName(arena.fields()[f].dtype), " element");
  }
  REVERIE_CHECK(layout.multiple >= 1 && layout.multiple < (int64_t{1} << 20), "pad_to_multiple_of must be in [1, 2^20), got ",
                layout.multiple);
  REVERIE_CHECK(layout.max_tokens >= 0, "max_tokens must be > 0, got ", layout.max_tokens);
}

}  // namespace

bool Table::CopyRagged(const int64_t* keys, int64_t n, const RaggedLayout& layout, int64_t* lengths,
                       RaggedSink& sink) const {
  const TokenArena& arena = *arena_;
  const int G = arena.num_groups();
  const auto& fields = arena.fields();
  const int F = static_cast<int>(fields.size());
  const KeyCodec& codec = ring_.codec();
  std::vector<int64_t> slots(static_cast<size_t>(n)), offsets(static_cast<size_t>(n)), positions(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const size_t u = static_cast<size_t>(i);
    slots[u] = codec.Slot(keys[i]);
    if (!arena.Handle(slots[u], &offsets[u], lengths + i * G, &positions[u])) return false;
  }
  // Per group: each item's first token (packed) and the tokens / padded width.
  std::vector<int64_t> starts(static_cast<size_t>(n * G)), total(static_cast<size_t>(G), 0),
      width(static_cast<size_t>(G), 0);
  for (int g = 0; g < G; ++g) {
    int64_t sum = 0, longest = 0;
    for (int64_t i = 0; i < n; ++i) {
      starts[static_cast<size_t>(i * G + g)] = sum;
      sum += lengths[i * G + g];
      longest = std::max(longest, lengths[i * G + g]);
    }
    total[static_cast<size_t>(g)] = sum;
    width[static_cast<size_t>(g)] = layout.padded ? RoundUp(longest, layout.multiple) : RoundUp(sum, layout.multiple);
    REVERIE_CHECK(width[static_cast<size_t>(g)] < (int64_t{1} << 31), "a batch of ", width[static_cast<size_t>(g)],
                  " tokens in group '", arena.groups()[static_cast<size_t>(g)], "' does not fit int32 cu_seqlens");
  }
  const uint8_t* data = arena.data();
  // The outputs first (one allocation each), then the copies, item by item, on every core
  // when the batch is large (each item writes its own rows of each output).
  std::vector<uint8_t*> outs(static_cast<size_t>(F));
  size_t copy_bytes = 0;
  for (int f = 0; f < F; ++f) {
    const RaggedFieldSpec& spec = fields[static_cast<size_t>(f)];
    const int64_t w = width[static_cast<size_t>(spec.group)];
    int64_t shape[kMaxDims];
    int ndim = 0;
    if (layout.padded) shape[ndim++] = n;
    shape[ndim++] = w;
    for (int64_t d : spec.rest) shape[ndim++] = d;
    outs[static_cast<size_t>(f)] = sink.Allocate(f, spec.dtype, shape, ndim);
    copy_bytes += static_cast<size_t>(layout.padded ? n * w : w) * spec.token_bytes();
  }
  auto copy_items = [&](int64_t begin, int64_t end) {
    for (int f = 0; f < F; ++f) {
      const RaggedFieldSpec& spec = fields[static_cast<size_t>(f)];
      const int g = spec.group;
      const size_t tb = spec.token_bytes();
      const int64_t te = spec.token_elements();
      const int64_t w = width[static_cast<size_t>(g)];
      uint8_t* out = outs[static_cast<size_t>(f)];
      const std::vector<uint8_t>& pad = layout.pad[static_cast<size_t>(f)];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t len = lengths[i * G + g];
        const uint8_t* src = data + offsets[static_cast<size_t>(i)] + arena.RunOffset(lengths + i * G, f);
        if (!layout.padded) {
          RacyCopy(out + static_cast<size_t>(starts[static_cast<size_t>(i * G + g)]) * tb, src,
                   static_cast<size_t>(len) * tb);
          continue;
        }
        uint8_t* row = out + static_cast<size_t>(i * w) * tb;
        const bool left = layout.left[static_cast<size_t>(g)] != 0;
        if (left) {
          FillPad(row, w - len, te, pad);
        } else {
          FillPad(row + static_cast<size_t>(len) * tb, w - len, te, pad);
        }
        RacyCopy(row + static_cast<size_t>(left ? w - len : 0) * tb, src, static_cast<size_t>(len) * tb);
      }
    }
    // Each copying thread's own acquire fence (the fence rule pairs reads sequenced before
    // it in the same thread); the caller's recheck follows the pool's join.
    std::atomic_thread_fence(std::memory_order_acquire);
  };
  ThreadPool& pool = ThreadPool::Shared();
  const int64_t chunks = copy_bytes >= kParallelCopyBytes && n > 1 ? std::min<int64_t>(n, pool.workers() + 1) : 1;
  if (chunks > 1) {
    pool.ParallelFor(n, chunks, copy_items);
  } else {
    copy_items(0, n);
  }
  if (!layout.padded) {
    for (int f = 0; f < F; ++f) {
      const RaggedFieldSpec& spec = fields[static_cast<size_t>(f)];
      const int64_t sum = total[static_cast<size_t>(spec.group)];
      FillPad(outs[static_cast<size_t>(f)] + static_cast<size_t>(sum) * spec.token_bytes(),
              width[static_cast<size_t>(spec.group)] - sum, spec.token_elements(), layout.pad[static_cast<size_t>(f)]);
    }
  }
  for (int g = 0; g < G; ++g) {
    const int64_t w = width[static_cast<size_t>(g)], sum = total[static_cast<size_t>(g)];
    const bool extra = !layout.padded && w > sum;  // packed padding: one more sequence entry
    const int64_t cu_len = n + 1 + (extra ? 1 : 0);
    auto* cu = reinterpret_cast<int32_t*>(sink.Allocate(F + 2 * g, DType::kInt32, &cu_len, 1));
    for (int64_t i = 0; i < n; ++i) cu[i] = static_cast<int32_t>(starts[static_cast<size_t>(i * G + g)]);
    cu[n] = static_cast<int32_t>(sum);
    if (extra) cu[n + 1] = static_cast<int32_t>(w);
    if (layout.padded) {
      const int64_t shape[2] = {n, w};
      auto* mask = reinterpret_cast<int64_t*>(sink.Allocate(F + 2 * g + 1, DType::kInt64, shape, 2));
      const bool left = layout.left[static_cast<size_t>(g)] != 0;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t len = lengths[i * G + g];
        int64_t* row = mask + i * w;
        std::fill(row, row + w, int64_t{0});
        if (left) {
          std::fill(row + (w - len), row + w, int64_t{1});
        } else {
          std::fill(row, row + len, int64_t{1});
        }
      }
    } else if (layout.positions) {
      auto* pos = reinterpret_cast<int64_t*>(sink.Allocate(F + 2 * g + 1, DType::kInt64, &w, 1));
      for (int64_t i = 0; i < n; ++i) {
        int64_t* p = pos + starts[static_cast<size_t>(i * G + g)];
        for (int64_t t = 0, len = lengths[i * G + g]; t < len; ++t) p[t] = t;
      }
      for (int64_t t = sum; t < w; ++t) pos[t] = t - sum;
    }
  }
  // The seqlock check (arena.h): every item copied is still the one its key names.
  std::atomic_thread_fence(std::memory_order_acquire);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t stamp = ring_.RecheckStamp(slots[static_cast<size_t>(i)]);
    if (stamp == Stamp::Committed(keys[i])) continue;
    // Removed by this very draw (max_times_sampled) or meanwhile: still whole while its block
    // is unreleased.
    if (stamp == Stamp::Removed(keys[i]) && arena.Intact(positions[static_cast<size_t>(i)])) continue;
    return false;
  }
  return true;
}

namespace {

// A batch whose ragged values could not be copied (an item left before its copy): the call
// is taken back and drawn again.
struct RaggedRetry {};

}  // namespace

int64_t Table::SampleRagged(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights, const BatchMeta* meta,
                            const RaggedLayout& layout, int64_t* lengths, RaggedSink& sink) {
  REVERIE_CHECK(arena_, "this table has no ragged fields: sample it with Sample");
  CheckLayout(*arena_, layout);
  const int G = arena_->num_groups();
  REVERIE_CHECK(layout.max_tokens == 0 || max_times_ == 0,
                "a token budget draws more items than it keeps: it cannot be combined with max_times_sampled");
  const auto& spec = storage_.spec();
  const float* w = selector_->prioritized() ? weights : nullptr;
  int64_t kept = batch;
  // Runs inside the sample call, once its rows, keys and metadata are final and before the
  // remover takes what the batch used up: so the items are still held (or, evicted
  // meanwhile, make the call be taken back: counts undone, nothing lost).
  const BatchHook hook = [&](int64_t* drawn) {
    int64_t n = batch;
    if (layout.max_tokens > 0) {
      // The budget: a random order of the draws (so a stratified batch's prefix is not its
      // low strata), then the longest prefix that fits.
      std::vector<int64_t> lens(static_cast<size_t>(batch * G)), order(static_cast<size_t>(batch));
      for (int64_t i = 0; i < batch; ++i) {
        int64_t offset = 0, position = 0;
        if (!arena_->Handle(ring_.codec().Slot(drawn[i]), &offset, &lens[static_cast<size_t>(i * G)], &position)) {
          throw RaggedRetry{};  // an item was evicted meanwhile: draw again
        }
      }
      const uint64_t call = sample_calls() - 1;
      for (int64_t i = 0; i < batch; ++i) order[static_cast<size_t>(i)] = i;
      for (int64_t i = batch - 1; i > 0; --i) {
        const uint64_t r = RandomBits(seed_ ^ kBudgetSalt, call, static_cast<uint32_t>(i));
        std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(MulHi64(r, static_cast<uint64_t>(i + 1)))]);
      }
      int64_t used = 0;
      n = 0;
      while (n < batch) {
        int64_t tokens = 0;
        for (int g = 0; g < G; ++g) tokens += lens[static_cast<size_t>(order[static_cast<size_t>(n)] * G + g)];
        if (n > 0 && used + tokens > layout.max_tokens) break;
        used += tokens;
        ++n;
      }
      // Reorder every per-item output to the kept order.
      auto permute = [&](uint8_t* base, size_t row) {
        if (base == nullptr) return;
        std::vector<uint8_t> copy(base, base + static_cast<size_t>(batch) * row);
        for (int64_t j = 0; j < n; ++j) {
          std::memcpy(base + static_cast<size_t>(j) * row, copy.data() + static_cast<size_t>(order[static_cast<size_t>(j)]) * row, row);
        }
      };
      for (size_t f = 0; f < spec.size(); ++f) permute(out[f], spec[f].row_bytes());
      permute(reinterpret_cast<uint8_t*>(drawn), sizeof(int64_t));
      if (w != nullptr) permute(reinterpret_cast<uint8_t*>(weights), sizeof(float));
      if (meta != nullptr) {
        permute(reinterpret_cast<uint8_t*>(meta->inserted), sizeof(int64_t));
        permute(reinterpret_cast<uint8_t*>(meta->version), sizeof(int64_t));
        permute(reinterpret_cast<uint8_t*>(meta->times_sampled), sizeof(int64_t));
        permute(reinterpret_cast<uint8_t*>(meta->last_sampled), sizeof(int64_t));
      }
    }
    kept = n;
    const uint64_t epoch = StableEpoch();
    if (epoch != kNoEpoch && CopyRagged(drawn, n, layout, lengths, sink) && Epoch() == epoch) return;
    // A block was released or an item updated while copied: copy again under the writer
    // lock, where neither can happen. It fails only for an item that left before.
    WriterLock lock(*this);
    if (!CopyRagged(drawn, n, layout, lengths, sink)) throw RaggedRetry{};
  };
  for (int attempt = 0; attempt < kRaggedAttempts; ++attempt) {
    try {
      SampleWith(batch, out, keys, weights, meta, &hook);
      return kept;
    } catch (const RaggedRetry&) {
      continue;
    }
  }
  throw std::runtime_error(internal::Concat(
      "the sampled items were evicted before their ragged values could be copied, ", kRaggedAttempts,
      " times in a row: the arena turns over faster than a batch is drawn (raise arena_bytes)"));
}

bool Table::GroupMembers(const int64_t* keys, int64_t n, std::vector<int64_t>* members, int64_t* counts) const {
  REVERIE_CHECK(arena_, "this table has no ragged fields (groups are add_group's)");
  const KeyCodec& codec = ring_.codec();
  members->clear();
  // A member's links are read between two loads of its stamp that name it (committed, or
  // removed after its last sample: its handle stays); a member that left is skipped, and a
  // slot written again ends the chain (its links are another item's).
  auto names = [&](uint64_t stamp, int64_t key) { return stamp == Stamp::Committed(key) || stamp == Stamp::Removed(key); };
  for (int64_t i = 0; i < n; ++i) {
    int64_t head = -1, next = -1;
    const int64_t slot = codec.Slot(keys[i]);
    const uint64_t before = ring_.LoadStamp(slot);
    arena_->GroupLinks(slot, &head, &next);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (!names(before, keys[i]) || ring_.RecheckStamp(slot) != before) return false;
    int64_t at = head, count = 0, steps = 0;
    while (at >= 0 && steps++ <= capacity()) {
      if (!codec.WellFormed(at, capacity())) return false;
      const int64_t s = codec.Slot(at);
      const uint64_t stamp = ring_.LoadStamp(s);
      arena_->GroupLinks(s, &head, &next);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (!names(stamp, at) || ring_.RecheckStamp(s) != stamp) break;
      if (Stamp::IsCommitted(stamp)) {
        members->push_back(at);
        ++count;
      }
      at = next;
    }
    if (count == 0) return false;
    counts[i] = count;
  }
  return true;
}

std::vector<int64_t> Table::OldestKeys(int64_t n, int64_t min_version) const {
  REVERIE_CHECK(arena_, "oldest-first serving is for tables with ragged fields");
  REVERIE_CHECK(n > 0, "batch_size must be > 0, got ", n);
  std::vector<int64_t> keys;
  WriterLock lock(const_cast<Table&>(*this));
  const bool versions = meta_ && meta_->columns();
  arena_->Oldest(n, [&](int64_t key) {
    return ring_.Holds(key) && (!versions || meta_->Version(ring_.codec().Slot(key)) >= min_version);
  }, &keys);
  return keys;
}

int64_t Table::UpdateRagged(const int64_t* keys, int64_t n, const FieldInput* inputs, size_t count) {
  REVERIE_CHECK(arena_, "this table has no ragged fields");
  const TokenArena& arena = *arena_;
  const int G = arena.num_groups();
  std::vector<int> fields(count);
  for (size_t i = 0; i < count; ++i) {
    const int f = arena.FieldIndex(inputs[i].name);
    REVERIE_CHECK(f >= 0, "'", inputs[i].name, "' is not a ragged field of this table");
    for (size_t j = 0; j < i; ++j) REVERIE_CHECK(fields[j] != f, "field '", inputs[i].name, "' given twice");
    fields[i] = f;
    const RaggedFieldSpec& spec = arena.fields()[static_cast<size_t>(f)];
    const ArrayView& v = inputs[i].value;
    REVERIE_CHECK_TYPE(v.typed && v.dtype == spec.dtype, "ragged field '", spec.name, "': expected dtype ",
                       DTypeName(spec.dtype), ", got ", v.typed ? DTypeName(v.dtype) : "untyped Python numbers");
    bool shape_ok = v.ndim == static_cast<int>(spec.rest.size()) + 1;
    for (size_t d = 0; shape_ok && d < spec.rest.size(); ++d) shape_ok = v.shape[d + 1] == spec.rest[d];
    REVERIE_CHECK(shape_ok, "ragged field '", spec.name, "': expected packed values of shape (N, *",
                  ShapeString(spec.rest.data(), static_cast<int>(spec.rest.size())), "), got ", ShapeString(v.shape, v.ndim));
    REVERIE_CHECK(inputs[i].lengths != nullptr && inputs[i].num_lengths == n, "ragged field '", spec.name,
                  "': one length per key expected (", n, " keys)");
    int64_t total = 0;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t len = inputs[i].lengths[k];
      REVERIE_CHECK(len >= 0 && len <= v.shape[0] - total, "ragged field '", spec.name, "': length ", len,
                    " at position ", k, " is negative or runs past the ", v.shape[0], " values given");
      total += len;
    }
    REVERIE_CHECK(total == v.shape[0], "ragged field '", spec.name, "': the lengths add up to ", total,
                  " tokens but the packed values have ", v.shape[0]);
  }
  if (n == 0 || count == 0) return 0;
  const KeyCodec& codec = ring_.codec();
  const uint32_t pid = CurrentPid();
  WriterLock lock(*this);
  for (int64_t k = 0; k < n; ++k) {
    if (!writer_->WasWritten(keys[k], ring_)) throw std::out_of_range(BadKeyMessage(keys[k], k));
  }
  // Every length must be the stored item's (checked for all keys before any change).
  std::vector<int64_t> offsets(static_cast<size_t>(n), -1), stored(static_cast<size_t>(n * G));
  for (int64_t k = 0; k < n; ++k) {
    if (!ring_.Holds(keys[k])) continue;  // left: skipped
    int64_t position = 0;
    arena.Handle(codec.Slot(keys[k]), &offsets[static_cast<size_t>(k)], &stored[static_cast<size_t>(k * G)], &position);
    for (size_t i = 0; i < count; ++i) {
      const RaggedFieldSpec& spec = arena.fields()[static_cast<size_t>(fields[i])];
      REVERIE_CHECK(inputs[i].lengths[k] == stored[static_cast<size_t>(k * G + spec.group)], "ragged field '",
                    spec.name, "': key ", keys[k], " at position ", k, " holds ",
                    stored[static_cast<size_t>(k * G + spec.group)], " tokens, the update gives ", inputs[i].lengths[k],
                    " (an in-place update keeps the item's lengths)");
    }
  }
  std::vector<std::vector<int64_t>> starts(count, std::vector<int64_t>(static_cast<size_t>(n), 0));
  for (size_t i = 0; i < count; ++i) {
    for (int64_t k = 1; k < n; ++k) starts[i][static_cast<size_t>(k)] = starts[i][static_cast<size_t>(k - 1)] + inputs[i].lengths[k - 1];
  }
  int64_t skipped = 0;
  // Odd while values change: a copy that overlaps the update sees the epoch move and copies
  // again (a stamp alone would not show it: it is committed again after the update).
  header_->fields_epoch.fetch_add(1, std::memory_order_acq_rel);
  std::atomic_thread_fence(std::memory_order_release);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t slot = codec.Slot(keys[k]);
    if (offsets[static_cast<size_t>(k)] < 0 || !ring_.Lock(keys[k], slot, pid)) {
      ++skipped;
      continue;
    }
    // The stamp says WRITING (a reader's recheck fails) before any byte changes.
    std::atomic_thread_fence(std::memory_order_release);
    for (size_t i = 0; i < count; ++i) {
      const int f = fields[i];
      const RaggedFieldSpec& spec = arena.fields()[static_cast<size_t>(f)];
      const size_t tb = spec.token_bytes();
      uint8_t* dst = arena_->mutable_data() + offsets[static_cast<size_t>(k)] + arena.RunOffset(&stored[static_cast<size_t>(k * G)], f);
      const auto* src = static_cast<const uint8_t*>(inputs[i].value.data) + static_cast<size_t>(starts[i][static_cast<size_t>(k)]) * tb;
      RacyCopy(dst, src, static_cast<size_t>(inputs[i].lengths[k]) * tb);
    }
    ring_.Publish(keys[k], slot);
  }
  header_->fields_epoch.fetch_add(1, std::memory_order_release);
  header_->stale.fetch_add(skipped, std::memory_order_relaxed);
  return skipped;
}

void Table::GetRagged(const int64_t* keys, int64_t n, uint8_t* const* out, const BatchMeta* meta,
                      const RaggedLayout& layout, int64_t* lengths, RaggedSink& sink) const {
  REVERIE_CHECK(arena_, "this table has no ragged fields: read it with Get");
  CheckLayout(*arena_, layout);
  Get(keys, n, out, meta);  // IndexError for an item no longer stored
  const uint64_t epoch = StableEpoch();
  if (epoch != kNoEpoch && CopyRagged(keys, n, layout, lengths, sink) && Epoch() == epoch) return;
  // Changed while copied: again under the writer lock (no release, no update meanwhile).
  WriterLock lock(const_cast<Table&>(*this));
  Get(keys, n, out, meta);
  if (!CopyRagged(keys, n, layout, lengths, sink)) {
    throw std::out_of_range("an item was evicted while its ragged values were read (get its key again: it is gone)");
  }
}

}  // namespace reverie
