// Ragged fields: a variable leading length per item (tokens, turns), kept in a byte-bounded
// arena of the table's region (so shared memory, files and checkpoints hold it like any
// part's state).
//
// Declaration ("ragged" in the table configuration):
//   {"bytes": N, "groups": [name, ...], "fields": [[name, dtype, [rest dims...], group], ...]}
// Fields of one group share their length per item (ids, logprobs, loss mask); each group
// has its own length (prompt, response). An item's ragged values are one block of the
// arena: each field's tokens in declaration order, each run padded to 8 bytes.
//
// Allocation is a byte ring in insertion order (the table's writer is FIFO): a block is
// placed at the head, never split across the end of the arena (the end is skipped
// instead), and the oldest blocks at the tail are released until it fits. A released block
// whose item is still held evicts that item whole (the table removes it: its key goes stale,
// its slot is free). Blocks of items that left otherwise (overwritten by the item bound,
// removed after their last sample) are dead and reclaimed when the tail passes them, so the
// bytes in use never exceed N. A queue of blocks in allocation order (2 x capacity entries)
// finds the tail's items; when it is full the oldest block is released too.
//
// Visibility (the seqlock of ring.h, extended to the arena). Blocks are reserved, items
// evicted and bytes copied under the table's writer lock. An evicted item's stamp is set to
// removed (a CAS) and a release fence is run before any byte of its block is overwritten; a
// reader copies the block of the key it holds, runs an acquire fence and checks that the
// slot's stamp still names that key (committed, or removed with its block not yet released:
// the tail is stored before released bytes are overwritten). If it copied a byte of a newer
// block, the fences pair and the check fails, so the copy is redone: no batch holds a torn
// or foreign trajectory.
//
// Thread-safety: the writer-side methods (Reserve, Assign, Release, Store) run under the
// table's writer lock; the readers (Handle, CopyOut) at any time, their results checked as
// above.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "reverie/part.h"
#include "reverie/storage.h"

namespace reverie {

class Ring;

struct RaggedFieldSpec {
  std::string name;
  DType dtype = DType::kInt32;
  std::vector<int64_t> rest;  // the per-token shape after the variable axis
  int group = 0;

  int64_t token_elements() const;
  size_t token_bytes() const { return static_cast<size_t>(token_elements()) * DTypeSize(dtype); }
};

// One write's ragged inputs, validated: per field its packed values, and per item and group
// its length.
struct RaggedRows {
  std::vector<const ArrayView*> values;  // per ragged field
  std::vector<int64_t> lengths;          // [items * groups]
  std::vector<int64_t> starts;           // [items * groups]: first token of each item
  std::vector<int64_t> block_bytes;      // per item
  int64_t items = 0;
};

class TokenArena final : public Part {
 public:
  TokenArena(const ConfigValue& settings, int64_t capacity, KeyCodec codec);

  const std::vector<RaggedFieldSpec>& fields() const { return fields_; }
  const std::vector<std::string>& groups() const { return groups_; }
  int num_groups() const { return static_cast<int>(groups_.size()); }
  int FieldIndex(std::string_view name) const;  // -1: not a ragged field
  size_t bytes() const { return bytes_; }
  // Byte offset of field f's run inside a block of the given group lengths.
  size_t RunOffset(const int64_t* lengths, int field) const;
  size_t BlockBytes(const int64_t* lengths) const;

  // Checks the ragged fields of a write (values[f] for field f, `batched`: packed values with
  // per-item lengths in FieldInput::lengths; else one item) and fills `rows`. Every ragged
  // field must be given; ValueError / TypeError naming the field for a wrong dtype or shape,
  // lengths that do not add up, lengths that differ inside a group, an item larger than the
  // arena, or `items` (the fixed fields' count, -1: none) disagreeing.
  void Validate(const FieldInput* const* values, bool batched, int64_t items, RaggedRows* rows) const;

  // Under the writer lock. Reserves blocks for the offered items (bytes[i]) in order,
  // releasing the oldest blocks as needed: keys of held items that must leave go to
  // `evict` (the table removes them), and an offered item whose block a later one of the
  // same call releases gets survives[i] = 0 (stored and evicted at once, as the FIFO ring
  // overwrites within one call). `held(key)`: whether the key is still held. O(n + released).
  // `size`: the items held now; the item bound (capacity) is kept here too, by releasing the
  // oldest blocks, so the writer always finds a free slot. `group`: the n items are one
  // group (add_group), released together; a released block of a group releases the rest of
  // its group with it, so groups leave whole.
  // `capacity`: the item bound to keep (0: the writer keeps it).
  template <typename Held>
  void Reserve(const int64_t* bytes, int64_t n, int64_t size, int64_t capacity, bool group, Held&& held,
               std::vector<int64_t>* evict, std::vector<uint8_t>* survives, std::vector<int64_t>* positions);
  // Under the writer lock: the reserved block at queue position `position` holds nothing (the
  // writer dropped its item): dead, reclaimed when the tail passes it.
  void Abandon(int64_t position) { queue_[position % queue_size_].key = -1; }
  // Under the writer lock, after the table placed the surviving items: item i of the
  // reservation (queue position positions[i]) is `key` in `slot`.
  // `group_head` / `group_next`: the key of its group's first member and of the next member
  // (-1: none; an item written alone is its own group of one, head = its key).
  void Assign(int64_t position, int64_t key, int64_t slot, const int64_t* lengths, int64_t group_head = -1,
              int64_t group_next = -1);
  // Reader side: the group links of the item in `slot` (racy, checked as Handle).
  void GroupLinks(int64_t slot, int64_t* head, int64_t* next) const;
  int64_t groups_held() const;
  // After a writer died holding the lock (Table's lock repair): drops its pending
  // reservations; Released(slot) says whether a slot's block lies below the tail (its item
  // must leave: its bytes may be reused).
  void RepairPending();
  bool Released(int64_t slot) const;
  // The keys of the blocks in allocation order (oldest first) for which keep(key) holds,
  // at most n. Writer lock held.
  template <typename Keep>
  void Oldest(int64_t n, Keep&& keep, std::vector<int64_t>* out) const {
    const int64_t qhead = header_->qhead.load(std::memory_order_relaxed);
    for (int64_t p = header_->qtail.load(std::memory_order_relaxed); p < qhead && static_cast<int64_t>(out->size()) < n; ++p) {
      const int64_t key = queue_[p % queue_size_].key;
      if (key >= 0 && keep(key)) out->push_back(key);
    }
  }
  // Staleness of the items the byte and item bounds evicted (the table's version minus
  // theirs), bucket b counting staleness b (the last: that or more). Writer lock held.
  static constexpr int kStalenessBuckets = 16;
  void CountEvictedStaleness(int64_t staleness);
  void EvictedStaleness(int64_t* buckets) const;
  // Copies item `row` of `rows` into its block (between the slot's acquire and publish).
  void Store(const RaggedRows& rows, int64_t row, int64_t slot);
  // Under the writer lock: the item in `slot` left (overwritten, removed, evicted): its
  // bytes no longer count as held (they are reclaimed when the tail passes them).
  void Release(int64_t slot);

  // Reader side: the block offset (in data()), group lengths and monotone position of the
  // item in `slot` (racy: the caller checks the slot's stamp afterwards). False when what it
  // read cannot be a block (a concurrent write): the caller redoes its copy.
  bool Handle(int64_t slot, int64_t* offset, int64_t* lengths, int64_t* position) const;
  // After a copy and an acquire fence: whether the block at `position` is still unreleased
  // (its bytes were not overwritten). A removed item's block stays readable until then.
  bool Intact(int64_t position) const;
  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() { return data_; }  // in-place updates, under the writer lock

  // Accounting (read without the lock; exact while no write runs).
  int64_t used_bytes() const;  // reserved span, dead blocks and skipped ends included
  int64_t held_bytes() const;  // blocks of items held now
  int64_t held_tokens(int group) const;
  int64_t evicted_items() const;  // items the byte bound evicted, ever
  void CountEvicted(int64_t n);

  std::vector<size_t> Sections() const override;
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) override;
  void StateArrays(std::vector<StateArray>* out) override;
  void SaveScalars(ConfigValue* out) const override;
  void Restore(const ConfigValue& scalars, const Ring& slots) override;

 private:
  struct Header {
    std::atomic<int64_t> head{0};  // monotone byte positions: physical = position % bytes
    std::atomic<int64_t> tail{0};
    std::atomic<int64_t> qhead{0};  // monotone queue positions
    std::atomic<int64_t> qtail{0};
    std::atomic<int64_t> held_bytes{0};
    std::atomic<int64_t> evicted{0};
    std::atomic<int64_t> held_tokens[8];
    std::atomic<int64_t> groups_held{0};  // groups whose first member is held
    std::atomic<int64_t> group_serial{0};
    std::atomic<int64_t> evicted_staleness[16];
  };
  static constexpr int kMaxGroups = 8;
  // A queue entry: block position (monotone), bytes, key (-1 - i: item i of the reservation
  // running now; -1 forever for one evicted within its own call).
  struct Entry {
    int64_t position, bytes, key;
    int64_t group;  // the serial of the add_group call that wrote it (0: none): evicted together
  };
  int64_t width() const { return 3 + num_groups(); }  // position, lengths, group head key, next member key
  int64_t* handle(int64_t slot) const { return handles_ + slot * width(); }

  std::vector<RaggedFieldSpec> fields_;
  std::vector<std::string> groups_;
  size_t bytes_ = 0;
  int64_t capacity_ = 0;
  KeyCodec codec_;
  int64_t queue_size_ = 0;
  Header* header_ = nullptr;
  uint8_t* data_ = nullptr;
  int64_t* handles_ = nullptr;  // [capacity, width()]: monotone block position (-1 none), lengths, head, next
  Entry* queue_ = nullptr;      // [queue_size]
};

template <typename Held>
void TokenArena::Reserve(const int64_t* bytes, int64_t n, int64_t size, int64_t capacity, bool group, Held&& held,
                         std::vector<int64_t>* evict, std::vector<uint8_t>* survives, std::vector<int64_t>* positions) {
  survives->assign(static_cast<size_t>(n), 1);
  positions->assign(static_cast<size_t>(n), -1);
  const int64_t arena = static_cast<int64_t>(bytes_);
  int64_t head = header_->head.load(std::memory_order_relaxed);
  int64_t tail = header_->tail.load(std::memory_order_relaxed);
  int64_t qhead = header_->qhead.load(std::memory_order_relaxed);
  int64_t qtail = header_->qtail.load(std::memory_order_relaxed);
  const int64_t serial = group ? header_->group_serial.fetch_add(1, std::memory_order_relaxed) + 1 : 0;
  int64_t live = size;  // items held plus this call's survivors so far
  auto pop_one = [&] {
    Entry& e = queue_[qtail % queue_size_];
    if (e.key >= 0) {
      if (held(e.key)) {
        evict->push_back(e.key);
        --live;
      }
    } else if (e.key < -1 && (*survives)[static_cast<size_t>(-e.key - 2)] != 0) {
      (*survives)[static_cast<size_t>(-e.key - 2)] = 0;
      --live;
    }
    tail = e.position + e.bytes;
    ++qtail;
    if (qtail == qhead) tail = head;
    return e.group;
  };
  auto pop = [&] {
    const int64_t g = pop_one();
    while (g != 0 && qtail < qhead && queue_[qtail % queue_size_].group == g) pop_one();
  };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = bytes[i];
    int64_t at = head;
    const int64_t physical = at % arena;
    if (physical + b > arena) at += arena - physical;  // never split a block across the end
    while (qtail < qhead && (at + b - tail > arena || qhead - qtail >= queue_size_ || (capacity > 0 && live + 1 > capacity))) {
      pop();
    }
    if (qtail == qhead) tail = at;  // empty: the next block may start anywhere
    queue_[qhead % queue_size_] = Entry{at, b, -2 - i, serial};
    (*positions)[static_cast<size_t>(i)] = qhead;
    ++qhead;
    ++live;
    head = at + b;
  }
  header_->head.store(head, std::memory_order_relaxed);
  header_->tail.store(tail, std::memory_order_relaxed);
  header_->qhead.store(qhead, std::memory_order_relaxed);
  header_->qtail.store(qtail, std::memory_order_relaxed);
}

}  // namespace reverie
