// The ring writer: lock-free multi-producer claims, per-slot commit stamps, and the seqlock
// check that keeps torn or unwritten rows out of every sample.
//
// Keys (key.h). The k-th item ever claimed (its insertion number, from 0) lives in slot
// slot_of(k) until item k + capacity overwrites it, and gets the key (generation, slot) with
// generation k / capacity: so a key names the slot and how often it was written before, and
// a priority update carrying a key can tell whether the slot still holds that item. Slots:
// k % capacity; with S streams (an episode buffer of S envs, episodes.h) the slots are
// stream-major instead: insertion k is row (k / S) % (capacity / S) of stream k % S, at slot
// (k % S) * (capacity / S) + that row, and its generation is (k / S) / (capacity / S); so
// each stream's rows are adjacent in memory and a sequence of them is one contiguous run.
// This class is the only place that maps insertion numbers to slots and keys (Cursor).
//
// Stamps. Every slot has one 64-bit atomic stamp:
//   0                      never written;
//   (key + 1) << 2         committed: the slot holds item `key`, every field written;
//   ((key + 1) << 2) | 2   removed: item `key` left (a remover took it); its bytes remain;
//   (pid << 2) | 1         being written by a writer in process `pid`.
//
// Writing item k (slot s, key K), by any number of writers at once:
//   1. claim:   first = claimed.fetch_add(n): insertions [first, first + n) are this writer's.
//   2. acquire: CAS stamp[s] from "empty, or committed or removed with a key < K" to
//               WRITING(pid) (acq_rel), then a release fence. A stamp that is WRITING belongs
//               to a writer one lap behind; it is waited for while its process lives and taken
//               over when it is dead (a SIGKILLed worker). A committed key >= K means this
//               writer was lapped: the slot is skipped (its item counts as written and
//               overwritten).
//   3. copy the fields (relaxed atomic stores in the memory model; see atomics.h).
//   4. publish: stamp[s].store(COMMITTED(K), release); committed.fetch_add(n).
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
// Why nothing is lost or duplicated. Insertion numbers come from one fetch_add, so each is
// claimed once; each stamp transition is a CAS from the value the writer inspected, so of two
// writers that meet on one slot exactly one proceeds, and a slot's committed key only grows.
#pragma once

#include <atomic>
#include <cstdint>

#include "reverie/key.h"

namespace reverie {

struct Stamp {
  static constexpr uint64_t kEmpty = 0;
  static uint64_t Committed(int64_t key) { return (static_cast<uint64_t>(key) + 1) << 2; }
  static uint64_t Removed(int64_t key) { return Committed(key) | 2; }
  static uint64_t Writing(uint32_t pid) { return (static_cast<uint64_t>(pid) << 2) | 1; }
  static bool IsCommitted(uint64_t s) { return s != 0 && (s & 3) == 0; }
  static bool IsRemoved(uint64_t s) { return (s & 3) == 2; }
  static bool IsWriting(uint64_t s) { return (s & 1) != 0; }
  // The key of a committed or removed stamp.
  static int64_t KeyOf(uint64_t s) { return static_cast<int64_t>(s >> 2) - 1; }
  static uint32_t WriterOf(uint64_t s) { return static_cast<uint32_t>(s >> 2); }
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
  // `streams` divides capacity (see Keys above); `codec` is the table's key encoding.
  Ring(int64_t capacity, std::atomic<uint64_t>* stamps, RingCounters* counters, KeyCodec codec,
       int64_t streams = 1)
      : capacity_(capacity), streams_(streams), stream_rows_(capacity / streams), codec_(codec),
        stamps_(stamps), counters_(counters) {}

  // Steps through the slots and keys of consecutive insertion numbers without dividing per
  // item. O(1) per step.
  class Cursor {
   public:
    Cursor(const Ring& ring, int64_t insertion)
        : codec_(ring.codec_), streams_(ring.streams_), rows_(ring.stream_rows_),
          stream_(insertion % ring.streams_) {
      const int64_t t = insertion / ring.streams_;
      row_ = t % rows_;
      generation_ = t / rows_;
    }
    int64_t slot() const { return stream_ * rows_ + row_; }
    int64_t key() const { return codec_.Key(generation_, slot()); }
    void Next() {
      if (++stream_ == streams_) {
        stream_ = 0;
        if (++row_ == rows_) {
          row_ = 0;
          ++generation_;
        }
      }
    }

   private:
    KeyCodec codec_;
    int64_t streams_, rows_, stream_, row_, generation_;
  };

  int64_t capacity() const { return capacity_; }
  const KeyCodec& codec() const { return codec_; }
  int64_t claimed() const { return counters_->claimed.load(std::memory_order_acquire); }
  int64_t committed() const { return counters_->committed.load(std::memory_order_acquire); }
  // Items stored and committed (what len() reports). O(1).
  int64_t size() const { return Clamp(committed()); }
  // How many slots have been claimed at least once: with one stream, slots [0, range());
  // with several, the slots of insertions [claimed - range, claimed). O(1).
  int64_t range() const { return Clamp(claimed()); }
  // The slot of insertion number n (FIFO order). O(1), a division.
  int64_t SlotOfInsertion(int64_t n) const {
    if (streams_ == 1) return n % capacity_;
    return (n % streams_) * stream_rows_ + (n / streams_) % stream_rows_;
  }
  // The insertion number of `key`, or -1 when the key is not one of this ring's (see
  // KeyCodec::WellFormed). The inverse of Cursor. O(1).
  int64_t InsertionOfKey(int64_t key) const {
    if (!codec_.WellFormed(key, capacity_)) return -1;
    const int64_t slot = codec_.Slot(key), generation = codec_.Generation(key);
    if (streams_ == 1) return generation * capacity_ + slot;
    const int64_t stream = slot / stream_rows_, row = slot % stream_rows_;
    return (generation * stream_rows_ + row) * streams_ + stream;
  }
  int64_t KeyOfInsertion(int64_t n) const { return Cursor(*this, n).key(); }
  int64_t streams() const { return streams_; }
  int64_t stream_rows() const { return stream_rows_; }
  // Whether `key` names an item that was ever claimed. O(1).
  bool WasClaimed(int64_t key) const {
    const int64_t n = InsertionOfKey(key);
    return n >= 0 && n < claimed();
  }

  // Step 1: n new insertion numbers, the first returned. O(1), one atomic add.
  int64_t Claim(int64_t n) { return counters_->claimed.fetch_add(n, std::memory_order_acq_rel); }
  // Step 2 for `key` in `slot` (= its slot; callers step both along a range with a Cursor).
  // Returns false when a newer item already holds the slot. Waits (spinning, then yielding)
  // only while a live writer one lap behind is still copying. O(1) usually.
  // *previous (when given) receives the stamp replaced (empty, committed or removed).
  bool Acquire(int64_t key, int64_t slot, uint32_t pid, uint64_t* previous = nullptr);
  // Step 4 for one key (after the row is copied). O(1).
  void Publish(int64_t key, int64_t slot) {
    stamps_[slot].store(Stamp::Committed(key), std::memory_order_release);
  }
  // An in-place update (Table::UpdateFields): committed `key` in `slot` becomes WRITING(pid)
  // until Publish(key, slot) puts it back. False when the slot holds anything else now.
  bool Lock(int64_t key, int64_t slot, uint32_t pid) {
    uint64_t expected = Stamp::Committed(key);
    return stamps_[slot].compare_exchange_strong(expected, Stamp::Writing(pid), std::memory_order_acq_rel);
  }
  // A remover: committed `key` in `slot` becomes removed (its bytes stay). False when the slot
  // holds anything else now (written again, or removed already). O(1).
  bool Remove(int64_t key, int64_t slot) {
    uint64_t expected = Stamp::Committed(key);
    return stamps_[slot].compare_exchange_strong(expected, Stamp::Removed(key), std::memory_order_acq_rel);
  }
  void CountCommitted(int64_t n) { counters_->committed.fetch_add(n, std::memory_order_acq_rel); }

  // `claimed`, loaded after the caller's acquire fence (the quiet check above).
  int64_t RecheckClaimed() const { return counters_->claimed.load(std::memory_order_relaxed); }
  // The keys of `slots` when `written` items were written and none is in flight (one stream
  // only). O(n) plus one division.
  void KeysOfSlots(const int64_t* slots, int64_t* keys, int64_t n, int64_t written) const {
    const int64_t last = written - 1;  // the newest insertion
    const int64_t newest_slot = last % capacity_;
    const int64_t generation = last / capacity_;  // of slots up to newest_slot; others one less
    const int64_t newer = codec_.Key(generation, 0);
    const int64_t older = generation > 0 ? codec_.Key(generation - 1, 0) : 0;  // unused at 0
    for (int64_t i = 0; i < n; ++i) keys[i] = slots[i] | (slots[i] <= newest_slot ? newer : older);
  }

  // Reader side (see the protocol above).
  uint64_t LoadStamp(int64_t slot) const { return stamps_[slot].load(std::memory_order_acquire); }
  uint64_t RecheckStamp(int64_t slot) const { return stamps_[slot].load(std::memory_order_relaxed); }
  void PrefetchStamp(int64_t slot) const { __builtin_prefetch(&stamps_[slot]); }
  void PrefetchStampForWrite(int64_t slot) const { __builtin_prefetch(&stamps_[slot], 1); }
  // Whether `key` (well formed) is still the committed occupant of its slot. O(1).
  bool Holds(int64_t key) const { return Holds(key, codec_.Slot(key)); }
  bool Holds(int64_t key, int64_t slot) const {
    return LoadStamp(slot) == Stamp::Committed(key);
  }
  // The stamps themselves (capacity() words), for the table's state arrays.
  std::atomic<uint64_t>* stamps() const { return stamps_; }
  // Stores a stamp as it is (restoring state). Not concurrent with anything.
  void SetStamp(int64_t slot, uint64_t stamp) {
    stamps_[slot].store(stamp, std::memory_order_relaxed);
  }

 private:
  int64_t Clamp(int64_t n) const { return n < capacity_ ? n : capacity_; }

  int64_t capacity_ = 0;
  int64_t streams_ = 1;
  int64_t stream_rows_ = 0;
  KeyCodec codec_;
  std::atomic<uint64_t>* stamps_ = nullptr;  // capacity_ entries
  RingCounters* counters_ = nullptr;
};

}  // namespace reverie
