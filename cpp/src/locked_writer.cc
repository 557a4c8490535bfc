#include "reverie/locked_writer.h"

#include <algorithm>
#include <new>
#include <numeric>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/ring.h"

namespace reverie {

void Writer::Lookup(const int64_t*, int64_t, int64_t*) const {
  throw std::invalid_argument("this buffer's writer keeps no user keys to look items up by (a "
                              "keyed_archive writer does)");
}

int64_t Writer::Pin(const int64_t*, int64_t, bool) {
  throw std::invalid_argument("this buffer's writer cannot pin items: pins need a writer made with pins (a FIFO or "
                              "reservoir writer with the setting \"pins\": true); a top-k, class-balanced or keyed-archive writer "
                              "decides what it keeps by its own rule");
}

int64_t Writer::PinAll(bool pin, const Ring&) { return Pin(nullptr, 0, pin); }

int64_t Writer::Place(const WriteBatch&, const Ring&, int64_t, int64_t*) {
  throw std::logic_error("this writer stores through the FIFO ring, not by placing items");
}

std::vector<size_t> LockedWriter::Sections() const {
  const size_t array = static_cast<size_t>(capacity_) * sizeof(int64_t);
  std::vector<size_t> out = {sizeof(Counters), array, array, sizeof(Sizes),
                             pins_enabled_ ? static_cast<size_t>(capacity_) : 0};
  for (size_t bytes : DerivedSections()) out.push_back(bytes);
  return out;
}

void LockedWriter::Bind(const std::vector<uint8_t*>& sections, bool fresh) {
  counters_ = reinterpret_cast<Counters*>(sections[0]);
  insertion_ = reinterpret_cast<int64_t*>(sections[1]);
  free_ = reinterpret_cast<int64_t*>(sections[2]);
  sizes_ = reinterpret_cast<Sizes*>(sections[3]);
  pins_ = pins_enabled_ ? sections[4] : nullptr;
  if (fresh) {
    *counters_ = Counters{0, 0, 0, 0, 0, 0};
    new (sizes_) Sizes{{0}, {0}};
    if (pins_ != nullptr) std::fill(pins_, pins_ + capacity_, uint8_t{0});
  }
  BindDerived(std::vector<uint8_t*>(sections.begin() + 5, sections.end()), fresh);
}

void LockedWriter::StateArrays(std::vector<StateArray>* out) {
  out->push_back(StateArray{name_ + ".inserted", "int64", {capacity_}, reinterpret_cast<uint8_t*>(insertion_), true});
  out->push_back(StateArray{name_ + ".free", "int64", {capacity_}, reinterpret_cast<uint8_t*>(free_), false});
  if (pins_ != nullptr) out->push_back(StateArray{name_ + ".pinned", "uint8", {capacity_}, pins_, true});
}

void LockedWriter::SaveScalars(ConfigValue* out) const {
  out->Set(name_ + ".offers", ConfigValue::Int(counters_->offers));
  out->Set(name_ + ".rejected", ConfigValue::Int(counters_->rejected));
  out->Set(name_ + ".filled", ConfigValue::Int(counters_->filled));
  out->Set(name_ + ".freed", ConfigValue::Int(counters_->freed));
  if (pins_ != nullptr) out->Set(name_ + ".pin_new", ConfigValue::Int(counters_->pin_new));
}

void LockedWriter::Restore(const ConfigValue& scalars, const Ring& stamps) {
  Counters c{StateInt(scalars, name_ + ".offers"), StateInt(scalars, name_ + ".rejected"),
             StateInt(scalars, name_ + ".filled"), StateInt(scalars, name_ + ".freed"), 0,
             pins_ != nullptr ? StateInt(scalars, name_ + ".pin_new") : 0};
  REVERIE_CHECK(c.pin_new == 0 || c.pin_new == 1, name_, " state: pin_new is ", c.pin_new, ", not 0 or 1");
  REVERIE_CHECK(c.offers >= 0 && c.rejected >= 0 && c.rejected <= c.offers, name_,
                " state: ", c.rejected, " of ", c.offers, " offers dropped");
  REVERIE_CHECK(c.filled >= 0 && c.filled <= capacity_ && c.freed >= 0 && c.freed <= c.filled,
                name_, " state: ", c.filled, " slots filled and ", c.freed, " freed, capacity ", capacity_);
  int64_t empty = 0;
  for (int64_t slot = 0; slot < capacity_; ++slot) {
    const uint64_t stamp = stamps.LoadStamp(slot);
    REVERIE_CHECK((slot < c.filled) == (stamp != Stamp::kEmpty), name_, " state: slot ", slot,
                  slot < c.filled ? " should have been written" : " should never have been written");
    empty += slot < c.filled && !Stamp::IsCommitted(stamp);
    if (pins_ != nullptr && pins_[slot] != 0) {
      REVERIE_CHECK(pins_[slot] == 1 && Stamp::IsCommitted(stamp), name_, " state: slot ", slot,
                    " is pinned but holds no item (or its pin byte is ", int{pins_[slot]}, ")");
      ++c.pinned;
    }
    if (Stamp::IsCommitted(stamp)) {
      REVERIE_CHECK(insertion_[slot] >= 0 && insertion_[slot] < stamps.committed(), name_,
                    " state: slot ", slot, " has insertion number ", insertion_[slot], " of ",
                    stamps.committed(), " items written");
    }
  }
  REVERIE_CHECK(empty == c.freed, name_, " state: ", empty, " slots are free but ", c.freed,
                " are listed free");
  for (int64_t i = 0; i < c.freed; ++i) {
    REVERIE_CHECK(free_[i] >= 0 && free_[i] < c.filled && Stamp::IsRemoved(stamps.LoadStamp(free_[i])),
                  name_, " state: free entry ", i, " (slot ", free_[i], ") holds an item");
  }
  const int64_t pinned = c.pinned;
  c.pinned = 0;
  *counters_ = c;
  __atomic_store_n(&counters_->pinned, pinned, __ATOMIC_RELAXED);
  sizes_->held.store(c.filled - c.freed, std::memory_order_release);
  sizes_->filled.store(c.filled, std::memory_order_release);
  RestoreDerived(scalars, stamps);
}

int64_t LockedWriter::NextFree() const {
  if (counters_->filled < capacity_) return counters_->filled;
  if (counters_->freed > 0) return free_[counters_->freed - 1];
  return -1;
}

void LockedWriter::TakeFree(int64_t slot) {
  if (slot == counters_->filled && counters_->filled < capacity_) {
    ++counters_->filled;
    sizes_->filled.store(counters_->filled, std::memory_order_release);
  } else {
    --counters_->freed;  // the top of the stack (NextFree)
  }
  sizes_->held.fetch_add(1, std::memory_order_acq_rel);
}

int64_t LockedWriter::Place(const WriteBatch& batch, const Ring&, int64_t first_insertion,
                            int64_t* slots) {
  Check(batch);
  int64_t placed = 0;
  for (int64_t i = 0; i < batch.count; ++i) {
    const int64_t free_slot = NextFree();
    const int64_t insertion = first_insertion + placed;
    const int64_t slot = Decide(batch, i, counters_->offers, free_slot, insertion);
    ++counters_->offers;
    slots[i] = slot;
    if (slot < 0) {
      ++counters_->rejected;
      continue;
    }
    if (slot == free_slot) TakeFree(slot);
    // Read without the lock by samples that report metadata (InsertionsOf): a relaxed store.
    StoreRelaxed(reinterpret_cast<uint64_t*>(&insertion_[slot]), static_cast<uint64_t>(insertion));
    if (pins_ != nullptr && counters_->pin_new != 0 && pins_[slot] == 0) {
      pins_[slot] = 1;
      __atomic_fetch_add(&counters_->pinned, 1, __ATOMIC_RELAXED);  // read without the lock
    }
    Placed(slot);
    ++placed;
  }
  return placed;
}

void LockedWriter::OnRemove(int64_t slot) {
  if (pinned(slot)) {  // removers skip pinned items; a slot freed otherwise loses its pin
    pins_[slot] = 0;
    __atomic_fetch_sub(&counters_->pinned, 1, __ATOMIC_RELAXED);
  }
  free_[counters_->freed++] = slot;
  sizes_->held.fetch_sub(1, std::memory_order_acq_rel);
}

int64_t LockedWriter::Pin(const int64_t* slots, int64_t n, bool pin) {
  if (pins_ == nullptr) return Writer::Pin(slots, n, pin);
  std::vector<int64_t> changed;
  for (int64_t i = 0; i < n; ++i) {
    if ((pins_[slots[i]] != 0) == pin) continue;  // already so (or repeated in the call)
    pins_[slots[i]] = pin ? 1 : 0;
    changed.push_back(slots[i]);
  }
  const auto count = static_cast<int64_t>(changed.size());
  __atomic_fetch_add(&counters_->pinned, pin ? count : -count, __ATOMIC_RELAXED);
  if (!changed.empty()) OnPins(changed, pin);
  return count;
}

int64_t LockedWriter::PinAll(bool pin, const Ring& stamps) {
  if (pins_ == nullptr) return Writer::Pin(nullptr, 0, pin);
  counters_->pin_new = pin ? 1 : 0;
  std::vector<int64_t> held;
  for (int64_t slot = 0; slot < counters_->filled; ++slot) {
    if (Stamp::IsCommitted(stamps.LoadStamp(slot))) held.push_back(slot);
  }
  return Pin(held.data(), static_cast<int64_t>(held.size()), pin);
}

void LockedWriter::InsertionsOf(const int64_t* keys, int64_t* out, int64_t n, const Ring& stamps) const {
  const KeyCodec& codec = stamps.codec();
  for (int64_t i = 0; i < n; ++i) {
    out[i] = -1;
    if (!codec.WellFormed(keys[i], capacity_)) continue;
    const int64_t slot = codec.Slot(keys[i]);
    const uint64_t stamp = stamps.LoadStamp(slot);
    if (Stamp::IsCommitted(stamp) && Stamp::KeyOf(stamp) == keys[i]) {
      out[i] = static_cast<int64_t>(LoadRelaxed(reinterpret_cast<const uint64_t*>(&insertion_[slot])));
    }
  }
}

bool LockedWriter::WasWritten(int64_t key, const Ring& stamps) const {
  const KeyCodec& codec = stamps.codec();
  if (!codec.WellFormed(key, capacity_)) return false;
  const uint64_t stamp = stamps.LoadStamp(codec.Slot(key));
  if (stamp == Stamp::kEmpty || Stamp::IsWriting(stamp)) return false;
  return codec.Generation(key) <= codec.Generation(Stamp::KeyOf(stamp));
}

std::vector<int64_t> LockedWriter::StoredKeys(const Ring& stamps) const {
  std::vector<int64_t> slots;
  for (int64_t slot = 0; slot < capacity_; ++slot) {
    if (Stamp::IsCommitted(stamps.LoadStamp(slot))) slots.push_back(slot);
  }
  std::sort(slots.begin(), slots.end(), [&](int64_t a, int64_t b) { return insertion_[a] < insertion_[b]; });
  std::vector<int64_t> keys;
  keys.reserve(slots.size());
  for (int64_t slot : slots) keys.push_back(Stamp::KeyOf(stamps.LoadStamp(slot)));
  return keys;
}

}  // namespace reverie
