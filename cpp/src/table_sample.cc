// Table: sampling, reading items back, and priority updates. See table.h and ring.h.
#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/gather.h"
#include "reverie/table.h"
#include "reverie/thread_pool.h"
#include "table_internal.h"

namespace reverie {
namespace {

constexpr size_t kParallelGatherBytes = size_t{256} << 10;  // large rows: cut finer above this
constexpr int64_t kRowsPerChunk = 16;
constexpr int64_t kMinParallelRows = 64;  // below this a second thread costs more than it saves
constexpr uint32_t kMaxRedraws = 64;  // random redraws of one row before probing slot by slot
constexpr uint32_t kRecheckAttempts = 1u << 16;  // redraw numbers used after a failed recheck
constexpr int kQuietBackoff = 16;  // checked-path calls after the quiet path missed

// Major page faults of this process so far (pages read from disk).
int64_t MajorFaults() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_majflt;
}

}  // namespace

uint64_t Table::NextCall() { return header_->calls.fetch_add(1, std::memory_order_relaxed); }

SampleRequest Table::BeginSample(int64_t batch, int64_t* claimed) {
  limiter_.AdmitSample(batch, poll_);  // may wait; counts the items as sampled
  SampleRequest request;
  request.seed = seed_;
  request.batch = batch;
  request.size = size();
  const int64_t claimed_now = ring_.claimed();
  const int64_t filled = writer_->filled();
  request.range = filled >= 0 ? filled : std::min(claimed_now, capacity());
  request.claimed = claimed_now;
  if (claimed != nullptr) *claimed = claimed_now;
  try {
    selector_->ValidateSample(request);
    if (max_times_ > 0) {
      // Reserves `batch` of the samples left, so that consumers racing for the last ones
      // cannot together take more than there are: the losers are refused here.
      int64_t left = header_->remaining.load(std::memory_order_acquire);
      do {
        REVERIE_CHECK(left >= batch, "cannot sample ", batch, " items: the ", request.size,
                      " stored items have ", left, " samples left in all (max_times_sampled = ",
                      max_times_, "; an item is removed after its last sample)");
      } while (!header_->remaining.compare_exchange_weak(left, left - batch, std::memory_order_acq_rel,
                                                         std::memory_order_acquire));
    }
  } catch (...) {
    limiter_.Unsample(batch);
    throw;
  }
  request.call = NextCall();
  return request;
}

void Table::UndoCall(uint64_t call) {
  uint64_t expected = call + 1;
  header_->calls.compare_exchange_strong(expected, call, std::memory_order_relaxed);
}

void Table::AbandonSample(const SampleRequest& request) {
  UndoCall(request.call);
  limiter_.Unsample(request.batch);
  if (max_times_ > 0) header_->remaining.fetch_add(request.batch, std::memory_order_acq_rel);
}

void Table::Resolve(const SampleRequest& request, int64_t i, uint32_t first_attempt,
                           int64_t* slots, int64_t* stamps) const {
  const int64_t range = request.draw_range();
  auto take = [&](int64_t slot) {
    if (slot < 0 || slot >= range) return false;
    const uint64_t stamp = ring_.LoadStamp(slot);  // acquire: pairs with Publish
    if (!Stamp::IsCommitted(stamp)) return false;
    slots[i] = slot;
    stamps[i] = static_cast<int64_t>(stamp);
    return true;
  };
  if (take(slots[i])) return;
  for (uint32_t attempt = first_attempt + 1; attempt <= first_attempt + kMaxRedraws; ++attempt) {
    if (take(selector_->Redraw(request, i, attempt, slots))) return;
  }
  // Nearly every drawn slot is being written: a writer is stalled (descheduled, stopped or
  // killed) in the middle of a large extend. Probe the slots one by one from a random start
  // for a committed, drawable one. Only reached in that state, where it is slightly biased
  // toward the slots just after the stalled run; O(range).
  const int64_t start = std::max<int64_t>(0, selector_->Redraw(request, i, first_attempt + kMaxRedraws + 1, slots));
  for (int64_t k = 0; k < range; ++k) {
    const int64_t slot = (start + k) % range;
    if (selector_->Drawable(request, i, slot, slots) && take(slot)) return;
  }
  throw std::runtime_error(
      "could not draw a committed item: every stored item is being overwritten right now");
}

void Table::Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights,
                   const BatchMeta* meta) {
  SampleWith(batch, out, keys, weights, meta, nullptr);
}

void Table::SampleWith(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights, const BatchMeta* meta,
                       const BatchHook* hook) {
  REVERIE_CHECK(!view_, "an episode buffer samples transitions or sequences "
                "(SampleTransitions, SampleSequences)");
  REVERIE_CHECK(batch > 0, "batch_size must be > 0, got ", batch);
  REVERIE_CHECK(meta == nullptr || (meta_ && meta_->columns() && count_samples_),
                "item metadata was asked for, but this table keeps none (metadata is off)");
  const SampleRequest request = BeginSample(batch, nullptr);
  struct Abandon {  // a call that throws takes back what BeginSample took
    Table& table;
    const SampleRequest& request;
    bool done = false;
    ~Abandon() {
      if (!done) table.AbandonSample(request);
    }
  } abandon{*this, request};
  // Keys hold the rows' stamps until the end.
  const std::unique_ptr<int64_t[]> slot_buffer(new int64_t[static_cast<size_t>(batch)]);
  int64_t* slots = slot_buffer.get();
  float* w = selector_->prioritized() ? weights : nullptr;
  const bool split = selector_->splittable();
  const auto& spec = storage_.spec();
  size_t row_bytes = 0;
  for (const FieldSpec& field : spec) row_bytes += field.row_bytes();
  // A file-backed buffer larger than the page cache: ask the kernel to read every row's
  // pages now, so the misses are read from disk together instead of one fault at a time.
  // That is a system call per row and field, so it is done only while calls meet major
  // page faults (rows read from disk): for kAdviseCalls calls after one that did.
  const bool from_file = region_.file_backed();
  const bool advise = from_file && advise_left_.load(std::memory_order_relaxed) > 0;
  if (advise) advise_left_.fetch_sub(1, std::memory_order_relaxed);
  const int64_t faults_before = from_file ? MajorFaults() : 0;
  struct FaultCheck {
    Table& buf;
    bool on;
    int64_t before;
    ~FaultCheck() {
      if (on && MajorFaults() > before) buf.advise_left_.store(kAdviseCalls, std::memory_order_relaxed);
    }
  } fault_check{*this, from_file, faults_before};
  auto gather = [&](int64_t begin, int64_t end) {
    if (advise) {
      for (size_t f = 0; f < spec.size(); ++f) {
        const size_t bytes = spec[f].row_bytes();
        for (int64_t i = begin; i < end; ++i) {
          if (slots[i] >= 0) region_.AdviseWillNeed(storage_.column(f) + static_cast<size_t>(slots[i]) * bytes, bytes);
        }
      }
    }
    for (size_t f = 0; f < spec.size(); ++f) {
      GatherRows(out[f], storage_.column(f), spec[f].row_bytes(), slots, begin, end);
    }
  };
  auto work = [&](int64_t begin, int64_t end) {
    if (split) selector_->Draw(request, begin, end, slots);
    // Every stamp is a random cache miss: start them all before checking the first.
    for (int64_t i = begin; i < end; ++i) {
      if (slots[i] >= 0) ring_.PrefetchStamp(slots[i]);
    }
    for (int64_t i = begin; i < end; ++i) Resolve(request, i, 0, slots, keys);
    gather(begin, end);
    // The seqlock check of ring.h: a row whose stamp changed during the copy is redrawn
    // and copied again.
    std::atomic_thread_fence(std::memory_order_acquire);
    for (int64_t i = begin; i < end; ++i) {
      uint32_t attempt = kRecheckAttempts;
      while (static_cast<int64_t>(ring_.RecheckStamp(slots[i])) != keys[i]) {
        attempt += kMaxRedraws + 2;
        slots[i] = selector_->Redraw(request, i, attempt, slots);
        Resolve(request, i, attempt, slots, keys);
        gather(i, i + 1);
        std::atomic_thread_fence(std::memory_order_acquire);
      }
    }
    if (w != nullptr) selector_->Weights(slots, begin, end, w);
  };
  // Each piece draws its own slots and gathers its rows: the cache misses of the tree and of
  // the rows then run on every core. Large gathers are cut finer to balance the copying.
  ThreadPool& pool = ThreadPool::Shared();
  const int64_t threads = pool.workers() + 1;
  int64_t chunks = 1;
  if (!split) {
    // Without replacement a redraw reads the whole batch: one piece.
  } else if (row_bytes * static_cast<size_t>(batch) >= kParallelGatherBytes) {
    chunks = std::min<int64_t>(batch / kRowsPerChunk + 1, 4 * threads);
  } else if (batch >= kMinParallelRows) {
    chunks = threads;
  }
  // A tree rescale or rebuild (rare, milliseconds) or an in-place field update while drawing
  // and copying: the call is drawn again (Epoch, table_update.cc).
  auto stable_epoch = [&] { return StableEpoch(); };

  // The quiet path (ring.h, "A quiet buffer"): no write in flight now, and none claimed by
  // the end of the copy, so every drawn slot is committed and no row changed under us; the
  // stamps are not read at all. Otherwise the same call is drawn again on the checked path.
  // After a miss the next calls go straight to the checked path, so steady concurrent
  // writing does not pay for the attempt every time.
  // Only for a FIFO ring, where the keys follow from `claimed` alone, and where every slot
  // drawn holds an item: a dense selector on a ring without removals, or, with removals
  // (max_times_sampled), a selector that draws only live items, whose counting below then
  // also catches an item another sampler removed meanwhile (it is used up: drawn again).
  const bool quiet_ok = writer_->fifo() && (selector_->dense() || max_times_ > 0);
  bool keyed = false;  // keys[] hold keys (the quiet path), not stamps
  const int64_t committed0 = ring_.committed();
  const int64_t claimed0 = ring_.claimed();
  int skip = skip_quiet_.load(std::memory_order_relaxed);
  if (skip > 0) skip_quiet_.store(skip - 1, std::memory_order_relaxed);
  if (quiet_ok && claimed0 == committed0 && skip == 0) {
    SampleRequest quiet = request;
    quiet.range = std::min(claimed0, capacity());
    quiet.claimed = claimed0;
    std::atomic<bool> hole{false};
    auto quiet_work = [&](int64_t begin, int64_t end) {
      if (split) selector_->Draw(quiet, begin, end, slots);
      for (int64_t i = begin; i < end; ++i) {
        if (slots[i] < 0) {  // a descent that raced a priority update: take the checked path
          hole.store(true, std::memory_order_relaxed);
          return;
        }
      }
      gather(begin, end);
      if (w != nullptr) selector_->Weights(slots, begin, end, w);
    };
    const uint64_t epoch = stable_epoch();
    if (!split) selector_->Draw(quiet, 0, batch, slots);
    pool.ParallelFor(batch, chunks, quiet_work);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (!hole.load(std::memory_order_relaxed) && ring_.RecheckClaimed() == claimed0 &&
        Epoch() == epoch) {
      ring_.KeysOfSlots(slots, keys, batch, claimed0);
      keyed = true;
    } else {
      skip_quiet_.store(kQuietBackoff, std::memory_order_relaxed);
    }
  }

  if (!keyed) {
    // A call that keeps meeting changes (an updater rewriting fields without pause) is done
    // under the writer lock at last, where neither can happen: it cannot starve.
    for (int attempt = 0;; ++attempt) {
      std::optional<WriterLock> lock;
      if (attempt >= kAttemptsBeforeLock) lock.emplace(*this);
      const uint64_t epoch = stable_epoch();
      if (!split) selector_->Draw(request, 0, batch, slots);
      pool.ParallelFor(batch, chunks, work);
      if (Epoch() == epoch) break;
    }
    for (int64_t i = 0; i < batch; ++i) keys[i] = Stamp::KeyOf(static_cast<uint64_t>(keys[i]));
  }
  if (!meta_) {
    if (hook != nullptr) (*hook)(keys);  // a throw abandons the call
    abandon.done = true;
    return;
  }
  // Counting (metadata, max_times_sampled), one position after the other: a position whose
  // item is used up (or was written again since) is drawn again, the stamped way.
  int changed = 0;  // redraws that met a change (then taken under the writer lock)
  auto redraw = [&](int64_t i, uint32_t attempt) {
    std::optional<WriterLock> lock;
    if (changed >= kAttemptsBeforeLock) lock.emplace(*this);
    const uint64_t epoch = StableEpoch();
    slots[i] = selector_->Redraw(request, i, attempt, slots);
    Resolve(request, i, attempt, slots, keys);
    gather(i, i + 1);
    std::atomic_thread_fence(std::memory_order_acquire);
    const bool same = Epoch() == epoch;
    changed += !same;
    return static_cast<int64_t>(ring_.RecheckStamp(slots[i])) == keys[i] && same;
  };
  if (!CountSamples(request, slots, keys, meta, w, redraw, hook)) {
    throw std::invalid_argument(internal::Concat(
        "cannot sample ", batch, " items: ",
        max_times_ > 0 ? internal::Concat("every stored item has been sampled max_times_sampled = ", max_times_,
                                          " times (items are removed after their last sample; add more)")
                       : std::string(),
        min_interval_ > 0 || max_staleness_ >= 0
            ? internal::Concat(max_times_ > 0 ? "; or " : "", "thousands of draws found no item the reuse rules allow (",
                               min_interval_ > 0 ? internal::Concat("min_interval ", min_interval_, " ",
                                                                     interval_in_items_ ? "items" : "calls") : "",
                               min_interval_ > 0 && max_staleness_ >= 0 ? ", " : "",
                               max_staleness_ >= 0 ? internal::Concat("max_staleness ", max_staleness_, " versions")
                                                   : "",
                               "): add items, or sample fewer")
            : std::string()));
  }
  abandon.done = true;
}

template <typename Redraw>
bool Table::CountSamples(const SampleRequest& request, int64_t* slots, int64_t* keys,
                         const BatchMeta* meta, float* weights, Redraw&& redraw, const BatchHook* hook) {
  const int64_t batch = request.batch;
  const KeyCodec& codec = ring_.codec();
  std::vector<int64_t> times(static_cast<size_t>(batch)), last(static_cast<size_t>(batch), -1);
  std::vector<int64_t> used_up;
  int64_t counted = 0;  // positions [0, counted) hold a count to take back on failure
  auto undo = [&] {
    if (!count_samples_) return;  // nothing was counted
    for (int64_t j = 0; j < counted; ++j) meta_->Unsample(slots[j], codec.Generation(keys[j]));
  };
  // The reuse rules (table.h): an item too stale, or resting after its last draw, is not
  // taken (-1: drawn again); the interval's claim is the gate's compare-and-swap.
  const uint64_t clock = interval_in_items_ ? static_cast<uint64_t>(request.claimed) : request.call;
  const int64_t oldest_version = max_staleness_ >= 0
                                     ? header_->version_stamp.load(std::memory_order_relaxed) - max_staleness_
                                     : 0;
  auto take = [&](int64_t i) -> int64_t {
    const int64_t generation = codec.Generation(keys[i]);
    if (max_staleness_ >= 0 && meta_->Version(slots[i]) < oldest_version) return -1;
    if (min_interval_ > 0 && !meta_->Gate(slots[i], generation, clock, static_cast<uint64_t>(min_interval_))) return -1;
    if (!count_samples_) {
      // Nothing to count: the item must still be the one the rules just checked. The gate's
      // word carries the generation (a rewritten slot is refused there); the version does
      // not, so with a staleness bound the stamp is read again (a writer marks the slot
      // WRITING before it rewrites the version; the version is read with acquire).
      // With a staleness bound too, the stamp is reread all the same: a writer stores the
      // version before the gate, so a new version can be seen while the gate still shows the
      // old generation.
      if (min_interval_ > 0 && max_staleness_ < 0) return 0;
      std::atomic_thread_fence(std::memory_order_acquire);
      const uint64_t stamp = ring_.LoadStamp(slots[i]);
      return Stamp::IsCommitted(stamp) && Stamp::KeyOf(stamp) == keys[i] ? 0 : -1;
    }
    return meta_->OnSample(slots[i], generation, request.call, &last[static_cast<size_t>(i)]);
  };
  // The counts are random cache misses, taken one after the other below: start them all.
  for (int64_t i = 0; i < batch; ++i) {
    meta_->Prefetch(slots[i], count_samples_, max_staleness_ >= 0);
    if (!count_samples_ && max_staleness_ >= 0) ring_.PrefetchStamp(slots[i]);
  }
  try {
    for (int64_t i = 0; i < batch; ++i) {
      uint32_t attempt = kRecheckAttempts * 2;
      int64_t before = take(i);
      int tries = 0;
      while (before < 0) {
        if (++tries > 4096) {  // nothing left to count after thousands of redraws
          undo();
          return false;
        }
        // A redraw holds the drawn slot's stamp in keys[i] until it is whole.
        attempt += kMaxRedraws + 2;
        while (!redraw(i, attempt)) attempt += kMaxRedraws + 2;
        keys[i] = Stamp::KeyOf(static_cast<uint64_t>(keys[i]));
        if (weights != nullptr) selector_->Weights(slots, i, i + 1, weights);
        before = take(i);
      }
      counted = i + 1;
      times[static_cast<size_t>(i)] = before;
      if (max_times_ > 0 && before + 1 == max_times_) used_up.push_back(i);
    }
  } catch (...) {
    undo();
    throw;
  }
  FillMeta(slots, keys, batch, meta, times.data(), last.data());
  if (hook != nullptr) {
    try {
      (*hook)(keys);
    } catch (...) {
      undo();
      throw;
    }
  }
  if (!used_up.empty()) {
    std::vector<int64_t> s, k;
    for (int64_t i : used_up) {
      s.push_back(slots[i]);
      k.push_back(keys[i]);
    }
    RemoveUsedUp(s.data(), k.data(), static_cast<int64_t>(s.size()));
  }
  return true;
}

void Table::RemoveUsedUp(const int64_t* slots, const int64_t* keys, int64_t n) {
  for (int64_t i = 0; i < n; ++i) ring_.PrefetchStampForWrite(slots[i]);  // CAS targets: load them together
  WriterLock lock(*this);
  RemoveLocked(slots, keys, n);
}

int64_t Table::RemoveLocked(const int64_t* slots, const int64_t* keys, int64_t n) {
  std::vector<int64_t> gone;
  gone.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (ring_.Remove(keys[i], slots[i])) gone.push_back(slots[i]);  // else written again meanwhile
  }
  selector_->OnRemoveMany(gone.data(), static_cast<int64_t>(gone.size()));
  for (const int64_t slot : gone) {
    writer_->OnRemove(slot);
    if (arena_) arena_->Release(slot);
  }
  header_->holes.fetch_add(static_cast<int64_t>(gone.size()), std::memory_order_acq_rel);
  return static_cast<int64_t>(gone.size());
}

void Table::FillMeta(const int64_t* slots, const int64_t* keys, int64_t n, const BatchMeta* meta,
                     const int64_t* times, const int64_t* last) const {
  if (meta == nullptr) return;
  if (meta->inserted != nullptr) writer_->InsertionsOf(keys, meta->inserted, n, ring_);
  const KeyCodec& codec = ring_.codec();
  for (int64_t i = 0; i < n; ++i) {
    if (meta->version != nullptr) meta->version[i] = meta_ ? meta_->Version(slots[i]) : 0;
    if (meta->times_sampled != nullptr) {
      meta->times_sampled[i] = times != nullptr ? times[i] : meta_->TimesSampled(slots[i], codec.Generation(keys[i]));
    }
    if (meta->last_sampled != nullptr) {
      meta->last_sampled[i] = last != nullptr ? last[i] : meta_->LastSampled(slots[i], codec.Generation(keys[i]));
    }
  }
}


void Table::Get(const int64_t* keys, int64_t n, uint8_t* const* out, const BatchMeta* meta) const {
  REVERIE_CHECK(meta == nullptr || (meta_ && meta_->columns() && count_samples_),
                "item metadata was asked for, but this table keeps none (metadata is off)");
  const KeyCodec& codec = ring_.codec();
  for (int64_t i = 0; i < n; ++i) {
    if (!writer_->WasWritten(keys[i], ring_)) throw std::out_of_range(BadKeyMessage(keys[i], i));
  }
  auto gone = [&](int64_t i) {
    return std::out_of_range(internal::Concat(
        "index ", keys[i], " at position ", i, " is no longer stored: slot ", codec.Slot(keys[i]),
        " has been written again or its item removed since (keys name one item; a newer item "
        "has another key)"));
  };
  // The seqlock read of ring.h: each row must be committed with its key before the copy and
  // still after it.
  const std::unique_ptr<int64_t[]> slots(new int64_t[static_cast<size_t>(n)]);
  // A row being written is waited for (bounded): an in-place update (UpdateFields) puts its
  // key back; an overwrite does not, and the key is then gone.
  auto settled = [&](int64_t slot) {
    uint64_t stamp = ring_.LoadStamp(slot);
    if (!Stamp::IsWriting(stamp)) return stamp;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (Stamp::IsWriting(stamp) && std::chrono::steady_clock::now() < give_up) {
      sched_yield();
      stamp = ring_.LoadStamp(slot);
    }
    return stamp;
  };
  for (int64_t i = 0; i < n; ++i) {
    slots[i] = codec.Slot(keys[i]);
    if (settled(slots[i]) != Stamp::Committed(keys[i])) throw gone(i);
  }
  const auto& spec = storage_.spec();
  for (int attempt = 0;; ++attempt) {  // copied again when an in-place field update ran meanwhile
    std::optional<WriterLock> lock;  // at last under the lock, which updates hold
    if (attempt >= kAttemptsBeforeLock) lock.emplace(const_cast<Table&>(*this));
    const uint64_t epoch = StableEpoch();
    for (size_t f = 0; f < spec.size(); ++f) {
      GatherRows(out[f], storage_.column(f), spec[f].row_bytes(), slots.get(), 0, n);
    }
    FillMeta(slots.get(), keys, n, meta, nullptr, nullptr);
    std::atomic_thread_fence(std::memory_order_acquire);
    bool again = Epoch() != epoch;
    for (int64_t i = 0; i < n && !again; ++i) {
      const uint64_t stamp = ring_.RecheckStamp(slots[i]);
      if (stamp == Stamp::Committed(keys[i])) continue;
      if (!Stamp::IsWriting(stamp) || settled(slots[i]) != Stamp::Committed(keys[i])) throw gone(i);
      again = true;  // an update ran over it: copied again
    }
    if (!again) break;
  }
}

int64_t Table::UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n) {
  selector_->ValidatePriorities(priorities, n);
  std::vector<int64_t> slots;
  std::vector<double> values;
  slots.reserve(static_cast<size_t>(n));
  values.reserve(static_cast<size_t>(n));
  {
    WriterLock lock(*this);
    // Under the lock: locked writers change slots only while holding it, and a FIFO writer
    // cannot mark a checked slot and give it a new priority between the check and the update
    // (see WriteFifo).
    for (int64_t k = 0; k < n; ++k) {
      if (!writer_->WasWritten(keys[k], ring_)) throw std::out_of_range(BadKeyMessage(keys[k], k));
    }
    const KeyCodec& codec = ring_.codec();
    for (int64_t k = 0; k < n; ++k) ring_.PrefetchStamp(codec.Slot(keys[k]));
    for (int64_t k = 0; k < n; ++k) {
      const int64_t slot = codec.Slot(keys[k]);
      if (!ring_.Holds(keys[k], slot)) continue;
      slots.push_back(slot);
      values.push_back(priorities[k]);
    }
    selector_->UpdatePriorities(slots.data(), values.data(), static_cast<int64_t>(slots.size()));
    if (writer_->scores_by_priority()) {
      for (int64_t slot : slots) writer_->OnScore(slot, selector_->ScoreOf(slot));
    }
  }
  const int64_t stale = n - static_cast<int64_t>(slots.size());
  header_->stale.fetch_add(stale, std::memory_order_relaxed);
  return stale;
}

}  // namespace reverie
