// Table: validating writes, and the two write protocols (the FIFO ring, and writers that
// place items under the writer lock). See table.h and ring.h.
#include <algorithm>
#include <optional>
#include <vector>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/table.h"
#include "table_internal.h"

namespace reverie {

namespace {

std::string FieldNames(const std::vector<FieldSpec>& spec) {
  std::string out;
  for (size_t i = 0; i < spec.size(); ++i) out += (i ? ", " : "") + spec[i].name;
  return out;
}

}  // namespace

void Table::Validate(const FieldInput* inputs, size_t n, bool batched,
                            const ArrayView** values, int64_t* leading) const {
  ValidateRows(storage_.spec(), view_ ? view_->num_envs() : 0, inputs, n, batched, values, leading);
}

void Table::ValidateRows(const std::vector<FieldSpec>& spec, int64_t envs, const FieldInput* inputs,
                         size_t n, bool batched, const ArrayView** values, int64_t* leading) {
  std::fill(values, values + spec.size(), nullptr);
  for (size_t i = 0; i < n; ++i) {
    size_t f = 0;
    while (f < spec.size() && spec[f].name != inputs[i].name) ++f;
    if (f == spec.size()) {
      throw std::invalid_argument(internal::Concat("unknown field '", inputs[i].name,
                                                   "'; the buffer's fields are ",
                                                   FieldNames(spec)));
    }
    REVERIE_CHECK(values[f] == nullptr, "field '", spec[f].name, "' given twice");
    values[f] = &inputs[i].value;
  }
  for (size_t f = 0; f < spec.size(); ++f) {
    REVERIE_CHECK(values[f] != nullptr, "missing field '", spec[f].name,
                  "'; every item needs all of ", FieldNames(spec));
  }
  if (batched) *leading = -1;
  for (size_t f = 0; f < spec.size(); ++f) {
    const FieldSpec& field = spec[f];
    const ArrayView& v = *values[f];
    if (v.typed) {
      REVERIE_CHECK_TYPE(v.dtype == field.dtype, "field '", field.name, "': expected dtype ",
                         DTypeName(field.dtype), ", got ", DTypeName(v.dtype));
    } else {
      REVERIE_CHECK_TYPE(UntypedConvertible(v.dtype, field.dtype), "field '", field.name,
                         "': cannot store an untyped ",
                         v.dtype == DType::kFloat64 ? "float" : "integer", " value in a ",
                         DTypeName(field.dtype), " field");
    }
    const int item_dims = static_cast<int>(field.shape.size());
    // Leading axes: one for a batch; for episodes also (T, num_envs) time-major steps.
    int skip = batched ? 1 : 0;
    if (batched && envs > 0 && v.ndim == item_dims + 2) skip = 2;
    bool shape_ok = v.ndim == item_dims + skip;
    for (int d = 0; shape_ok && d < item_dims; ++d) shape_ok = v.shape[d + skip] == field.shape[d];
    if (!shape_ok) {
      const std::string item = ShapeString(field.shape.data(), item_dims);
      std::string inner = item.substr(1, item.size() - 2);  // "(17,)" -> "17"
      if (!inner.empty() && inner.back() == ',') inner.pop_back();
      std::string expected;
      if (!batched) {
        expected = "shape " + item + " for one item";
      } else if (envs > 0) {
        const std::string tail = inner.empty() ? "" : ", " + inner;
        expected = internal::Concat("shape (", envs, tail, ") for one step of ", envs,
                                    " envs, or (T, ", envs, tail, ") for T steps");
      } else {
        expected = "shape (n, *" + item + ") for a batch";
      }
      throw std::invalid_argument(internal::Concat("field '", field.name, "': expected ", expected,
                                                   ", got ", ShapeString(v.shape, v.ndim)));
    }
    if (batched) {
      int64_t rows = v.shape[0];
      if (skip == 2) {
        REVERIE_CHECK(v.shape[1] == envs, "field '", field.name, "': the env axis (axis 1 of (T, ",
                      "num_envs, ...)) must be num_envs=", envs, ", got shape ",
                      ShapeString(v.shape, v.ndim));
        rows *= envs;
      } else if (envs > 0) {
        REVERIE_CHECK(rows % envs == 0, "field '", field.name, "': the env axis must be num_envs=",
                      envs, " (one row per env), got shape ", ShapeString(v.shape, v.ndim));
      }
      if (*leading < 0) {
        *leading = rows;
      } else {
        REVERIE_CHECK(rows == *leading, "field '", field.name, "' has ", rows,
                      envs > 0 ? " rows (env steps x envs)" : " items", " but '", spec[0].name,
                      "' has ", *leading, "; every field needs the same leading length");
      }
    }
    if (!v.typed && v.dtype == DType::kInt64) {
      int64_t bad = 0;
      REVERIE_CHECK(IntegersFitIn(static_cast<const int64_t*>(v.data),
                                  static_cast<size_t>(v.elements()), field.dtype, &bad),
                    "field '", field.name, "': value ", bad, " does not fit dtype ",
                    DTypeName(field.dtype));
    }
  }
}

void Table::CopyRows(const ArrayView* const* values, int64_t row, int64_t slot,
                            int64_t n) {
  const auto& spec = storage_.spec();
  for (size_t f = 0; f < spec.size(); ++f) {
    const ArrayView& v = *values[f];
    const size_t elems = static_cast<size_t>(spec[f].item_elements());
    const size_t row_bytes = spec[f].row_bytes();
    const size_t src_row = elems * DTypeSize(v.dtype);
    const uint8_t* src = static_cast<const uint8_t*>(v.data) + static_cast<size_t>(row) * src_row;
    uint8_t* dst = storage_.column(f) + static_cast<size_t>(slot) * row_bytes;
    const size_t bytes = static_cast<size_t>(n) * row_bytes;
    if (v.typed) {
      RacyCopy(dst, src, bytes);
    } else {
#if defined(REVERIE_TSAN)
      std::vector<uint8_t> converted(bytes);
      ConvertUntyped(src, v.dtype, converted.data(), spec[f].dtype, static_cast<size_t>(n) * elems);
      RacyCopy(dst, converted.data(), bytes);
#else
      ConvertUntyped(src, v.dtype, dst, spec[f].dtype, static_cast<size_t>(n) * elems);
#endif
    }
  }
}

void Table::OnNewItems(int64_t slot, int64_t n, int64_t first_key) {
  // Within a run the slots and keys count up together (one generation).
  if (writer_->scores_by_priority()) {
    for (int64_t j = 0; j < n; ++j) writer_->OnScore((slot + j) % capacity(), selector_->ScoreOf((slot + j) % capacity()));
  }
  (void)first_key;
}

namespace {

// A ragged table's write: the fixed fields' inputs apart from the ragged ones (by field).
struct SplitInputs {
  std::vector<FieldInput> fixed;
  std::vector<const FieldInput*> ragged;
};

SplitInputs Split(const TokenArena& arena, const FieldInput* inputs, size_t n) {
  SplitInputs out;
  out.ragged.assign(arena.fields().size(), nullptr);
  for (size_t i = 0; i < n; ++i) {
    const int f = arena.FieldIndex(inputs[i].name);
    if (f < 0) {
      out.fixed.push_back(inputs[i]);
      continue;
    }
    REVERIE_CHECK(out.ragged[static_cast<size_t>(f)] == nullptr, "field '", inputs[i].name, "' given twice");
    out.ragged[static_cast<size_t>(f)] = &inputs[i];
  }
  return out;
}

}  // namespace

int64_t Table::ExtendGroup(const FieldInput* inputs, size_t n) {
  REVERIE_CHECK(arena_, "add_group is for tables with ragged fields");
  REVERIE_CHECK(arena_fifo_, "add_group stores a group in order: it needs the FIFO writer, not a keyed archive");
  REVERIE_CHECK(!admission_, "add_group stores a whole group: it cannot be combined with an admission rule");
  return Write(inputs, n, /*batched=*/true, nullptr, 0, /*group=*/true);
}

int64_t Table::Write(const FieldInput* inputs, size_t n, bool batched, const uint8_t* admitted,
                     int64_t admitted_size, bool group) {
  constexpr size_t kInline = 16;
  const size_t fields = storage_.num_fields();
  const ArrayView* inline_values[kInline];
  std::vector<const ArrayView*> heap_values(fields > kInline ? fields : 0);
  const ArrayView** values = fields > kInline ? heap_values.data() : inline_values;
  int64_t count = 1;
  std::optional<RaggedRows> ragged;
  SplitInputs split;  // values[] point into it: it lives as long as the call
  if (arena_) {
    split = Split(*arena_, inputs, n);
    Validate(split.fixed.data(), split.fixed.size(), batched, values, &count);
    ragged.emplace();
    arena_->Validate(split.ragged.data(), batched, fields > 0 ? count : -1, &*ragged);
    count = ragged->items;
    if (group) {
      // A group enters whole and leaves whole (arena.h): it must fit the item bound, and half
      // the arena (the ring may skip up to one block at its end).
      int64_t bytes = 0;
      for (const int64_t b : ragged->block_bytes) bytes += b;
      REVERIE_CHECK(count <= capacity(), "a group of ", count, " items does not fit a table of capacity ", capacity());
      REVERIE_CHECK(bytes <= static_cast<int64_t>(arena_->bytes() / 2), "a group of ", count, " items takes ", bytes,
                    " bytes of ragged values; a group may take at most half the arena (", arena_->bytes() / 2,
                    " bytes): raise arena_bytes");
    }
  } else {
    Validate(inputs, n, batched, values, &count);
  }
  if (admitted != nullptr && admitted_size != count) {
    throw std::invalid_argument(internal::Concat("the admission mask has ", admitted_size, " values for ", count,
                                       " items; expected one per item"));
  }
  if (count == 0) return 0;
  WriteBatch batch;
  batch.values = values;
  batch.rows = count;
  batch.count = count;
  // Admission: the caller's mask, then the table's rule, over the whole batch at once.
  std::vector<uint8_t> mask;
  std::vector<int64_t> offered;
  int64_t dropped = 0;  // by the admission rule: counted once the write went through
  if (admitted != nullptr || admission_) {
    REVERIE_CHECK(!view_, "an episode buffer stores every env step: admission rules do not apply");
    mask.assign(static_cast<size_t>(count), 1);
    if (admitted != nullptr) std::copy(admitted, admitted + count, mask.begin());
    if (admission_) dropped = admission_->Admit(batch, mask.data());
    for (int64_t r = 0; r < count; ++r) {
      if (mask[static_cast<size_t>(r)] != 0) offered.push_back(r);
    }
    if (static_cast<int64_t>(offered.size()) < count) {
      batch.offered = offered.data();
      batch.count = static_cast<int64_t>(offered.size());
      if (batch.count == 0) {
        if (admission_) admission_->Count(dropped);
        return 0;
      }
    }
  }
  limiter_.AwaitInsert(batch.count, poll_);
  const int64_t stored = writer_->fifo() ? WriteFifo(batch) : WriteLocked(batch, ragged ? &*ragged : nullptr, group);
  if (admission_) admission_->Count(dropped);
  if (limiter_.enabled()) limiter_.Notify();
  return stored;
}

void Table::Precheck(const FieldInput* inputs, size_t n, bool batched, const uint8_t* admitted,
                     int64_t admitted_size) const {
  std::vector<const ArrayView*> values(storage_.num_fields());
  int64_t count = 1;
  SplitInputs split;  // values[] point into it
  if (arena_) {
    split = Split(*arena_, inputs, n);
    Validate(split.fixed.data(), split.fixed.size(), batched, values.data(), &count);
    RaggedRows rows;
    arena_->Validate(split.ragged.data(), batched, storage_.num_fields() > 0 ? count : -1, &rows);
    count = rows.items;
  } else {
    Validate(inputs, n, batched, values.data(), &count);
  }
  REVERIE_CHECK(admitted == nullptr || admitted_size == count, "the admission mask has ", admitted_size,
                " values for ", count, " items; expected one per item");
  WriteBatch batch;
  batch.values = values.data();
  batch.rows = count;
  batch.count = count;
  std::vector<uint8_t> mask(static_cast<size_t>(count), 1);
  if (admitted != nullptr) std::copy(admitted, admitted + count, mask.begin());
  if (admission_) admission_->Admit(batch, mask.data());
  std::vector<int64_t> offered;
  for (int64_t r = 0; r < count; ++r) {
    if (mask[static_cast<size_t>(r)] != 0) offered.push_back(r);
  }
  batch.offered = offered.data();
  batch.count = static_cast<int64_t>(offered.size());
  writer_->CheckBatch(batch);
}

int64_t Table::Add(const FieldInput* inputs, size_t n, const uint8_t* admitted, int64_t admitted_size) {
  REVERIE_CHECK(!view_ || view_->num_envs() <= 1, "a single-item write stores one row, but this buffer steps num_envs=",
                view_ ? view_->num_envs() : 1, " envs together: write a batch with values of shape (",
                view_ ? view_->num_envs() : 1, ", ...), one row per env");
  return Write(inputs, n, /*batched=*/false, admitted, admitted_size);
}

int64_t Table::Extend(const FieldInput* inputs, size_t n, const uint8_t* admitted, int64_t admitted_size) {
  return Write(inputs, n, /*batched=*/true, admitted, admitted_size);
}

int64_t Table::WriteFifo(const WriteBatch& batch) {
  // An episode table's streams continue from each env's last row (EpisodeView::OnWrite): its
  // writers take turns, whole write by whole write, under the writer lock (taken after the
  // limiter's wait, so a waiting writer never holds up update_priorities).
  std::optional<WriterLock> episode_lock;
  if (view_) episode_lock.emplace(*this);
  const ArrayView* const* values = batch.values;
  const int64_t count = batch.count;
  const int64_t cap = capacity();
  const int64_t first = ring_.Claim(count);  // step 1: insertions [first, first + count) are ours
  // Only the last `capacity` items survive; write just those.
  const int64_t skip = std::max<int64_t>(0, count - cap);
  const int64_t kept = count - skip;
  const int64_t first_n = first + skip;
  const uint32_t pid = CurrentPid();
  const int64_t version = header_->version_stamp.load(std::memory_order_relaxed);
  // Step 2 for every kept insertion. One is lapped (false) only when a newer writer got its
  // slot first; its row is then skipped.
  bool all_acquired = true;
  std::vector<int64_t> lapped;
  int64_t refilled = 0;  // removed slots written again (holes filled)
  int64_t evicted_left = 0;  // samples the evicted items still had (max_times_sampled)
  auto acquire_all = [&] {
    Ring::Cursor c(ring_, first_n);
    for (int64_t k = first_n; k < first_n + kept; ++k, c.Next()) {
      uint64_t previous = Stamp::kEmpty;
      if (!ring_.Acquire(c.key(), c.slot(), pid, &previous)) {
        all_acquired = false;
        lapped.push_back(k);
        continue;
      }
      if (Stamp::IsRemoved(previous)) ++refilled;
      if (meta_) {
        const int64_t generation = ring_.codec().Generation(c.key());
        const int64_t old = Stamp::IsCommitted(previous) ? ring_.codec().Generation(Stamp::KeyOf(previous)) : -1;
        const int64_t used = meta_->OnStore(c.slot(), generation, version, old);
        if (old >= 0) evicted_left += max_times_ - used;
      }
    }
  };
  auto acquired = [&](int64_t n) {
    return all_acquired || !std::binary_search(lapped.begin(), lapped.end(), n);
  };
  // fn(n, slot, key, run) for each run of acquired insertions whose slots and input rows are
  // both consecutive: at most two runs (up to the end of the ring, then from slot 0) for a
  // one-stream ring given every row.
  auto for_each_run = [&](auto&& fn) {
    Ring::Cursor c(ring_, first_n);
    int64_t k = first_n;
    const int64_t end = first_n + kept;
    while (k < end) {
      if (!acquired(k)) {
        ++k;
        c.Next();
        continue;
      }
      const int64_t n0 = k, slot0 = c.slot(), key0 = c.key(), row0 = batch.Row(skip + (k - first_n));
      int64_t len = 0;
      do {
        ++len;
        ++k;
        c.Next();
      } while (k < end && c.slot() == slot0 + len && acquired(k) &&
               batch.Row(skip + (k - first_n)) == row0 + len);
      fn(n0, slot0, key0, row0, len);
    }
  };
  if (selector_->write_locked()) {
    // The slots are marked as being written and get their new priority (or enter the live
    // set) under the writer lock, so an update that checks a slot's stamp under the same lock
    // never gives the new item the old item's priority.
    std::optional<WriterLock> lock;
    if (!episode_lock) lock.emplace(*this);
    acquire_all();
    for_each_run([&](int64_t, int64_t slot, int64_t key, int64_t, int64_t len) {
      selector_->OnInsert(slot, len);
      OnNewItems(slot, len, key);
    });
  } else {
    acquire_all();
  }
  if (refilled > 0) header_->holes.fetch_sub(refilled, std::memory_order_acq_rel);
  if (max_times_ > 0) header_->remaining.fetch_add(kept * max_times_ - evicted_left, std::memory_order_acq_rel);
  // Step 3: copy.
  for_each_run([&](int64_t, int64_t slot, int64_t, int64_t row, int64_t len) {
    CopyRows(values, row, slot, len);
  });
  if (view_) view_->OnWrite(values, first, count, skip, all_acquired ? nullptr : &lapped, ring_);
  // Step 4: publish (each a release store, after all of this writer's bytes).
  Ring::Cursor c(ring_, first_n);
  for (int64_t k = first_n; k < first_n + kept; ++k, c.Next()) {
    if (all_acquired || acquired(k)) ring_.Publish(c.key(), c.slot());
  }
  ring_.CountCommitted(count);
  return count;
}

int64_t Table::WriteLocked(const WriteBatch& offered, const RaggedRows* ragged, bool group) {
  WriterLock lock(*this);
  const int64_t first = ring_.claimed();  // nobody else claims: every write takes this lock
  // A ragged table first reserves the items' blocks in the arena (arena.h), evicting the
  // oldest items until each fits; an offered item that a later one of this call evicts is
  // not placed at all (stored and evicted at once). Its writer (the locked FIFO) places
  // every item it is offered.
  WriteBatch batch = offered;
  std::vector<int64_t> positions, kept_rows, kept_positions;
  int64_t evicted_in_call = 0;
  if (ragged != nullptr) {
    std::vector<int64_t> bytes(static_cast<size_t>(offered.count)), evict;
    std::vector<uint8_t> survives;
    for (int64_t i = 0; i < offered.count; ++i) {
      bytes[static_cast<size_t>(i)] = ragged->block_bytes[static_cast<size_t>(offered.Row(i))];
    }
    arena_->Reserve(bytes.data(), offered.count, size(), arena_fifo_ ? capacity() : 0, group,
                    [&](int64_t key) { return ring_.Holds(key); }, &evict, &survives, &positions);
    std::vector<int64_t> evict_slots(evict.size());
    for (size_t e = 0; e < evict.size(); ++e) evict_slots[e] = ring_.codec().Slot(evict[e]);
    if (meta_ && meta_->columns()) {
      const int64_t now = header_->version_stamp.load(std::memory_order_relaxed);
      for (const int64_t slot : evict_slots) arena_->CountEvictedStaleness(now - meta_->Version(slot));
    }
    if (max_times_ > 0) {
      // The samples the evicted items still had leave with them.
      int64_t left = 0;
      for (size_t e = 0; e < evict.size(); ++e) {
        left += std::max<int64_t>(0, max_times_ - meta_->TimesSampled(evict_slots[e], ring_.codec().Generation(evict[e])));
      }
      header_->remaining.fetch_sub(left, std::memory_order_acq_rel);
    }
    const int64_t gone = RemoveLocked(evict_slots.data(), evict.data(), static_cast<int64_t>(evict.size()));
    // The evicted items' stamps changed before any byte of their blocks is overwritten.
    std::atomic_thread_fence(std::memory_order_release);
    for (int64_t i = 0; i < offered.count; ++i) {
      if (survives[static_cast<size_t>(i)] == 0) continue;
      kept_rows.push_back(offered.Row(i));
      kept_positions.push_back(positions[static_cast<size_t>(i)]);
    }
    evicted_in_call = offered.count - static_cast<int64_t>(kept_rows.size());
    arena_->CountEvicted(gone + evicted_in_call);
    if (meta_ && meta_->columns()) {
      for (int64_t e = 0; e < evicted_in_call; ++e) arena_->CountEvictedStaleness(0);  // written and evicted at once
    }
    batch.offered = kept_rows.data();
    batch.count = static_cast<int64_t>(kept_rows.size());
  }
  std::vector<int64_t> slots(static_cast<size_t>(batch.count));
  const int64_t placed = writer_->Place(batch, ring_, first, slots.data());
  if (ragged != nullptr) {
    // A keyed archive drops items that do not rank above their key's entry: their blocks
    // were reserved for nothing.
    for (int64_t i = 0; i < batch.count; ++i) {
      if (slots[static_cast<size_t>(i)] < 0) arena_->Abandon(kept_positions[static_cast<size_t>(i)]);
    }
  }
  if (placed == 0) return evicted_in_call;
  // A group's members link to their first member and to the next one: their keys up front
  // (the arena keeps free slots, so each member has a slot of its own).
  std::vector<int64_t> group_keys;
  if (group) {
    for (int64_t i = 0; i < batch.count; ++i) {
      const int64_t slot = slots[static_cast<size_t>(i)];
      const uint64_t previous = ring_.LoadStamp(slot);
      const int64_t old = previous == Stamp::kEmpty ? -1 : ring_.codec().Generation(Stamp::KeyOf(previous));
      group_keys.push_back(ring_.codec().Key(old + 1, slot));
    }
  }
  ring_.Claim(placed);
  const KeyCodec& codec = ring_.codec();
  const uint32_t pid = CurrentPid();
  const int64_t version = header_->version_stamp.load(std::memory_order_relaxed);
  int64_t refilled = 0, evicted_left = 0;
  // Stored one after the other, in offer order (a slot placed twice is written twice; each
  // write raises its generation). Runs of consecutive input rows into consecutive fresh
  // slots (the fill) are copied in one go.
  std::vector<int64_t> keys(static_cast<size_t>(placed));  // one run's keys at a time
  // The placed slots are anywhere in the table: start loading their stamps and rows' first
  // lines for writing, so the misses overlap instead of coming one after the other.
  const auto& spec = storage_.spec();
  for (int64_t k = 0; k < batch.count; ++k) {
    const int64_t slot = slots[static_cast<size_t>(k)];
    if (slot < 0) continue;
    ring_.PrefetchStampForWrite(slot);
    for (size_t f = 0; f < spec.size(); ++f) {
      __builtin_prefetch(storage_.column(f) + static_cast<size_t>(slot) * spec[f].row_bytes(), 1);
    }
  }
  int64_t i = 0;
  while (i < batch.count) {
    if (slots[static_cast<size_t>(i)] < 0) {
      ++i;
      continue;
    }
    const int64_t slot0 = slots[static_cast<size_t>(i)], row0 = batch.Row(i);
    int64_t len = 1;
    while (i + len < batch.count && slots[static_cast<size_t>(i + len)] == slot0 + len &&
           batch.Row(i + len) == row0 + len && ring_.LoadStamp(slot0 + len) == Stamp::kEmpty) {
      ++len;
    }
    for (int64_t j = 0; j < len; ++j) {
      const int64_t slot = slot0 + j;
      const uint64_t previous = ring_.LoadStamp(slot);  // stable: every writer holds the lock
      const int64_t old = previous == Stamp::kEmpty ? -1 : codec.Generation(Stamp::KeyOf(previous));
      const int64_t key = codec.Key(old + 1, slot);
      keys[static_cast<size_t>(j)] = key;
      const bool ok = ring_.Acquire(key, slot, pid);
      (void)ok;  // a newer key of this slot cannot exist: writes are serialised by the lock
      if (Stamp::IsRemoved(previous)) ++refilled;
      if (ragged != nullptr) {
        if (Stamp::IsCommitted(previous)) arena_->Release(slot);  // the item bound's victim
        const int64_t row = batch.Row(i + j);
        const size_t member = static_cast<size_t>(i + j);
        arena_->Assign(kept_positions[member], key, slot, &ragged->lengths[static_cast<size_t>(row * arena_->num_groups())],
                       group ? group_keys[0] : -1,
                       group && member + 1 < group_keys.size() ? group_keys[member + 1] : -1);
        arena_->Store(*ragged, row, slot);
      }
      if (meta_) {
        const int64_t used = meta_->OnStore(slot, old + 1, version, Stamp::IsCommitted(previous) ? old : -1);
        if (Stamp::IsCommitted(previous)) evicted_left += max_times_ - used;
      }
    }
    selector_->OnInsert(slot0, len);
    OnNewItems(slot0, len, keys[0]);
    CopyRows(batch.values, row0, slot0, len);
    for (int64_t j = 0; j < len; ++j) ring_.Publish(keys[static_cast<size_t>(j)], slot0 + j);
    i += len;
  }
  if (refilled > 0) header_->holes.fetch_sub(refilled, std::memory_order_acq_rel);
  if (max_times_ > 0) header_->remaining.fetch_add(placed * max_times_ - evicted_left, std::memory_order_acq_rel);
  ring_.CountCommitted(placed);
  return placed + evicted_in_call;
}

}  // namespace reverie
