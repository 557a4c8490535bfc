// The top-k writer ("keep_top_k"): keeps the `capacity` best items by a score (Reverb's
// MinHeap remover; self-imitation's best-trajectory buffers). Its remover evicts the
// lowest-scored item.
//
// Settings: {"kind": "keep_top_k", "score": "<scalar field>" | "priority"}.
//  - a field: the item's score is that field's value (any numeric scalar dtype), fixed when
//    written; NaN is refused (ValueError, nothing stored);
//  - "priority": the score is the item's priority q = (p + eps)^alpha under a prioritized
//    sampler, changing with update_priorities; a new item has the running max, so it always
//    enters, evicting the lowest-priority item.
//
// Order and ties. Items are ranked by (score, insertion number): of two equal scores the
// older ranks lower. The table holds the `capacity` highest-ranked items offered: while it
// has room every item enters; once full, an item enters iff its score is >= the lowest held
// score, and then the lowest-ranked item (the oldest of the lowest score) leaves; an item
// below the minimum is dropped (extend reports how many it stored). Equivalently: the table
// holds the top k of all items offered so far by (score, insertion number), newest winning
// ties.
//
// Cost: O(1) for an item below the minimum, O(log k) for one that enters, under the writer
// lock (an indexed 4-ary min-heap in the table's region, its entries holding their keys, and
// each slot's position and score). A removed item (max_times_sampled) leaves the heap, and its slot is free for the
// next item.
#pragma once

#include "reverie/locked_writer.h"

namespace reverie {

class KeepTopK final : public LockedWriter {
 public:
  // `score_field` >= 0: that field is the score (`dtype` its type); -1: the priority.
  // `track`: keep each slot's heap position, which removals (OnRemove) and score changes
  // (OnScore, by priority) need; without them the heap is only ever read at its top.
  KeepTopK(int64_t capacity, int score_field, DType dtype, bool track);

  bool scores_by_priority() const override { return field_ < 0; }
  void OnScore(int64_t slot, double score) override;
  void OnRemove(int64_t slot) override;
  void CheckFieldUpdate(int field, const std::string& name) const override;
  // Items in the heap, and the lowest score held (NaN when empty). O(1).
  int64_t held() const { return *size_; }
  double min_score() const;

  // Part: heap, positions and scores. Scores are state ("keep_top_k.score"); the heap is
  // rebuilt from them.
  void StateArrays(std::vector<StateArray>* out) override;

 protected:
  void Check(const WriteBatch& batch) const override;
  int64_t Decide(const WriteBatch& batch, int64_t i, int64_t offer, int64_t free_slot,
                 int64_t insertion) override;
  // A slot still in the heap is the replaced minimum (its key grew): moved down; else pushed.
  void Placed(int64_t slot) override;
  std::vector<size_t> DerivedSections() const override;
  void BindDerived(const std::vector<uint8_t*>& sections, bool fresh) override;
  void RestoreDerived(const ConfigValue& scalars, const Ring& stamps) override;

 private:
  // A heap entry carries its key, so that a level of the heap is one read.
  struct Node {
    double score;
    int64_t insertion;
    int64_t slot;
  };
  static constexpr int64_t kArity = 4;  // children per node: a level's keys in two lines
  static bool Less(const Node& a, const Node& b) {  // a ranks below b
    return a.score < b.score || (a.score == b.score && a.insertion < b.insertion);
  }
  Node NodeOf(int64_t slot) const { return Node{score_[slot], insertion(slot), slot}; }
  void Push(int64_t slot);
  void Erase(int64_t slot);
  // Puts `node` at `index` (a hole) and moves it up or down to its place.
  void MoveUp(int64_t index, const Node& node);
  void MoveDown(int64_t index, const Node& node);
  void Rekey(int64_t slot);  // the slot's score or insertion number changed
  double ScoreOfRow(const WriteBatch& batch, int64_t i) const;

  int field_;
  DType dtype_;
  bool track_;
  bool replacing_ = false;       // Decide -> Placed: the item took the minimum's slot
  int64_t* size_ = nullptr;      // heap entries
  Node* heap_ = nullptr;         // [capacity] a 4-ary min-heap by (score, insertion)
  int64_t* position_ = nullptr;  // [capacity] index in heap + 1, 0: not held (with track_)
  double* score_ = nullptr;      // [capacity] by slot (the state)
};

std::unique_ptr<Writer> MakeKeepTopK(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
