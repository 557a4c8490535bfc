// The writer interface: where an offered item goes, or whether it is dropped (admission by
// the writer's own rule), and what it evicts when the table is full (its remover).
//
// Built-in writers:
//  - FifoWriter ("fifo", fifo_writer.h): the lock-free ring; evicts the oldest item.
//  - ReservoirWriter ("reservoir", reservoir_writer.h): Algorithm R over the whole stream.
//  - KeepTopK ("keep_top_k", keep_top_k.h): keeps the k best by a score; evicts the lowest.
//  - LockedFifo ("fifo" with "pins": true, locked_fifo.h): the FIFO rule under the lock, so
//    that pinned items can stay while the others turn over.
// A new writer is a file implementing this interface plus one line in parts.cc.
//
// Two protocols. The FIFO writer claims insertion numbers lock-free and its slots follow
// from them (ring.h). Every other writer decides under the table's writer lock, one offered
// item after the other (Place), and the table then stores the placed items in that order
// (each write of a slot raises its generation: key.h). Removals by other parts (max times
// sampled) are reported with OnRemove, priority changes with OnScore, both under the lock.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "reverie/part.h"
#include "reverie/storage.h"

namespace reverie {

class Ring;

// The items one add/extend call offers a writer: rows of the validated input, after the
// admission rules (only `count` of them, the input rows `Row(i)`, ascending).
struct WriteBatch {
  const ArrayView* const* values = nullptr;  // one per field, spec order
  int64_t rows = 0;                          // rows of the input (leading axis)
  const int64_t* offered = nullptr;          // the admitted rows; nullptr: every row
  int64_t count = 0;                         // offered items

  int64_t Row(int64_t i) const { return offered != nullptr ? offered[i] : i; }
};

class Writer : public Part {
 public:
  // The FIFO protocol (lock-free claims) rather than Place under the lock.
  virtual bool fifo() const { return false; }
  // Under the writer lock: decides for offered items i = 0 .. count-1, in order, the slot
  // each goes to, slots[i] (-1: dropped; a slot may repeat, a later item replacing an earlier
  // one), and updates the writer's own state as if each placed item were stored then.
  // `first_insertion` numbers the first stored item (insertion numbers count stored items,
  // ever). Returns how many were placed. Throws ValueError (changing nothing) for input the
  // writer cannot rank (a NaN score). O(count) plus the writer's own cost per item.
  virtual int64_t Place(const WriteBatch& batch, const Ring& stamps, int64_t first_insertion,
                        int64_t* slots);
  // Checks offered items as Place would before deciding (ValueError for what the writer
  // cannot rank, e.g. a NaN score), changing nothing. Default: nothing to check.
  virtual void CheckBatch(const WriteBatch& /*batch*/) const {}
  // Under the writer lock: `slot` no longer holds an item (a remover took it); it becomes
  // free for the next offered item.
  virtual void OnRemove(int64_t /*slot*/) {}
  // Under the writer lock: the selector's score of `slot` changed (KeepTopK by priority).
  virtual void OnScore(int64_t /*slot*/, double /*score*/) {}
  // Items held now, and how many slots (from 0) have ever been written: what samplers draw
  // from. Read without the writer lock. -1: the ring's counts apply (the FIFO writer).
  virtual int64_t held() const { return -1; }
  virtual int64_t filled() const { return -1; }
  // Whether OnScore is wanted (a score index by priority).
  virtual bool scores_by_priority() const { return false; }

  // Pins. A pinned item is never this writer's victim (no later item replaces it) and no
  // remover takes it; unpinning makes it one of the others again. Writers that support pins
  // ("pins": true in their settings) say so here; the others refuse every pin call.
  virtual bool pins() const { return false; }
  // Under the writer lock: pins (pin = true) or unpins the items in `slots` (each holding an
  // item); returns how many changed state. Default: ValueError naming why.
  virtual int64_t Pin(const int64_t* slots, int64_t n, bool pin);
  // Under the writer lock: pins every item held now and, while set, every item placed later
  // (a whole partition of anchors); false unpins them all. Returns how many changed.
  virtual int64_t PinAll(bool pin, const Ring& stamps);
  virtual bool pinned(int64_t /*slot*/) const { return false; }
  virtual int64_t pinned_count() const { return 0; }
  virtual bool pins_new() const { return false; }

  // slots[i] = the slot holding the item of user key user_keys[i] (a keyed writer's own
  // key field), -1 when none. Writer lock held. Default: ValueError (no user keys).
  virtual void Lookup(const int64_t* user_keys, int64_t n, int64_t* slots) const;

  // The insertion number (stored items counted from 0) of the item each key names (out[i]),
  // -1 for a key that names nothing this table ever stored. Writer lock held for the locked
  // writers. O(n).
  virtual void InsertionsOf(const int64_t* keys, int64_t* out, int64_t n, const Ring& stamps) const = 0;
  // Whether `key` names an item this table ever stored (stored now, or since replaced).
  virtual bool WasWritten(int64_t key, const Ring& stamps) const = 0;
  // The keys of the items stored now, oldest first. O(capacity).
  virtual std::vector<int64_t> StoredKeys(const Ring& stamps) const = 0;
};

}  // namespace reverie
