#include "reverie/keep_top_k.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "reverie/common.h"
#include "reverie/ring.h"

namespace reverie {

std::unique_ptr<Writer> MakeKeepTopK(const ConfigValue& settings, const TableContext& table) {
  const std::string& score = settings.At("score", "the keep_top_k writer").AsString("keep_top_k 'score'");
  if (score == "priority") {
    REVERIE_CHECK(table.prioritized, "a keep_top_k writer with score 'priority' ranks items by their priority: "
                  "it needs the prioritized sampler");
    return std::make_unique<KeepTopK>(table.capacity, -1, DType::kFloat64, /*track=*/true);
  }
  const int field = table.ScalarField(score, "keep_top_k score");
  return std::make_unique<KeepTopK>(table.capacity, field, (*table.spec)[static_cast<size_t>(field)].dtype,
                                    /*track=*/table.removals);
}

KeepTopK::KeepTopK(int64_t capacity, int score_field, DType dtype, bool track)
    : LockedWriter("keep_top_k", capacity), field_(score_field), dtype_(dtype), track_(track) {}

std::vector<size_t> KeepTopK::DerivedSections() const {
  const size_t array = static_cast<size_t>(capacity()) * 8;
  return {sizeof(int64_t), static_cast<size_t>(capacity()) * sizeof(Node), array, array};
}

void KeepTopK::BindDerived(const std::vector<uint8_t*>& sections, bool fresh) {
  size_ = reinterpret_cast<int64_t*>(sections[0]);
  heap_ = reinterpret_cast<Node*>(sections[1]);
  position_ = reinterpret_cast<int64_t*>(sections[2]);
  score_ = reinterpret_cast<double*>(sections[3]);
  if (fresh) *size_ = 0;
}

void KeepTopK::StateArrays(std::vector<StateArray>* out) {
  LockedWriter::StateArrays(out);
  out->push_back(StateArray{"keep_top_k.score", "float64", {capacity()}, reinterpret_cast<uint8_t*>(score_), true});
}

double KeepTopK::min_score() const {
  return *size_ > 0 ? heap_[0].score : std::numeric_limits<double>::quiet_NaN();
}

double KeepTopK::ScoreOfRow(const WriteBatch& batch, int64_t i) const {
  const ArrayView& v = *batch.values[field_];
  // A scalar field: one element per row (an untyped Python number is a single value).
  return ElementAsDouble(v.data, v.dtype, v.ndim == 0 ? 0 : batch.Row(i));
}

void KeepTopK::Check(const WriteBatch& batch) const {
  if (field_ < 0) return;
  for (int64_t i = 0; i < batch.count; ++i) {
    const double s = ScoreOfRow(batch, i);
    REVERIE_CHECK(!std::isnan(s), "keep_top_k score field: item ", batch.Row(i),
                  " has score NaN, which cannot be ranked (nothing was stored)");
  }
}

void KeepTopK::MoveUp(int64_t index, const Node& node) {
  while (index > 0) {
    const int64_t parent = (index - 1) / kArity;
    if (!Less(node, heap_[parent])) break;
    heap_[index] = heap_[parent];
    if (track_) position_[heap_[index].slot] = index + 1;
    index = parent;
  }
  heap_[index] = node;
  if (track_) position_[node.slot] = index + 1;
}

void KeepTopK::MoveDown(int64_t index, const Node& node) {
  const int64_t n = *size_;
  for (;;) {
    const int64_t first = kArity * index + 1;
    if (first >= n) break;
    const int64_t end = std::min(first + kArity, n);
    int64_t low = first;
    for (int64_t child = first + 1; child < end; ++child) {
      if (Less(heap_[child], heap_[low])) low = child;
    }
    if (!Less(heap_[low], node)) break;
    heap_[index] = heap_[low];
    if (track_) position_[heap_[index].slot] = index + 1;
    index = low;
  }
  heap_[index] = node;
  if (track_) position_[node.slot] = index + 1;
}

void KeepTopK::Push(int64_t slot) { MoveUp((*size_)++, NodeOf(slot)); }

void KeepTopK::Erase(int64_t slot) {
  const int64_t index = position_[slot] - 1;
  if (index < 0) return;
  position_[slot] = 0;
  const int64_t last = --(*size_);
  if (index == last) return;
  const Node node = heap_[last];
  if (index > 0 && Less(node, heap_[(index - 1) / kArity])) {
    MoveUp(index, node);
  } else {
    MoveDown(index, node);
  }
}

void KeepTopK::Rekey(int64_t slot) {
  const int64_t index = position_[slot] - 1;
  const Node node = NodeOf(slot);
  if (index > 0 && Less(node, heap_[(index - 1) / kArity])) {
    MoveUp(index, node);
  } else {
    MoveDown(index, node);
  }
}

void KeepTopK::Placed(int64_t slot) {
  if (replacing_) {
    MoveDown(0, NodeOf(slot));  // it took the minimum's place at the top: its key only grew
  } else {
    Push(slot);
  }
}

int64_t KeepTopK::Decide(const WriteBatch& batch, int64_t i, int64_t, int64_t free_slot,
                         int64_t) {
  // A new item's score: its field, or (by priority) the running max it will get, which no
  // held item exceeds; the table then reports the real value (OnScore).
  const double score = field_ >= 0 ? ScoreOfRow(batch, i) : std::numeric_limits<double>::infinity();
  replacing_ = false;
  if (free_slot >= 0) {
    score_[free_slot] = score;  // enters the heap in Placed, once its insertion is recorded
    return free_slot;
  }
  const int64_t low = heap_[0].slot;
  if (score < heap_[0].score) return -1;  // below the minimum: not stored
  // Replaces the lowest-ranked item (the oldest of the lowest score): the new one takes its
  // place at the top of the heap, and Placed sifts it down (its key only grew).
  score_[low] = score;
  replacing_ = true;
  return low;
}

void KeepTopK::OnScore(int64_t slot, double score) {
  score_[slot] = score;
  if (position_[slot] != 0) Rekey(slot);
}

void KeepTopK::CheckFieldUpdate(int field, const std::string& name) const {
  REVERIE_CHECK(field != field_, "field '", name, "' is the score a keep_top_k writer ranks its items "
                "by, fixed when they were written: it cannot be updated in place");
}

void KeepTopK::OnRemove(int64_t slot) {
  Erase(slot);
  LockedWriter::OnRemove(slot);
}

void KeepTopK::RestoreDerived(const ConfigValue&, const Ring& stamps) {
  // The heap from the held items' scores; (score, insertion) is a total order, so the top
  // and every later decision are as before the save, whatever the heap's inner order was.
  *size_ = 0;
  std::fill(position_, position_ + capacity(), 0);
  for (int64_t slot = 0; slot < capacity(); ++slot) {
    if (!Stamp::IsCommitted(stamps.LoadStamp(slot))) continue;
    REVERIE_CHECK(!std::isnan(score_[slot]), "keep_top_k state: slot ", slot, " has score NaN");
    Push(slot);
  }
}

}  // namespace reverie
