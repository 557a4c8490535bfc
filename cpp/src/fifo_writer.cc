#include "reverie/fifo_writer.h"

#include <algorithm>
#include <vector>

#include "reverie/common.h"
#include "reverie/ring.h"

namespace reverie {

void FifoWriter::InsertionsOf(const int64_t* keys, int64_t* out, int64_t n, const Ring& stamps) const {
  for (int64_t i = 0; i < n; ++i) out[i] = stamps.InsertionOfKey(keys[i]);
}

bool FifoWriter::WasWritten(int64_t key, const Ring& stamps) const { return stamps.WasClaimed(key); }

std::vector<int64_t> FifoWriter::StoredKeys(const Ring& stamps) const {
  const int64_t written = stamps.committed();
  const int64_t oldest = std::max<int64_t>(0, written - stamps.capacity());
  std::vector<int64_t> keys;
  keys.reserve(static_cast<size_t>(written - oldest));
  Ring::Cursor c(stamps, oldest);
  for (int64_t n = oldest; n < written; ++n, c.Next()) {
    const uint64_t stamp = stamps.LoadStamp(c.slot());
    if (!Stamp::IsRemoved(stamp)) keys.push_back(c.key());  // removed: used up, not stored
  }
  return keys;
}

void FifoWriter::Restore(const ConfigValue&, const Ring& stamps) {
  // The stamps follow from `written` alone: the slot of each of the last min(written,
  // capacity) insertions holds that insertion's key, removed if its saved stamp says so,
  // and the other slots are empty. Rebuilding them (rather than checking the saved ones)
  // keeps a checkpoint taken beside a running writer loadable: its stamps may be a little
  // newer than its counters, as its rows may be (a save documents that it wants no writes).
  const int64_t written = stamps.committed();
  const int64_t oldest = std::max<int64_t>(0, written - stamps.capacity());
  std::vector<uint8_t> removed(static_cast<size_t>(stamps.capacity()), 0);
  Ring::Cursor c(stamps, oldest);
  for (int64_t n = oldest; n < written; ++n, c.Next()) {
    removed[static_cast<size_t>(c.slot())] = stamps.LoadStamp(c.slot()) == Stamp::Removed(c.key());
  }
  Ring& ring = const_cast<Ring&>(stamps);
  for (int64_t slot = 0; slot < stamps.capacity(); ++slot) ring.SetStamp(slot, Stamp::kEmpty);
  Ring::Cursor d(stamps, oldest);
  for (int64_t n = oldest; n < written; ++n, d.Next()) {
    ring.SetStamp(d.slot(), removed[static_cast<size_t>(d.slot())] ? Stamp::Removed(d.key())
                                                                  : Stamp::Committed(d.key()));
  }
}

}  // namespace reverie
