// Table: in-place updates of stored fields (UpdateFields), and the epoch that in-flight
// samples compare to see whether anything they copied changed under them.
#include <chrono>
#include <sched.h>
#include <vector>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/table.h"
#include "table_internal.h"

namespace reverie {

uint64_t Table::Epoch() const {
  // Both counters only grow, so their sum is unchanged exactly when neither changed.
  return selector_->epoch() + header_->fields_epoch.load(std::memory_order_acquire);
}

uint64_t Table::StableEpoch() const {
  // A process killed in the middle of a tree rebuild or a field update leaves its epoch odd
  // until the next writer repairs it: the wait is bounded so that it cannot hang a sampler.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
  for (;;) {
    const uint64_t s = selector_->epoch();
    const uint64_t f = header_->fields_epoch.load(std::memory_order_acquire);
    if (((s | f) & 1) == 0) return s + f;
    // Still changing after the wait: a value Epoch() never returns, so the caller's copy is
    // not taken (it tries again, and at last under the writer lock, which repairs an epoch
    // that a dead process left odd).
    if (std::chrono::steady_clock::now() >= give_up) return kNoEpoch;
    sched_yield();
  }
}

void Table::Lookup(const int64_t* user_keys, int64_t n, int64_t* keys) {
  WriterLock lock(*this);  // locked writers change their index only under it
  writer_->Lookup(user_keys, n, keys);
  for (int64_t i = 0; i < n; ++i) {
    if (keys[i] < 0) continue;
    const uint64_t stamp = ring_.LoadStamp(keys[i]);
    keys[i] = Stamp::IsCommitted(stamp) ? Stamp::KeyOf(stamp) : -1;
  }
}

int64_t Table::Pin(const int64_t* keys, int64_t n, bool pin) {
  REVERIE_CHECK(!arena_, "a table with ragged fields cannot pin items: its arena frees the oldest items' bytes in "
                "insertion order, and a pinned item would block it");
  if (!writer_->pins()) return writer_->Pin(nullptr, 0, pin);  // its error, for any n
  WriterLock lock(*this);
  for (int64_t k = 0; k < n; ++k) {
    if (!writer_->WasWritten(keys[k], ring_)) throw std::out_of_range(BadKeyMessage(keys[k], k));
  }
  const KeyCodec& codec = ring_.codec();
  std::vector<int64_t> slots;
  slots.reserve(static_cast<size_t>(n));
  int64_t stale = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t slot = codec.Slot(keys[k]);
    const uint64_t stamp = ring_.LoadStamp(slot);
    if (Stamp::IsCommitted(stamp) && Stamp::KeyOf(stamp) == keys[k]) {
      slots.push_back(slot);
    } else {
      ++stale;
    }
  }
  header_->stale.fetch_add(stale, std::memory_order_relaxed);
  return writer_->Pin(slots.data(), static_cast<int64_t>(slots.size()), pin);
}

int64_t Table::PinAll(bool pin) {
  REVERIE_CHECK(!arena_, "a table with ragged fields cannot pin items: its arena frees the oldest items' bytes in "
                "insertion order, and a pinned item would block it");
  if (!writer_->pins()) return writer_->Pin(nullptr, 0, pin);
  WriterLock lock(*this);
  return writer_->PinAll(pin, ring_);
}

void Table::CheckFieldUpdate(int64_t n, const FieldInput* inputs, size_t count) const {
  const auto& spec = storage_.spec();
  // Validation of everything before anything changes.
  std::vector<int> fields(count);
  for (size_t i = 0; i < count; ++i) {
    int f = 0;
    while (f < static_cast<int>(spec.size()) && spec[static_cast<size_t>(f)].name != inputs[i].name) ++f;
    if (f == static_cast<int>(spec.size())) {
      std::string names;
      for (const FieldSpec& s : spec) names += (names.empty() ? "" : ", ") + s.name;
      throw std::invalid_argument(internal::Concat("unknown field '", inputs[i].name,
                                                   "'; the buffer's fields are ", names));
    }
    for (size_t j = 0; j < i; ++j) {
      REVERIE_CHECK(fields[j] != f, "field '", inputs[i].name, "' given twice");
    }
    fields[i] = f;
    for (Part* part : const_cast<Table*>(this)->Parts()) part->CheckFieldUpdate(f, spec[static_cast<size_t>(f)].name);
    const FieldSpec& field = spec[static_cast<size_t>(f)];
    const ArrayView& v = inputs[i].value;
    if (v.typed) {
      REVERIE_CHECK_TYPE(v.dtype == field.dtype, "field '", field.name, "': expected dtype ",
                         DTypeName(field.dtype), ", got ", DTypeName(v.dtype));
    } else {
      REVERIE_CHECK_TYPE(UntypedConvertible(v.dtype, field.dtype), "field '", field.name,
                         "': cannot store an untyped ", v.dtype == DType::kFloat64 ? "float" : "integer",
                         " value in a ", DTypeName(field.dtype), " field");
    }
    const int dims = static_cast<int>(field.shape.size());
    auto item_shape_at = [&](int skip) {
      for (int d = 0; d < dims; ++d) {
        if (v.shape[d + skip] != field.shape[static_cast<size_t>(d)]) return false;
      }
      return true;
    };
    const bool per_key = v.ndim == dims + 1 && v.shape[0] == n && item_shape_at(1);
    const bool one = v.ndim == dims && item_shape_at(0);
    if (!per_key && !one) {
      throw std::invalid_argument(internal::Concat(
          "field '", field.name, "': expected shape (", n, field.shape.empty() ? "" : ", ",
          [&] {
            std::string s = ShapeString(field.shape.data(), dims);
            s = s.substr(1, s.size() - 2);
            if (!s.empty() && s.back() == ',') s.pop_back();
            return s;
          }(),
          ") for ", n, " keys (or one item's shape ", ShapeString(field.shape.data(), dims),
          " for all of them), got ", ShapeString(v.shape, v.ndim)));
    }
    if (!v.typed && v.dtype == DType::kInt64) {
      int64_t bad = 0;
      REVERIE_CHECK(IntegersFitIn(static_cast<const int64_t*>(v.data), static_cast<size_t>(v.elements()),
                                  field.dtype, &bad),
                    "field '", field.name, "': value ", bad, " does not fit dtype ", DTypeName(field.dtype));
    }
  }
}

int64_t Table::UpdateFields(const int64_t* keys, int64_t n, const FieldInput* inputs, size_t count) {
  CheckFieldUpdate(n, inputs, count);
  const auto& spec = storage_.spec();
  std::vector<int> fields(count);
  std::vector<bool> broadcast(count);
  for (size_t i = 0; i < count; ++i) {
    int f = 0;
    while (spec[static_cast<size_t>(f)].name != inputs[i].name) ++f;
    fields[i] = f;
    broadcast[i] = inputs[i].value.ndim == static_cast<int>(spec[static_cast<size_t>(f)].shape.size());
  }
  // Untyped values converted once, to the field's dtype (per key or one item).
  std::vector<std::vector<uint8_t>> converted(count);
  std::vector<const uint8_t*> source(count);
  for (size_t i = 0; i < count; ++i) {
    const FieldSpec& field = spec[static_cast<size_t>(fields[i])];
    const ArrayView& v = inputs[i].value;
    source[i] = static_cast<const uint8_t*>(v.data);
    if (!v.typed) {
      const size_t elems = static_cast<size_t>(v.elements());
      converted[i].resize(elems * DTypeSize(field.dtype));
      ConvertUntyped(v.data, v.dtype, converted[i].data(), field.dtype, elems);
      source[i] = converted[i].data();
    }
  }
  if (n == 0 || count == 0) return 0;
  const KeyCodec& codec = ring_.codec();
  const uint32_t pid = CurrentPid();
  int64_t skipped = 0;
  {
    WriterLock lock(*this);
    for (int64_t k = 0; k < n; ++k) {
      if (!writer_->WasWritten(keys[k], ring_)) throw std::out_of_range(BadKeyMessage(keys[k], k));
    }
    for (int64_t k = 0; k < n; ++k) ring_.PrefetchStampForWrite(codec.Slot(keys[k]));
    // Odd while the rows change (a sample that overlaps it copies again), then a release
    // fence: a reader that sees any byte written below sees the odd epoch after its own
    // acquire fence (the pairing of ring.h's protocol).
    header_->fields_epoch.fetch_add(1, std::memory_order_acq_rel);
    std::atomic_thread_fence(std::memory_order_release);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t slot = codec.Slot(keys[k]);
      // The slot is this item's for the copy: a lock-free FIFO writer that laps it waits.
      if (!ring_.Lock(keys[k], slot, pid)) {
        ++skipped;
        continue;
      }
      for (size_t i = 0; i < count; ++i) {
        const size_t bytes = spec[static_cast<size_t>(fields[i])].row_bytes();
        const uint8_t* src = source[i] + (broadcast[i] ? 0 : static_cast<size_t>(k) * bytes);
        RacyCopy(storage_.column(static_cast<size_t>(fields[i])) + static_cast<size_t>(slot) * bytes, src, bytes);
      }
      ring_.Publish(keys[k], slot);
    }
    header_->fields_epoch.fetch_add(1, std::memory_order_release);
  }
  header_->stale.fetch_add(skipped, std::memory_order_relaxed);
  return skipped;
}

}  // namespace reverie
