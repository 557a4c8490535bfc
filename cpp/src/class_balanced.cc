#include "reverie/class_balanced.h"

#include <algorithm>
#include <unordered_set>

#include "reverie/common.h"
#include "reverie/philox.h"
#include "reverie/ring.h"
#include "reverie/writer_helpers.h"

namespace reverie {
namespace {

// The generator's index lane for this writer's draws (sampling uses indices below the batch
// size; the reservoir uses 0xFFFFFFFF): (call = offer, index = kLane, lane 1 or 2).
constexpr uint32_t kLane = 0xFFFFFFFEu;
constexpr int64_t kDefaultMaxClasses = 65536;
constexpr int64_t kMostClasses = int64_t{1} << 20;

}  // namespace

namespace {

// Both kinds' factory: the class field and the class bound under the kind's own names.
std::unique_ptr<Writer> MakeBalanced(const ConfigValue& settings, const TableContext& table, bool fifo) {
  const char* kind = fifo ? "quotas" : "class_balanced";
  const std::string field_key = fifo ? "group" : "label", bound_key = fifo ? "max_groups" : "max_classes";
  REVERIE_CHECK(table.max_times_sampled == 0, "the ", kind, " writer cannot be combined with max_times_sampled: "
                "items that leave early would unbalance the ", fifo ? "groups" : "classes", " it keeps");
  const std::string& label = settings.At(field_key, std::string("the ") + kind + " writer")
                                 .AsString(std::string(kind) + " '" + field_key + "'");
  const int field = IntegerScalarField(table, label, std::string(kind) + " " + field_key);
  const FieldSpec& f = (*table.spec)[static_cast<size_t>(field)];
  int64_t max_classes = kDefaultMaxClasses;
  const ConfigValue& m = settings.Get(bound_key);
  if (!m.is_null()) max_classes = m.AsInt(std::string(kind) + " '" + bound_key + "'");
  REVERIE_CHECK(max_classes >= 1 && max_classes <= kMostClasses, kind, " ", bound_key, " must be in [1, ",
                kMostClasses, "], got ", max_classes);
  return std::make_unique<ClassBalanced>(table.capacity, table.seed, field, f.dtype, max_classes, fifo);
}

}  // namespace

std::unique_ptr<Writer> MakeClassBalanced(const ConfigValue& settings, const TableContext& table) {
  return MakeBalanced(settings, table, /*fifo=*/false);
}

std::unique_ptr<Writer> MakeQuotas(const ConfigValue& settings, const TableContext& table) {
  return MakeBalanced(settings, table, /*fifo=*/true);
}

ClassBalanced::ClassBalanced(int64_t capacity, uint64_t seed, int label_field, DType dtype, int64_t max_classes,
                             bool fifo)
    : LockedWriter(fifo ? "quotas" : "class_balanced", capacity), seed_(seed), field_(label_field), dtype_(dtype),
      max_classes_(max_classes), fifo_(fifo), label_mask_(HashTableSize(max_classes) - 1),
      member_mask_(HashTableSize(capacity) - 1) {}

std::vector<size_t> ClassBalanced::DerivedSections() const {
  const size_t per_class = static_cast<size_t>(max_classes_) * sizeof(int64_t);
  const size_t labels = (label_mask_ + 1) * sizeof(int64_t);
  return {sizeof(State), per_class, per_class, per_class, per_class, per_class, per_class,
          static_cast<size_t>(capacity() + 1) * sizeof(int64_t), labels, labels,
          (member_mask_ + 1) * sizeof(Entry), fifo_ ? per_class : 0};
}

void ClassBalanced::BindDerived(const std::vector<uint8_t*>& s, bool fresh) {
  state_ = reinterpret_cast<State*>(s[0]);
  labels_ = reinterpret_cast<int64_t*>(s[1]);
  held_ = reinterpret_cast<int64_t*>(s[2]);
  offered_ = reinterpret_cast<int64_t*>(s[3]);
  full_ = reinterpret_cast<int64_t*>(s[4]);
  where_ = reinterpret_cast<int64_t*>(s[5]);
  order_ = reinterpret_cast<int64_t*>(s[6]);
  above_ = reinterpret_cast<int64_t*>(s[7]);
  label_table_ = reinterpret_cast<int64_t*>(s[8]);
  label_keys_ = reinterpret_cast<int64_t*>(s[9]);
  members_ = reinterpret_cast<Entry*>(s[10]);
  head_ = fifo_ ? reinterpret_cast<int64_t*>(s[11]) : nullptr;
  if (fresh) state_->classes = 0;  // the rest is zero: no classes, empty tables
}

void ClassBalanced::StateArrays(std::vector<StateArray>* out) {
  LockedWriter::StateArrays(out);
  auto add = [&](const char* what, int64_t* data, std::vector<int64_t> shape) {
    out->push_back(StateArray{name() + "." + what, "int64", std::move(shape),
                              reinterpret_cast<uint8_t*>(data), false});
  };
  add("labels", labels_, {max_classes_});
  add("held", held_, {max_classes_});
  add("offered", offered_, {max_classes_});
  add("full", full_, {max_classes_});
  add("where", where_, {max_classes_});
  add("order", order_, {max_classes_});
  add("above", above_, {capacity() + 1});
  add("label_table", label_table_, {static_cast<int64_t>(label_mask_ + 1)});
  add("label_keys", label_keys_, {static_cast<int64_t>(label_mask_ + 1)});
  add("members", reinterpret_cast<int64_t*>(members_), {static_cast<int64_t>(member_mask_ + 1), 2});
  if (fifo_) add("head", head_, {max_classes_});
}

void ClassBalanced::SaveScalars(ConfigValue* out) const {
  LockedWriter::SaveScalars(out);
  out->Set(name() + ".classes", ConfigValue::Int(state_->classes));
}

void ClassBalanced::RestoreDerived(const ConfigValue& scalars, const Ring& stamps) {
  const int64_t classes = StateInt(scalars, name() + ".classes");
  REVERIE_CHECK(classes >= 0 && classes <= max_classes_, name(), " state: ", classes,
                " classes, at most ", max_classes_);
  int64_t stored = 0;
  for (int64_t slot = 0; slot < capacity(); ++slot) stored += Stamp::IsCommitted(stamps.LoadStamp(slot));
  int64_t sum = 0;
  for (int64_t p = 0; p < classes; ++p) {
    const int64_t c = order_[p];
    REVERIE_CHECK(c >= 0 && c < classes && where_[c] == p, name(), " state: the class order is not a "
                  "permutation at position ", p);
    REVERIE_CHECK(held_[c] >= 0 && held_[c] <= offered_[c] && (p == 0 || held_[order_[p - 1]] >= held_[c]),
                  name(), " state: class ", c, " holds ", held_[c], " items (offered ", offered_[c],
                  ") out of order");
    if (fifo_) {
      REVERIE_CHECK(head_[c] >= 0 && head_[c] < capacity(), name(), " state: group ", c, " starts at ", head_[c]);
    }
    REVERIE_CHECK(Find(labels_[c]) == c, name(), " state: label ", labels_[c], " does not map to class ", c);
    sum += held_[c];
  }
  REVERIE_CHECK(sum == stored, name(), " state: the classes hold ", sum, " items but ", stored,
                " are stored");
  state_->classes = classes;
}

void ClassBalanced::CheckFieldUpdate(int field, const std::string& name) const {
  REVERIE_CHECK(field != field_, "field '", name, "' is the label a ", this->name(), " writer counts its items "
                "by, fixed when they were written: it cannot be updated in place");
}

int64_t ClassBalanced::LabelOf(const WriteBatch& batch, int64_t i) const { return IntegerAt(batch, field_, i); }

int64_t ClassBalanced::Find(int64_t label) const {
  for (uint64_t i = MixBits(static_cast<uint64_t>(label)) & label_mask_;; i = (i + 1) & label_mask_) {
    if (label_table_[i] == 0) return -1;
    if (label_keys_[i] == label) return label_table_[i] - 1;
  }
}

int64_t ClassBalanced::Intern(int64_t label) {
  uint64_t i = MixBits(static_cast<uint64_t>(label)) & label_mask_;
  for (; label_table_[i] != 0; i = (i + 1) & label_mask_) {
    if (label_keys_[i] == label) return label_table_[i] - 1;
  }
  const int64_t c = state_->classes++;  // Check made sure there is room
  label_keys_[i] = label;
  label_table_[i] = c + 1;
  labels_[c] = label;
  held_[c] = offered_[c] = full_[c] = 0;
  if (fifo_) head_[c] = 0;
  order_[c] = c;  // count 0: the end of the order
  where_[c] = c;
  return c;
}

void ClassBalanced::Grow(int64_t c) {
  // c leaves the front of its count's block, which becomes the back of the next count's.
  const int64_t k = held_[c];
  const int64_t p = where_[c], q = above_[k];
  std::swap(order_[p], order_[q]);
  where_[order_[p]] = p;
  where_[c] = q;
  ++above_[k];
  held_[c] = k + 1;
}

void ClassBalanced::Shrink(int64_t c) {
  // c leaves the back of its count's block, which becomes the front of the previous count's.
  const int64_t k = held_[c];
  const int64_t p = where_[c], q = above_[k - 1] - 1;
  std::swap(order_[p], order_[q]);
  where_[order_[p]] = p;
  where_[c] = q;
  --above_[k - 1];
  held_[c] = k - 1;
}

ClassBalanced::Entry* ClassBalanced::Probe(int64_t key) const {
  for (uint64_t i = MixBits(static_cast<uint64_t>(key)) & member_mask_;; i = (i + 1) & member_mask_) {
    if (members_[i].key == 0 || members_[i].key == key) return &members_[i];
  }
}

int64_t ClassBalanced::KeyOf(int64_t c, int64_t p) const {
  // A FIFO group's list is a ring of positions from its head (oldest first).
  if (fifo_) p = (head_[c] + p) % capacity();
  return c * capacity() + p + 1;
}

int64_t& ClassBalanced::Member(int64_t c, int64_t p) { return Probe(KeyOf(c, p))->slot; }

void ClassBalanced::Append(int64_t c, int64_t slot) {
  const int64_t key = KeyOf(c, held_[c]);
  Entry* e = Probe(key);
  e->key = key;
  e->slot = slot;
  Grow(c);
}

void ClassBalanced::RemoveAt(int64_t c, int64_t p) {
  const int64_t last = held_[c] - 1;
  Entry* e = Probe(KeyOf(c, last));
  if (p != last) Member(c, p) = e->slot;
  Erase(e);
  Shrink(c);
}

void ClassBalanced::RemoveOldest(int64_t c) {
  Erase(Probe(KeyOf(c, 0)));
  head_[c] = (head_[c] + 1) % capacity();
  Shrink(c);
}

void ClassBalanced::Erase(Entry* e) {
  // Backward-shift deletion (linear probing): later entries of the run move up into the gap
  // unless their home lies after it.
  uint64_t hole = static_cast<uint64_t>(e - members_);
  for (uint64_t j = (hole + 1) & member_mask_; members_[j].key != 0; j = (j + 1) & member_mask_) {
    const uint64_t home = MixBits(static_cast<uint64_t>(members_[j].key)) & member_mask_;
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    members_[hole] = members_[j];
    hole = j;
  }
  members_[hole].key = 0;
}

bool ClassBalanced::IsFull(int64_t c) {
  // Full: a largest class now or at any time since the table filled. The largest count never
  // grows once the table is full, and a class's count falls only when it is drawn as a
  // largest class (which marks it), so "marked, or holding the largest count now" is exact.
  if (full_[c] == 0 && held_[c] == largest()) full_[c] = 1;
  return full_[c] != 0;
}

uint64_t ClassBalanced::Draw(int64_t offer, uint32_t lane) const {
  return RandomBits(seed_, static_cast<uint64_t>(offer), kLane, lane);
}

void ClassBalanced::Check(const WriteBatch& batch) const {
  std::unordered_set<int64_t> unseen;
  for (int64_t i = 0; i < batch.count; ++i) {
    const int64_t label = LabelOf(batch, i);
    if (Find(label) >= 0 || unseen.count(label) != 0) continue;
    unseen.insert(label);
    REVERIE_CHECK(state_->classes + static_cast<int64_t>(unseen.size()) <= max_classes_,
                  name(), " writer: item ", batch.Row(i), " has label ", label, ", a ",
                  fifo_ ? "group beyond max_groups = " : "class beyond max_classes = ", max_classes_, " (", state_->classes, " classes seen; nothing was stored)");
  }
}

int64_t ClassBalanced::Decide(const WriteBatch& batch, int64_t i, int64_t offer, int64_t free_slot, int64_t) {
  const int64_t c = Intern(LabelOf(batch, i));
  ++offered_[c];
  if (free_slot >= 0) {  // room: everything is kept
    Append(c, free_slot);
    return free_slot;
  }
  // (Quotas: a full group left with no item, possible only while groups outnumber slots,
  // takes one back as a group below its share would.)
  if (!IsFull(c) || (fifo_ && held_[c] == 0)) {
    // A largest class (one of those tied, uniformly) gives up a uniformly drawn item.
    const int64_t top = largest();
    const int64_t tied = above_[top - 1];  // classes holding more than top - 1: exactly top
    const int64_t from = order_[MulHi64(Draw(offer, 1), static_cast<uint64_t>(tied))];
    full_[from] = 1;
    if (fifo_) {  // quotas: the largest group's oldest item
      const int64_t slot = Member(from, 0);
      RemoveOldest(from);
      Append(c, slot);
      return slot;
    }
    const auto p = static_cast<int64_t>(MulHi64(Draw(offer, 2), static_cast<uint64_t>(held_[from])));
    const int64_t slot = Member(from, p);
    RemoveAt(from, p);
    Append(c, slot);
    return slot;
  }
  if (fifo_) {  // quotas, a group at its share: its own oldest item makes room
    const int64_t slot = Member(c, 0);
    RemoveOldest(c);
    Append(c, slot);
    return slot;
  }
  // Full: replaces one of its own, uniformly, with probability m_c / n_c.
  if (static_cast<int64_t>(MulHi64(Draw(offer, 1), static_cast<uint64_t>(offered_[c]))) >= held_[c]) return -1;
  return Member(c, static_cast<int64_t>(MulHi64(Draw(offer, 2), static_cast<uint64_t>(held_[c]))));
}

}  // namespace reverie
