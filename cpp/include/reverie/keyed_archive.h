// The keyed archive writer ("keyed_archive"): at most one item per user key, replaced only
// by a better one (Go-Explore's cell archive, a solution cache per problem), the worst keys
// evicted when the table is full.
//
// Settings: {"kind": "keyed_archive", "key": "<integer scalar field>",
//            "score": "<numeric scalar field>", "tiebreak": "<numeric scalar field>" | null,
//            "tiebreak_order": "min" (default: the smaller wins, e.g. a length) | "max"}.
//
// Order. Entries rank by (score, tiebreak, insertion): a higher score is better; at equal
// scores the better tiebreak (smaller for "min"); at equal both the newer item. So:
//  - an item whose key is held replaces that entry, in its slot, iff it ranks above it
//    (equal score and tiebreak: the newer replaces); a worse one is dropped (a no-op);
//  - an item of a new key takes a free slot while there is one; once the table is full it
//    replaces the lowest-ranked entry (whose key leaves the archive) iff it ranks above it,
//    else it is dropped.
// NaN scores or tiebreaks are refused (ValueError, nothing stored).
//
// Cost: O(1) expected per offered item for the key lookup (an open-addressing hash table of
// user key -> slot in the region; the batch's buckets are prefetched together), plus
// O(log k) for an item that enters (an indexed 4-ary min-heap of the entries by rank), under
// the writer lock. Lookup by user key (Lookup) is O(1) expected. Not with max_times_sampled;
// removals (a ragged table's byte bound) take the key out (OnRemove).
#pragma once

#include "reverie/locked_writer.h"

namespace reverie {

class KeyedArchive final : public LockedWriter {
 public:
  KeyedArchive(int64_t capacity, int key_field, int score_field, int tiebreak_field, bool tiebreak_min);

  void CheckFieldUpdate(int field, const std::string& name) const override;
  void StateArrays(std::vector<StateArray>* out) override;
  // slots[i] = the slot holding user key user_keys[i], or -1. O(1) expected each.
  void Lookup(const int64_t* user_keys, int64_t n, int64_t* slots) const override;
  // Under the writer lock: the item in `slot` left (a ragged table's arena evicted it): its
  // key leaves the archive and its heap entry goes. O(log k).
  void OnRemove(int64_t slot) override;

 protected:
  void Check(const WriteBatch& batch) const override;
  int64_t Decide(const WriteBatch& batch, int64_t i, int64_t offer, int64_t free_slot,
                 int64_t insertion) override;
  void Placed(int64_t slot) override;
  std::vector<size_t> DerivedSections() const override;
  void BindDerived(const std::vector<uint8_t*>& sections, bool fresh) override;
  void RestoreDerived(const ConfigValue& scalars, const Ring& stamps) override;

 private:
  struct Node {  // a heap entry carries its rank, so a level of the heap is one read
    double score;
    double tiebreak;  // negated for "min": larger is always better
    int64_t insertion;
    int64_t slot;
  };
  struct Entry {      // user key -> slot + 1 (0: empty)
    int64_t key;
    int64_t slot1;
  };
  static bool Less(const Node& a, const Node& b) {  // a ranks below b
    if (a.score != b.score) return a.score < b.score;
    if (a.tiebreak != b.tiebreak) return a.tiebreak < b.tiebreak;
    return a.insertion < b.insertion;
  }
  Node NodeOf(int64_t slot) const { return Node{score_[slot], tiebreak_[slot], insertion(slot), slot}; }
  double Value(const WriteBatch& batch, int field, int64_t i) const;
  int64_t UserKey(const WriteBatch& batch, int64_t i) const;
  Entry* Probe(int64_t key) const;  // its entry, or the empty one where it would go
  void Erase(Entry* e);             // backward-shift deletion
  void MoveUp(int64_t index, const Node& node);
  void MoveDown(int64_t index, const Node& node);

  static constexpr int64_t kArity = 4;
  int key_field_, score_field_, tiebreak_field_;
  DType key_dtype_ = DType::kInt64;
  bool tiebreak_min_;
  uint64_t mask_ = 0;                 // hash table size - 1 (a power of two >= 2 * capacity)
  int64_t replaced_ = -1;             // Decide -> Placed: the slot's entry was already held
  int64_t* size_ = nullptr;           // heap entries
  Node* heap_ = nullptr;              // [capacity]
  int64_t* position_ = nullptr;       // [capacity] index in heap + 1, 0: not held
  int64_t* user_key_ = nullptr;       // [capacity] by slot (state)
  double* score_ = nullptr;           // [capacity] by slot (state)
  double* tiebreak_ = nullptr;        // [capacity] by slot (state; negated for "min")
  Entry* table_ = nullptr;            // [mask_ + 1], rebuilt on restore
};

std::unique_ptr<Writer> MakeKeyedArchive(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
