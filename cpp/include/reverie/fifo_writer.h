// The FIFO writer ("fifo"): today's lock-free ring (ring.h). Every offered item is stored, in
// the slot its insertion number maps to; when the table is full the oldest item is evicted.
// The protocol itself (claim, acquire, copy, publish) is the table's (table_write.cc); this
// part owns the mapping between keys and insertion order, which nothing else computes.
//
// Settings: {"kind": "fifo"} (with "pins": true the factory makes the locked FIFO of
// locked_fifo.h instead, MakeFifoWriter there). With an episode view the ring has one stream per env
// (stream-major slots, ring.h).
#pragma once

#include "reverie/writer.h"

namespace reverie {

class FifoWriter final : public Writer {
 public:
  bool fifo() const override { return true; }
  // The FIFO ring's inverse mapping (ring.h). O(n).
  void InsertionsOf(const int64_t* keys, int64_t* out, int64_t n, const Ring& stamps) const override;
  // insertion(key) < claimed. O(1).
  bool WasWritten(int64_t key, const Ring& stamps) const override;
  // The last min(written, capacity) insertions. O(size).
  std::vector<int64_t> StoredKeys(const Ring& stamps) const override;
  // Rebuilds the stamps from `written` (the slot of each of the last min(written, capacity)
  // insertions holds its key; removed where the saved stamp says so). O(capacity).
  void Restore(const ConfigValue& scalars, const Ring& stamps) override;
};

}  // namespace reverie
