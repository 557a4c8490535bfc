// The ring writer: lock-free multi-producer claims, per-slot commit stamps, and the seqlock
// check that keeps torn or unwritten rows out of every sample.
//
// Keys. Item k (the k-th item ever claimed, from 0) lives in slot slot_of(k) until item
// k + capacity overwrites it. Its key is k itself: it names the slot and the slot's generation
// (k / capacity) in one int64, so a priority update carrying a key can tell whether the slot
// still holds that item. Slots: k % capacity; with S streams (an episode buffer of S envs,
// episodes.h) the slots are stream-major instead: key k is row (k / S) % (capacity / S) of
// stream k % S, at slot (k % S) * (capacity / S) + that row, so each stream's rows are
// adjacent in memory and a sequence of them is one contiguous run.
//
// Stamps. Every slot has one 64-bit atomic stamp:
//   0                      never written;
//   (key + 1) << 1         committed: the slot holds item `key`, every field written;
//   (pid << 1) | 1         being written by a writer in process `pid`.
//
// Writing item k (slot s), by any number of writers at once:
//   1. claim:   first = claimed.fetch_add(n): keys [first, first + n) are this writer's alone.
//   2. acquire: CAS stamp[s] from "empty or committed with a key < k" to WRITING(pid)
//               (acq_rel), then a release fence. A stamp that is WRITING belongs to a writer
//               one lap behind; it is waited for while its process lives and taken over when
//               it is dead (a SIGKILLed worker). A committed key >= k means this writer was
//               lapped: the slot is skipped (its item counts as written and overwritten).
//   3. copy the fields (relaxed atomic stores in the memory model; see atomics.h).
//   4. publish: stamp[s].store(COMMITTED(k), release); committed.fetch_add(n).
//
// Reading (sampling) slot s:
//   a = stamp[s].load(acquire)          must be committed, else the draw is redrawn;
//   copy the fields (relaxed loads)
//   atomic_thread_fence(acquire)
//   b = stamp[s].load(relaxed)          must equal a, else the row is copied again.
//
// Why no torn row gets out. If the reader's copy read any byte stored by a later writer W
// (step 3), that byte's store is sequenced after W's release fence (step 2) and the reader's
// load is sequenced before its acquire fence, so the fences synchronise: W's WRITING store
// happens before the reader's second stamp load, which therefore sees WRITING or a later
// stamp, never `a`. If no byte came from a later writer, every byte came from the writer
// whose COMMITTED store `a` was read (release/acquire), that is, from item KeyOf(a) whole.
// A row that was never committed is never copied at all (step a). The key a sample reports
// is KeyOf(a), read from the stamp, so it is exact under any interleaving.
//
// A quiet buffer. A sample that finds claimed == committed (no write in flight), copies its
// rows without reading any stamp, then runs an acquire fence and finds `claimed` unchanged,
// is consistent: every slot below min(claimed, capacity) was committed before it started,
// and a writer that stored any byte it copied would have claimed its key before its
// release fence (step 2), so by the same fence pairing the second load of `claimed` would
// have seen that claim. The keys then follow from `claimed` alone (KeysOfSlots). This is the
// common case of a training loop that adds and samples in turn, and it skips one cache miss
// per row; when the check fails the call is done again the stamped way.
//
// Why nothing is lost or duplicated. Keys come from one fetch_add, so each is claimed once;
// each stamp transition is a CAS from the value the writer inspected, so of two writers
// that meet on one slot exactly one proceeds, and a slot's committed key only grows.
#pragma once

#include <atomic>
#include <cstdint>

namespace reverie {

struct Stamp {
  static constexpr uint64_t kEmpty = 0;
  static uint64_t Committed(int64_t key) { return (static_cast<uint64_t>(key) + 1) << 1; }
  static uint64_t Writing(uint32_t pid) { return (static_cast<uint64_t>(pid) << 1) | 1; }
  static bool IsCommitted(uint64_t s) { return s != 0 && (s & 1) == 0; }
  static bool IsWriting(uint64_t s) { return (s & 1) != 0; }
  static int64_t KeyOf(uint64_t s) { return static_cast<int64_t>(s >> 1) - 1; }
  static uint32_t WriterOf(uint64_t s) { return static_cast<uint32_t>(s >> 1); }
};

// The counters every writer and reader shares (in the buffer's region, so possibly in shared
// memory). Each on its own cache line: writers hammer `claimed` and `committed`.
struct RingCounters {
  alignas(64) std::atomic<int64_t> claimed{0};    // keys handed out
  alignas(64) std::atomic<int64_t> committed{0};  // keys whose writer has finished
};

// Thread-safety: all methods may be called concurrently from any thread or process that maps
// the same stamps and counters.
class Ring {
 public:
  Ring() = default;
  // `streams` divides capacity (see Keys above).
  Ring(int64_t capacity, std::atomic<uint64_t>* stamps, RingCounters* counters,
       int64_t streams = 1)
      : capacity_(capacity), streams_(streams), stream_rows_(capacity / streams),
        stamps_(stamps), counters_(counters) {}

  // Steps through the slots of consecutive keys without dividing per key.
  class Cursor {
   public:
    Cursor(const Ring& ring, int64_t key)
        : streams_(ring.streams_), rows_(ring.stream_rows_), stream_(key % ring.streams_),
          row_((key / ring.streams_) % ring.stream_rows_) {}
    int64_t slot() const { return stream_ * rows_ + row_; }
    void Next() {
      if (++stream_ == streams_) {
        stream_ = 0;
        if (++row_ == rows_) row_ = 0;
      }
    }

   private:
    int64_t streams_, rows_, stream_, row_;
  };

  int64_t capacity() const { return capacity_; }
  int64_t claimed() const { return counters_->claimed.load(std::memory_order_acquire); }
  int64_t committed() const { return counters_->committed.load(std::memory_order_acquire); }
  // Items stored and committed (what len() reports). O(1).
  int64_t size() const { return Clamp(committed()); }
  // How many slots have been claimed at least once: with one stream, slots [0, range());
  // with several, the slots of keys [claimed - range, claimed). O(1).
  int64_t range() const { return Clamp(claimed()); }
  int64_t slot_of(int64_t key) const {
    if (streams_ == 1) return key % capacity_;
    return (key % streams_) * stream_rows_ + (key / streams_) % stream_rows_;
  }
  int64_t streams() const { return streams_; }
  int64_t stream_rows() const { return stream_rows_; }
  // Whether key k was ever claimed. O(1).
  bool was_claimed(int64_t key) const { return key >= 0 && key < claimed(); }

  // Step 1: n new keys, the first returned. O(1), one atomic add.
  int64_t Claim(int64_t n) { return counters_->claimed.fetch_add(n, std::memory_order_acq_rel); }
  // Step 2 for `key`, whose slot is `slot` (= slot_of(key); callers step it along a range
  // instead of dividing per key). Returns false when a newer item already holds the slot.
  // Waits (spinning, then yielding) only while a live writer one lap behind is still
  // copying. O(1) usually.
  bool Acquire(int64_t key, int64_t slot, uint32_t pid);
  bool Acquire(int64_t key, uint32_t pid) { return Acquire(key, slot_of(key), pid); }
  // Step 4 for one key (after the row is copied). O(1).
  void Publish(int64_t key, int64_t slot) {
    stamps_[slot].store(Stamp::Committed(key), std::memory_order_release);
  }
  void Publish(int64_t key) { Publish(key, slot_of(key)); }
  void CountCommitted(int64_t n) { counters_->committed.fetch_add(n, std::memory_order_acq_rel); }

  // `claimed`, loaded after the caller's acquire fence (the quiet check above).
  int64_t RecheckClaimed() const { return counters_->claimed.load(std::memory_order_relaxed); }
  // The keys of `slots` when `written` items were written and none is in flight (one stream
  // only). O(n).
  void KeysOfSlots(const int64_t* slots, int64_t* keys, int64_t n, int64_t written) const {
    const int64_t last = written - 1;  // the newest key; its slot is last % capacity
    const int64_t newest_slot = last % capacity_;
    const int64_t base = last - newest_slot;  // key of slot 0 in the newest lap
    for (int64_t i = 0; i < n; ++i) keys[i] = slots[i] + (slots[i] <= newest_slot ? base : base - capacity_);
  }

  // Reader side (see the protocol above).
  uint64_t LoadStamp(int64_t slot) const { return stamps_[slot].load(std::memory_order_acquire); }
  uint64_t RecheckStamp(int64_t slot) const { return stamps_[slot].load(std::memory_order_relaxed); }
  void PrefetchStamp(int64_t slot) const { __builtin_prefetch(&stamps_[slot]); }
  // Whether `key` is still the committed occupant of its slot. O(1).
  bool Holds(int64_t key) const { return Holds(key, slot_of(key)); }
  bool Holds(int64_t key, int64_t slot) const {
    return LoadStamp(slot) == Stamp::Committed(key);
  }

 private:
  int64_t Clamp(int64_t n) const { return n < capacity_ ? n : capacity_; }

  int64_t capacity_ = 0;
  int64_t streams_ = 1;
  int64_t stream_rows_ = 0;
  std::atomic<uint64_t>* stamps_ = nullptr;  // capacity_ entries
  RingCounters* counters_ = nullptr;
};

}  // namespace reverie
