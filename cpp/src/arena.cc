#include "reverie/arena.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/ring.h"

namespace reverie {

namespace {

size_t Align8(size_t n) { return (n + 7) / 8 * 8; }

int64_t LoadWord(const int64_t* p) {
  return static_cast<int64_t>(LoadRelaxed(reinterpret_cast<const uint64_t*>(p)));
}
void StoreWord(int64_t* p, int64_t v) { StoreRelaxed(reinterpret_cast<uint64_t*>(p), static_cast<uint64_t>(v)); }

}  // namespace

int64_t RaggedFieldSpec::token_elements() const {
  int64_t n = 1;
  for (int64_t d : rest) n *= d;
  return n;
}

TokenArena::TokenArena(const ConfigValue& settings, int64_t capacity, KeyCodec codec)
    : capacity_(capacity), codec_(codec) {
  for (const auto& [key, value] : settings.AsMap("ragged")) {
    (void)value;
    REVERIE_CHECK(key == "bytes" || key == "groups" || key == "fields", "the ragged settings have no '", key,
                  "'; they are bytes, groups, fields");
  }
  const int64_t bytes = settings.At("bytes", "ragged").AsInt("the arena's bytes");
  REVERIE_CHECK(bytes >= 64, "the arena must hold at least 64 bytes, got ", bytes);
  bytes_ = static_cast<size_t>(bytes);
  for (const ConfigValue& g : settings.At("groups", "ragged").AsList("ragged groups")) {
    groups_.push_back(g.AsString("a ragged group's name"));
  }
  REVERIE_CHECK(!groups_.empty() && groups_.size() <= kMaxGroups, "a ragged table has 1 to ", kMaxGroups,
                " length groups, got ", groups_.size());
  for (const ConfigValue& entry : settings.At("fields", "ragged").AsList("ragged fields")) {
    const auto& parts = entry.AsList("a ragged field ([name, dtype, rest, group])");
    // A fifth entry, the pad value of padded batches, is the Python layer's (kept with the
    // configuration so that checkpoints and attached processes pad alike).
    REVERIE_CHECK(parts.size() == 4 || parts.size() == 5, "a ragged field must be [name, dtype, rest shape, group] "
                  "or [name, dtype, rest shape, group, pad], got ", parts.size(), " items");
    RaggedFieldSpec f;
    f.name = parts[0].AsString("a ragged field's name");
    f.dtype = DTypeFromName(parts[1].AsString("ragged field '" + f.name + "' dtype"));
    for (const ConfigValue& d : parts[2].AsList("ragged field '" + f.name + "' shape")) {
      f.rest.push_back(d.AsInt("ragged field '" + f.name + "' shape"));
      REVERIE_CHECK(f.rest.back() >= 0, "ragged field '", f.name, "': dims must be >= 0");
    }
    REVERIE_CHECK(f.rest.size() + 1 <= static_cast<size_t>(kMaxDims), "ragged field '", f.name, "' has too many dims");
    const std::string& group = parts[3].AsString("ragged field '" + f.name + "' group");
    const auto it = std::find(groups_.begin(), groups_.end(), group);
    REVERIE_CHECK(it != groups_.end(), "ragged field '", f.name, "' names group '", group, "', which is not declared");
    f.group = static_cast<int>(it - groups_.begin());
    for (const RaggedFieldSpec& other : fields_) {
      REVERIE_CHECK(other.name != f.name, "ragged field '", f.name, "' declared twice");
    }
    fields_.push_back(std::move(f));
  }
  REVERIE_CHECK(!fields_.empty(), "a ragged table needs at least one ragged field");
  for (int g = 0; g < num_groups(); ++g) {
    REVERIE_CHECK(std::any_of(fields_.begin(), fields_.end(), [&](const RaggedFieldSpec& f) { return f.group == g; }),
                  "ragged group '", groups_[static_cast<size_t>(g)], "' has no field");
  }
  queue_size_ = std::max<int64_t>(16, 2 * capacity);
}

int TokenArena::FieldIndex(std::string_view name) const {
  for (size_t f = 0; f < fields_.size(); ++f) {
    if (fields_[f].name == name) return static_cast<int>(f);
  }
  return -1;
}

size_t TokenArena::RunOffset(const int64_t* lengths, int field) const {
  size_t at = 0;
  for (int f = 0; f < field; ++f) {
    at += Align8(static_cast<size_t>(lengths[fields_[static_cast<size_t>(f)].group]) * fields_[static_cast<size_t>(f)].token_bytes());
  }
  return at;
}

size_t TokenArena::BlockBytes(const int64_t* lengths) const {
  // At least 8 bytes: every block holds a queue entry's worth of space, so the queue never
  // outgrows what the bytes can hold.
  return std::max<size_t>(8, RunOffset(lengths, static_cast<int>(fields_.size())));
}

void TokenArena::Validate(const FieldInput* const* values, bool batched, int64_t items, RaggedRows* rows) const {
  const size_t nf = fields_.size();
  const int ng = num_groups();
  rows->values.assign(nf, nullptr);
  // The items: from the fixed fields, else from the first ragged field.
  int64_t n = items;
  for (size_t f = 0; f < nf; ++f) {
    const RaggedFieldSpec& spec = fields_[f];
    const FieldInput* in = values[f];
    REVERIE_CHECK(in != nullptr, "missing ragged field '", spec.name, "'");
    const ArrayView& v = in->value;
    const std::string rest = ShapeString(spec.rest.data(), static_cast<int>(spec.rest.size()));
    REVERIE_CHECK_TYPE(v.typed && v.dtype == spec.dtype, "ragged field '", spec.name, "': expected dtype ",
                       DTypeName(spec.dtype), ", got ", v.typed ? DTypeName(v.dtype) : "untyped Python numbers");
    bool shape_ok = v.ndim == static_cast<int>(spec.rest.size()) + 1;
    for (size_t d = 0; shape_ok && d < spec.rest.size(); ++d) shape_ok = v.shape[d + 1] == spec.rest[d];
    REVERIE_CHECK(shape_ok, "ragged field '", spec.name, "': expected shape (L, *", rest, ") ",
                  batched ? "(the items' tokens packed)" : "for one item", ", got ", ShapeString(v.shape, v.ndim));
    if (batched) {
      REVERIE_CHECK(in->lengths != nullptr, "ragged field '", spec.name, "': a batch needs each item's length "
                    "(packed values with lengths, or a list of per-item values)");
      if (n < 0) n = in->num_lengths;
      REVERIE_CHECK(in->num_lengths == n, "ragged field '", spec.name, "' has ", in->num_lengths, " items but ",
                    items >= 0 ? "the fixed fields have " : "'" + fields_[0].name + "' has ", n,
                    "; every field needs the same number of items");
    } else {
      REVERIE_CHECK(in->lengths == nullptr, "ragged field '", spec.name, "': one item takes its values alone, not lengths");
      n = 1;
    }
  }
  rows->items = n;
  rows->lengths.assign(static_cast<size_t>(n * ng), -1);
  rows->starts.assign(static_cast<size_t>(n * ng), 0);
  std::vector<int> first_of_group(static_cast<size_t>(ng), -1);
  for (size_t f = 0; f < nf; ++f) {
    const RaggedFieldSpec& spec = fields_[f];
    const FieldInput* in = values[f];
    const int g = spec.group;
    const bool first = first_of_group[static_cast<size_t>(g)] < 0;
    if (first) first_of_group[static_cast<size_t>(g)] = static_cast<int>(f);
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = batched ? in->lengths[i] : in->value.shape[0];
      REVERIE_CHECK(len >= 0 && len <= in->value.shape[0] && len <= static_cast<int64_t>(bytes_), "ragged field '",
                    spec.name, "': item ", i, " has length ", len, "; lengths must be >= 0 and within the values given");
      int64_t& slot = rows->lengths[static_cast<size_t>(i * ng + g)];
      if (first) {
        slot = len;
        rows->starts[static_cast<size_t>(i * ng + g)] = total;
      } else {
        REVERIE_CHECK(len == slot, "ragged field '", spec.name, "': item ", i, " has length ", len, " but '",
                      fields_[static_cast<size_t>(first_of_group[static_cast<size_t>(g)])].name, "' has ", slot,
                      "; the fields of group '", groups_[static_cast<size_t>(g)], "' share their lengths");
      }
      total += len;
    }
    REVERIE_CHECK(total == in->value.shape[0], "ragged field '", spec.name, "': the lengths add up to ", total,
                  " tokens but the packed values have ", in->value.shape[0]);
    rows->values[f] = &in->value;
  }
  rows->block_bytes.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const size_t block = BlockBytes(&rows->lengths[static_cast<size_t>(i * ng)]);
    REVERIE_CHECK(block <= bytes_, "item ", i, " takes ", block, " bytes of ragged values, more than the whole arena (",
                  bytes_, " bytes): raise arena_bytes");
    rows->block_bytes[static_cast<size_t>(i)] = static_cast<int64_t>(block);
  }
}

void TokenArena::Assign(int64_t position, int64_t key, int64_t slot, const int64_t* lengths, int64_t group_head,
                        int64_t group_next) {
  Entry& e = queue_[position % queue_size_];
  e.key = key;
  int64_t* h = handle(slot);
  StoreWord(h, e.position);
  for (int g = 0; g < num_groups(); ++g) {
    StoreWord(h + 1 + g, lengths[g]);
    header_->held_tokens[g].fetch_add(lengths[g], std::memory_order_relaxed);
  }
  const int64_t head = group_head >= 0 ? group_head : key;
  StoreWord(h + 1 + num_groups(), head);
  StoreWord(h + 2 + num_groups(), group_next);
  if (head == key) header_->groups_held.fetch_add(1, std::memory_order_relaxed);
  header_->held_bytes.fetch_add(e.bytes, std::memory_order_relaxed);
}

void TokenArena::GroupLinks(int64_t slot, int64_t* head, int64_t* next) const {
  const int64_t* h = handle(slot);
  *head = LoadWord(h + 1 + num_groups());
  *next = LoadWord(h + 2 + num_groups());
}

void TokenArena::RepairPending() {
  const int64_t qhead = header_->qhead.load(std::memory_order_relaxed);
  for (int64_t p = header_->qtail.load(std::memory_order_relaxed); p < qhead; ++p) {
    Entry& e = queue_[p % queue_size_];
    if (e.key < -1) e.key = -1;  // reserved by a writer that died before placing it
  }
}

bool TokenArena::Released(int64_t slot) const {
  const int64_t position = handle(slot)[0];
  return position < header_->tail.load(std::memory_order_relaxed);
}

int64_t TokenArena::groups_held() const { return header_->groups_held.load(std::memory_order_relaxed); }

void TokenArena::CountEvictedStaleness(int64_t staleness) {
  const int64_t b = std::min<int64_t>(std::max<int64_t>(staleness, 0), kStalenessBuckets - 1);
  header_->evicted_staleness[b].fetch_add(1, std::memory_order_relaxed);
}

void TokenArena::EvictedStaleness(int64_t* buckets) const {
  for (int b = 0; b < kStalenessBuckets; ++b) buckets[b] = header_->evicted_staleness[b].load(std::memory_order_relaxed);
}

void TokenArena::Store(const RaggedRows& rows, int64_t row, int64_t slot) {
  const int ng = num_groups();
  const int64_t* lengths = &rows.lengths[static_cast<size_t>(row * ng)];
  uint8_t* block = data_ + handle(slot)[0] % static_cast<int64_t>(bytes_);
  for (size_t f = 0; f < fields_.size(); ++f) {
    const RaggedFieldSpec& spec = fields_[f];
    const size_t tb = spec.token_bytes();
    const int64_t start = rows.starts[static_cast<size_t>(row * ng + spec.group)];
    const auto* src = static_cast<const uint8_t*>(rows.values[f]->data) + static_cast<size_t>(start) * tb;
    RacyCopy(block + RunOffset(lengths, static_cast<int>(f)), src, static_cast<size_t>(lengths[spec.group]) * tb);
  }
}

void TokenArena::Release(int64_t slot) {
  // Once per item: when it leaves (evicted, removed, or overwritten by the item bound). Its
  // handle stays: a sampler that drew it before it left may still copy its bytes, which
  // stay valid until the tail passes them (Intact).
  const int64_t* h = handle(slot);
  if (h[0] < 0) return;
  const size_t block = BlockBytes(h + 1);
  header_->held_bytes.fetch_sub(static_cast<int64_t>(block), std::memory_order_relaxed);
  for (int g = 0; g < num_groups(); ++g) header_->held_tokens[g].fetch_sub(h[1 + g], std::memory_order_relaxed);
  // A group is counted while its first member is held.
  if (h[1 + num_groups()] >= 0 && codec_.Slot(h[1 + num_groups()]) == slot) {
    header_->groups_held.fetch_sub(1, std::memory_order_relaxed);
  }
}

bool TokenArena::Handle(int64_t slot, int64_t* offset, int64_t* lengths, int64_t* position) const {
  const int64_t* h = handle(slot);
  *position = LoadWord(h);
  if (*position < 0) return false;
  *offset = *position % static_cast<int64_t>(bytes_);
  for (int g = 0; g < num_groups(); ++g) {
    lengths[g] = LoadWord(h + 1 + g);
    if (lengths[g] < 0 || lengths[g] > static_cast<int64_t>(bytes_)) return false;
  }
  return static_cast<size_t>(*offset) + BlockBytes(lengths) <= bytes_;
}

bool TokenArena::Intact(int64_t position) const {
  // After the reader's acquire fence: the tail is stored before a released block's bytes
  // are overwritten (with a release fence between), so a tail at or below the block's
  // position means none of its bytes was overwritten during the copy.
  return position >= header_->tail.load(std::memory_order_relaxed);
}

int64_t TokenArena::used_bytes() const {
  return header_->head.load(std::memory_order_relaxed) - header_->tail.load(std::memory_order_relaxed);
}
int64_t TokenArena::held_bytes() const { return header_->held_bytes.load(std::memory_order_relaxed); }
int64_t TokenArena::held_tokens(int group) const { return header_->held_tokens[group].load(std::memory_order_relaxed); }
int64_t TokenArena::evicted_items() const { return header_->evicted.load(std::memory_order_relaxed); }
void TokenArena::CountEvicted(int64_t n) { header_->evicted.fetch_add(n, std::memory_order_relaxed); }

std::vector<size_t> TokenArena::Sections() const {
  return {sizeof(Header), bytes_, static_cast<size_t>(capacity_ * width()) * sizeof(int64_t),
          static_cast<size_t>(queue_size_) * sizeof(Entry)};
}

void TokenArena::Bind(const std::vector<uint8_t*>& sections, bool fresh) {
  header_ = reinterpret_cast<Header*>(sections[0]);
  data_ = sections[1];
  handles_ = reinterpret_cast<int64_t*>(sections[2]);
  queue_ = reinterpret_cast<Entry*>(sections[3]);
  if (fresh) {
    new (header_) Header();
    for (auto& t : header_->held_tokens) t.store(0, std::memory_order_relaxed);
    for (auto& t : header_->evicted_staleness) t.store(0, std::memory_order_relaxed);
    for (int64_t s = 0; s < capacity_; ++s) handle(s)[0] = -1;
  }
}

void TokenArena::StateArrays(std::vector<StateArray>* out) {
  out->push_back({"arena.data", "uint8", {static_cast<int64_t>(bytes_)}, data_, false});
  out->push_back({"arena.handles", "int64", {capacity_, width()},
                  reinterpret_cast<uint8_t*>(handles_), true});
  out->push_back({"arena.queue", "int64", {queue_size_, 4}, reinterpret_cast<uint8_t*>(queue_), false});
}

void TokenArena::SaveScalars(ConfigValue* out) const {
  out->Set("arena.head", ConfigValue::Int(header_->head.load()));
  out->Set("arena.tail", ConfigValue::Int(header_->tail.load()));
  out->Set("arena.qhead", ConfigValue::Int(header_->qhead.load()));
  out->Set("arena.qtail", ConfigValue::Int(header_->qtail.load()));
  out->Set("arena.evicted", ConfigValue::Int(header_->evicted.load()));
  out->Set("arena.group_serial", ConfigValue::Int(header_->group_serial.load()));
  for (int b = 0; b < kStalenessBuckets; ++b) {
    out->Set("arena.evicted_staleness_" + std::to_string(b), ConfigValue::Int(header_->evicted_staleness[b].load()));
  }
}

void TokenArena::Restore(const ConfigValue& scalars, const Ring& slots) {
  const int64_t head = StateInt(scalars, "arena.head"), tail = StateInt(scalars, "arena.tail");
  const int64_t qhead = StateInt(scalars, "arena.qhead"), qtail = StateInt(scalars, "arena.qtail");
  const int64_t size = static_cast<int64_t>(bytes_);
  REVERIE_CHECK(0 <= tail && tail <= head && head - tail <= size && 0 <= qtail && qtail <= qhead &&
                    qhead - qtail <= queue_size_,
                "the saved arena's positions do not fit an arena of ", bytes_, " bytes and ", queue_size_, " blocks");
  int64_t prev_end = tail;
  const int64_t serial = StateInt(scalars, "arena.group_serial");
  std::vector<int64_t> entry_of(static_cast<size_t>(capacity_), -1);  // slot -> its item's queue position
  for (int64_t p = qtail; p < qhead; ++p) {
    const Entry& e = queue_[p % queue_size_];
    REVERIE_CHECK(e.position >= prev_end && e.bytes >= 8 && e.position + e.bytes <= head &&
                      e.position % size + e.bytes <= size && e.key >= -1 && e.group >= 0 && e.group <= serial,
                  "the saved arena's block ", p, " does not fit its positions");
    prev_end = e.position + e.bytes;
    if (e.key >= 0) {
      REVERIE_CHECK(codec_.WellFormed(e.key, capacity_), "the saved arena's block ", p, " names no key of this table");
      const int64_t slot = codec_.Slot(e.key);
      if (Stamp::IsCommitted(slots.LoadStamp(slot)) && Stamp::KeyOf(slots.LoadStamp(slot)) == e.key) {
        REVERIE_CHECK(entry_of[static_cast<size_t>(slot)] < 0, "the saved arena names slot ", slot, " twice");
        entry_of[static_cast<size_t>(slot)] = p;
      }
    }
  }
  header_->head.store(head);
  header_->tail.store(tail);
  header_->qhead.store(qhead);
  header_->qtail.store(qtail);
  header_->evicted.store(StateInt(scalars, "arena.evicted"));
  header_->group_serial.store(StateInt(scalars, "arena.group_serial"));
  for (int b = 0; b < kStalenessBuckets; ++b) {
    header_->evicted_staleness[b].store(StateInt(scalars, "arena.evicted_staleness_" + std::to_string(b)));
  }
  int64_t held = 0, groups = 0;
  std::vector<int64_t> tokens(static_cast<size_t>(num_groups()), 0);
  for (int64_t s = 0; s < capacity_; ++s) {
    int64_t* h = handle(s);
    if (!Stamp::IsCommitted(slots.LoadStamp(s))) {
      h[0] = -1;
      continue;
    }
    REVERIE_CHECK(h[0] >= tail && h[0] < head && entry_of[static_cast<size_t>(s)] >= 0,
                  "the saved arena has no block for the item in slot ", s);
    for (int g = 0; g < num_groups(); ++g) {
      REVERIE_CHECK(h[1 + g] >= 0 && h[1 + g] <= size, "the saved arena has a bad length in slot ", s);
    }
    const Entry& e = queue_[entry_of[static_cast<size_t>(s)] % queue_size_];
    REVERIE_CHECK(e.position == h[0] && e.bytes == static_cast<int64_t>(BlockBytes(h + 1)),
                  "the saved arena's block of slot ", s, " is not the one its queue holds");
    for (int link = 1; link <= 2; ++link) {
      const int64_t k = h[num_groups() + link];
      REVERIE_CHECK(k == -1 || codec_.WellFormed(k, capacity_), "the saved arena has a bad group link in slot ", s);
    }
    REVERIE_CHECK(static_cast<size_t>(h[0] % size) + BlockBytes(h + 1) <= bytes_, "the saved arena's block of slot ", s,
                  " lies outside the arena");
    held += static_cast<int64_t>(BlockBytes(h + 1));
    if (h[1 + num_groups()] >= 0 && codec_.Slot(h[1 + num_groups()]) == s) ++groups;
    for (int g = 0; g < num_groups(); ++g) tokens[static_cast<size_t>(g)] += h[1 + g];
  }
  header_->held_bytes.store(held);
  header_->groups_held.store(groups);
  for (int g = 0; g < num_groups(); ++g) header_->held_tokens[g].store(tokens[static_cast<size_t>(g)]);
}

}  // namespace reverie
