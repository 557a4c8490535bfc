// What every part of a table (writer, admission rule, selector, item metadata, episode view)
// shares: the region memory it keeps its state in, and that state's persisted form.
//
// A table (table.h) lives in one region (region.h): private memory, a shared-memory segment,
// or a file. Each part asks for sections of it (Sections), placed by the table in a fixed
// order after the table's own, so every process that maps the region finds every part's
// state at the same offsets; the part then binds to that memory (Bind). Its state is named
// arrays in that memory plus a few scalars (StateArrays, SaveScalars): checkpoints,
// state_dict and npz exports iterate over every part's arrays and scalars the same way,
// whatever the part is, and restore them by writing the arrays back and calling Restore.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "reverie/config.h"
#include "reverie/key.h"
#include "reverie/storage.h"

namespace reverie {

class Ring;

// One persisted array of a part: raw little-endian elements of a numpy dtype, in the region.
struct StateArray {
  std::string name;            // unique in the table, "<part>.<what>" (e.g. "priority.leaves")
  std::string dtype;           // numpy name: "uint8", "int64", "uint64", "float64", ...
  std::vector<int64_t> shape;  // the first axis is the capacity when per_slot
  uint8_t* data = nullptr;     // in the region: read by a save, written by a restore
  bool per_slot = false;       // one entry per slot: exports take the stored items' entries

  size_t bytes() const;
};

// What a part may know of its table when it is made.
struct TableContext {
  int64_t capacity = 0;
  const std::vector<FieldSpec>* spec = nullptr;
  uint64_t seed = 0;
  KeyCodec codec;
  int64_t streams = 1;       // FIFO streams (an episode view's envs), 1 otherwise
  bool removals = false;     // a remover frees slots (max_times_sampled): selectors follow it
  int64_t max_times_sampled = 0;  // 0: unlimited
  bool prioritized = false;  // the selector keeps priorities (made before the other parts)

  // The number of field `name` in the spec; ValueError naming `what` and the fields when
  // there is none.
  int FieldIndex(const std::string& name, const std::string& what) const;
  // The same, and TypeError unless the field is a numeric scalar (a score).
  int ScalarField(const std::string& name, const std::string& what) const;
};

// Thread-safety: a part's methods are called by its table, which states who may call what
// at the same time (table.h); a part documents which of its methods run under the table's
// writer lock.
class Part {
 public:
  virtual ~Part() = default;

  // Bytes of region memory this part keeps (its shared scalars and arrays), one section
  // each, each placed 64-byte aligned. O(1).
  virtual std::vector<size_t> Sections() const { return {}; }
  // Binds the part to its sections (as many pointers as Sections() gave sizes). `fresh`:
  // the memory is new and zeroed, to be initialised; else it holds this part's state (a
  // table attached in another process, or reopened from a file).
  virtual void Bind(const std::vector<uint8_t*>& /*sections*/, bool /*fresh*/) {}

  // Live settings (the registry lists them, registry.h): changed while the table is in use,
  // kept in the region so that every process sees the change. Throws ValueError for an
  // unknown name or a bad value (changing nothing). Writer lock held.
  virtual void SetLive(const std::string& name, const ConfigValue& value);
  // The live settings now: a map (empty for a part without any).
  virtual ConfigValue Live() const { return ConfigValue::MakeMap(); }

  // Whether stored values of field `field` (spec index; `name`) may be overwritten in place
  // (Table::UpdateFields). A part that indexes its items by a field it read when they were
  // written (a score heap, class counts, episode boundaries) throws ValueError saying why
  // not. Default: any field may change.
  virtual void CheckFieldUpdate(int /*field*/, const std::string& /*name*/) const {}

  // The part's persisted arrays (views of its region memory). O(1).
  virtual void StateArrays(std::vector<StateArray>* /*out*/) {}
  // Its persisted scalars, as "<part>.<name>": number entries added to the map `out`.
  virtual void SaveScalars(ConfigValue* /*out*/) const {}
  // After its arrays were overwritten with saved ones (and the table's slot stamps restored):
  // checks them against `scalars` and the stored slots, and rebuilds what is derived from
  // them (trees, heaps, free lists). Throws ValueError naming what does not fit; the table
  // is then discarded by the caller. Not concurrent with anything.
  virtual void Restore(const ConfigValue& /*scalars*/, const Ring& /*slots*/) {}
};

// Reads scalar `name` from a state map of SaveScalars entries (ValueError when missing).
double StateScalar(const ConfigValue& scalars, const std::string& name);
int64_t StateInt(const ConfigValue& scalars, const std::string& name);

}  // namespace reverie
