#include "reverie/keyed_archive.h"

#include <algorithm>
#include <cmath>

#include "reverie/common.h"
#include "reverie/ring.h"
#include "reverie/writer_helpers.h"

namespace reverie {
std::unique_ptr<Writer> MakeKeyedArchive(const ConfigValue& settings, const TableContext& table) {
  REVERIE_CHECK(table.max_times_sampled == 0,
                "the keyed_archive writer cannot be combined with max_times_sampled: an archive keeps "
                "its best entry per key until a better one comes");
  const char* what = "the keyed_archive writer";
  const int key = IntegerScalarField(table, settings.At("key", what).AsString("keyed_archive 'key'"),
                                     "keyed_archive key");
  const int score = table.ScalarField(settings.At("score", what).AsString("keyed_archive 'score'"),
                                      "keyed_archive score");
  int tiebreak = -1;
  const ConfigValue& tb = settings.Get("tiebreak");
  if (!tb.is_null()) tiebreak = table.ScalarField(tb.AsString("keyed_archive 'tiebreak'"), "keyed_archive tiebreak");
  bool min = true;
  const ConfigValue& order = settings.Get("tiebreak_order");
  if (!order.is_null()) {
    const std::string& o = order.AsString("keyed_archive 'tiebreak_order'");
    REVERIE_CHECK(o == "min" || o == "max", "keyed_archive tiebreak_order must be 'min' (the smaller wins) "
                  "or 'max', got '", o, "'");
    min = o == "min";
  }
  auto writer = std::make_unique<KeyedArchive>(table.capacity, key, score, tiebreak, min);
  return writer;
}

KeyedArchive::KeyedArchive(int64_t capacity, int key_field, int score_field, int tiebreak_field, bool tiebreak_min)
    : LockedWriter("keyed_archive", capacity), key_field_(key_field), score_field_(score_field),
      tiebreak_field_(tiebreak_field), tiebreak_min_(tiebreak_min) {
  mask_ = HashTableSize(capacity) - 1;
}

std::vector<size_t> KeyedArchive::DerivedSections() const {
  const size_t array = static_cast<size_t>(capacity()) * 8;
  return {sizeof(int64_t), static_cast<size_t>(capacity()) * sizeof(Node), array, array, array, array,
          (mask_ + 1) * sizeof(Entry)};
}

void KeyedArchive::BindDerived(const std::vector<uint8_t*>& s, bool fresh) {
  size_ = reinterpret_cast<int64_t*>(s[0]);
  heap_ = reinterpret_cast<Node*>(s[1]);
  position_ = reinterpret_cast<int64_t*>(s[2]);
  user_key_ = reinterpret_cast<int64_t*>(s[3]);
  score_ = reinterpret_cast<double*>(s[4]);
  tiebreak_ = reinterpret_cast<double*>(s[5]);
  table_ = reinterpret_cast<Entry*>(s[6]);
  if (fresh) *size_ = 0;
}

void KeyedArchive::StateArrays(std::vector<StateArray>* out) {
  LockedWriter::StateArrays(out);
  out->push_back(StateArray{"keyed_archive.key", "int64", {capacity()}, reinterpret_cast<uint8_t*>(user_key_), true});
  out->push_back(StateArray{"keyed_archive.score", "float64", {capacity()}, reinterpret_cast<uint8_t*>(score_), true});
  out->push_back(StateArray{"keyed_archive.tiebreak", "float64", {capacity()},
                            reinterpret_cast<uint8_t*>(tiebreak_), true});
}

void KeyedArchive::CheckFieldUpdate(int field, const std::string& name) const {
  REVERIE_CHECK(field != key_field_ && field != score_field_ && field != tiebreak_field_, "field '", name,
                "' is a key, score or tiebreak a keyed_archive writer ranks its entries by, fixed when they "
                "were written: it cannot be updated in place");
}

double KeyedArchive::Value(const WriteBatch& batch, int field, int64_t i) const {
  const ArrayView& v = *batch.values[field];
  return ElementAsDouble(v.data, v.dtype, v.ndim == 0 ? 0 : batch.Row(i));
}

int64_t KeyedArchive::UserKey(const WriteBatch& batch, int64_t i) const { return IntegerAt(batch, key_field_, i); }

KeyedArchive::Entry* KeyedArchive::Probe(int64_t key) const {
  for (uint64_t i = MixBits(static_cast<uint64_t>(key)) & mask_;; i = (i + 1) & mask_) {
    if (table_[i].slot1 == 0 || table_[i].key == key) return &table_[i];
  }
}

void KeyedArchive::Erase(Entry* e) {
  uint64_t hole = static_cast<uint64_t>(e - table_);
  for (uint64_t j = (hole + 1) & mask_; table_[j].slot1 != 0; j = (j + 1) & mask_) {
    const uint64_t home = MixBits(static_cast<uint64_t>(table_[j].key)) & mask_;
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    table_[hole] = table_[j];
    hole = j;
  }
  table_[hole].slot1 = 0;
}

void KeyedArchive::Lookup(const int64_t* user_keys, int64_t n, int64_t* slots) const {
  for (int64_t i = 0; i < n; ++i) __builtin_prefetch(&table_[MixBits(static_cast<uint64_t>(user_keys[i])) & mask_]);
  for (int64_t i = 0; i < n; ++i) slots[i] = Probe(user_keys[i])->slot1 - 1;
}

void KeyedArchive::Check(const WriteBatch& batch) const {
  for (int64_t i = 0; i < batch.count; ++i) {
    REVERIE_CHECK(!std::isnan(Value(batch, score_field_, i)), "keyed_archive score field: item ", batch.Row(i),
                  " has score NaN, which cannot be ranked (nothing was stored)");
    if (tiebreak_field_ >= 0) {
      REVERIE_CHECK(!std::isnan(Value(batch, tiebreak_field_, i)), "keyed_archive tiebreak field: item ",
                    batch.Row(i), " has tiebreak NaN, which cannot be ranked (nothing was stored)");
    }
  }
  // The keys' buckets are random lines of a large table: start loading them all now.
  for (int64_t i = 0; i < batch.count; ++i) {
    __builtin_prefetch(&table_[MixBits(static_cast<uint64_t>(UserKey(batch, i))) & mask_]);
  }
}

void KeyedArchive::MoveUp(int64_t index, const Node& node) {
  while (index > 0) {
    const int64_t parent = (index - 1) / kArity;
    if (!Less(node, heap_[parent])) break;
    heap_[index] = heap_[parent];
    position_[heap_[index].slot] = index + 1;
    index = parent;
  }
  heap_[index] = node;
  position_[node.slot] = index + 1;
}

void KeyedArchive::MoveDown(int64_t index, const Node& node) {
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
    position_[heap_[index].slot] = index + 1;
    index = low;
  }
  heap_[index] = node;
  position_[node.slot] = index + 1;
}

int64_t KeyedArchive::Decide(const WriteBatch& batch, int64_t i, int64_t, int64_t free_slot, int64_t) {
  const int64_t key = UserKey(batch, i);
  const double score = Value(batch, score_field_, i);
  double tb = tiebreak_field_ >= 0 ? Value(batch, tiebreak_field_, i) : 0.0;
  if (tiebreak_min_) tb = -tb;
  // The new item ranks above an entry iff its (score, tiebreak) is >= the entry's: it is
  // the newer, so equal ones go its way.
  auto above = [&](int64_t slot) {
    return score > score_[slot] || (score == score_[slot] && tb >= tiebreak_[slot]);
  };
  Entry* e = Probe(key);
  replaced_ = -1;
  int64_t slot;
  if (e->slot1 != 0) {  // the key is held: replaced in its slot by a better item only
    slot = e->slot1 - 1;
    if (!above(slot)) return -1;
    replaced_ = slot;
  } else if (free_slot >= 0) {
    slot = free_slot;
    e->key = key;
    e->slot1 = slot + 1;
  } else {  // full: a new key displaces the lowest-ranked entry, if it ranks above it
    slot = heap_[0].slot;
    if (!above(slot)) return -1;
    replaced_ = slot;
    Erase(Probe(user_key_[slot]));
    Entry* f = Probe(key);  // the erase may have moved entries
    f->key = key;
    f->slot1 = slot + 1;
  }
  user_key_[slot] = key;
  score_[slot] = score;
  tiebreak_[slot] = tb;
  return slot;
}

void KeyedArchive::Placed(int64_t slot) {
  // The entry's rank only grew (a better item, or the newest): moved down from where it is.
  if (replaced_ == slot) {
    MoveDown(position_[slot] - 1, NodeOf(slot));
  } else {
    MoveUp((*size_)++, NodeOf(slot));
  }
}

void KeyedArchive::OnRemove(int64_t slot) {
  LockedWriter::OnRemove(slot);  // the slot is free again
  Entry* e = Probe(user_key_[slot]);
  if (e->slot1 == slot + 1) Erase(e);
  const int64_t at = position_[slot] - 1;
  if (at < 0) return;
  position_[slot] = 0;
  const int64_t last = --*size_;
  if (at == last) return;
  const Node moved = heap_[last];
  if (at > 0 && Less(moved, heap_[(at - 1) / kArity])) {
    MoveUp(at, moved);
  } else {
    MoveDown(at, moved);
  }
}

void KeyedArchive::RestoreDerived(const ConfigValue&, const Ring& stamps) {
  *size_ = 0;
  std::fill(position_, position_ + capacity(), 0);
  std::fill(table_, table_ + mask_ + 1, Entry{0, 0});
  for (int64_t slot = 0; slot < capacity(); ++slot) {
    if (!Stamp::IsCommitted(stamps.LoadStamp(slot))) continue;
    REVERIE_CHECK(!std::isnan(score_[slot]) && !std::isnan(tiebreak_[slot]), "keyed_archive state: slot ", slot,
                  " has a NaN score or tiebreak");
    Entry* e = Probe(user_key_[slot]);
    REVERIE_CHECK(e->slot1 == 0, "keyed_archive state: key ", user_key_[slot], " is held by slots ",
                  e->slot1 - 1, " and ", slot);
    e->key = user_key_[slot];
    e->slot1 = slot + 1;
    MoveUp((*size_)++, NodeOf(slot));
  }
}

}  // namespace reverie
