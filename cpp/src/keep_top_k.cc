#include "reverie/keep_top_k.h"

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
    return std::make_unique<KeepTopK>(table.capacity, -1, DType::kFloat64);
  }
  const int field = table.ScalarField(score, "keep_top_k score");
  return std::make_unique<KeepTopK>(table.capacity, field, (*table.spec)[static_cast<size_t>(field)].dtype);
}

KeepTopK::KeepTopK(int64_t capacity, int score_field, DType dtype)
    : LockedWriter("keep_top_k", capacity), field_(score_field), dtype_(dtype) {}

std::vector<size_t> KeepTopK::DerivedSections() const {
  const size_t array = static_cast<size_t>(capacity()) * 8;
  return {sizeof(int64_t), array, array, array};
}

void KeepTopK::BindDerived(const std::vector<uint8_t*>& sections, bool fresh) {
  size_ = reinterpret_cast<int64_t*>(sections[0]);
  heap_ = reinterpret_cast<int64_t*>(sections[1]);
  position_ = reinterpret_cast<int64_t*>(sections[2]);
  score_ = reinterpret_cast<double*>(sections[3]);
  if (fresh) *size_ = 0;
}

void KeepTopK::StateArrays(std::vector<StateArray>* out) {
  LockedWriter::StateArrays(out);
  out->push_back(StateArray{"keep_top_k.score", "float64", {capacity()}, reinterpret_cast<uint8_t*>(score_), true});
}

double KeepTopK::min_score() const {
  return *size_ > 0 ? score_[heap_[0]] : std::numeric_limits<double>::quiet_NaN();
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

bool KeepTopK::Below(int64_t a, int64_t b) const {
  if (score_[a] != score_[b]) return score_[a] < score_[b];
  return insertion(a) < insertion(b);
}

void KeepTopK::Swap(int64_t i, int64_t j) {
  std::swap(heap_[i], heap_[j]);
  position_[heap_[i]] = i + 1;
  position_[heap_[j]] = j + 1;
}

void KeepTopK::SiftUp(int64_t index) {
  while (index > 0) {
    const int64_t parent = (index - 1) / 2;
    if (!Below(heap_[index], heap_[parent])) return;
    Swap(index, parent);
    index = parent;
  }
}

void KeepTopK::SiftDown(int64_t index) {
  const int64_t n = *size_;
  for (;;) {
    int64_t low = index;
    for (int64_t child = 2 * index + 1; child <= 2 * index + 2 && child < n; ++child) {
      if (Below(heap_[child], heap_[low])) low = child;
    }
    if (low == index) return;
    Swap(index, low);
    index = low;
  }
}

void KeepTopK::Push(int64_t slot) {
  const int64_t index = (*size_)++;
  heap_[index] = slot;
  position_[slot] = index + 1;
  SiftUp(index);
}

void KeepTopK::Erase(int64_t slot) {
  const int64_t index = position_[slot] - 1;
  if (index < 0) return;
  const int64_t last = --(*size_);
  if (index != last) {
    Swap(index, last);
    position_[slot] = 0;
    SiftDown(index);
    SiftUp(index);
  } else {
    position_[slot] = 0;
  }
}

int64_t KeepTopK::Decide(const WriteBatch& batch, int64_t i, int64_t, int64_t free_slot,
                         int64_t) {
  // A new item's score: its field, or (by priority) the running max it will get, which no
  // held item exceeds; the table then reports the real value (OnScore).
  const double score = field_ >= 0 ? ScoreOfRow(batch, i) : std::numeric_limits<double>::infinity();
  if (free_slot >= 0) {
    score_[free_slot] = score;  // enters the heap in Placed, once its insertion is recorded
    return free_slot;
  }
  const int64_t low = heap_[0];
  if (score < score_[low]) return -1;  // below the minimum: not stored
  // Replaces the lowest-ranked item (the oldest of the lowest score).
  Erase(low);
  score_[low] = score;
  return low;
}

void KeepTopK::OnScore(int64_t slot, double score) {
  if (position_[slot] == 0) return;
  score_[slot] = score;
  SiftDown(position_[slot] - 1);
  SiftUp(position_[slot] - 1);
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
