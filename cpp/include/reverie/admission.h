// Admission rules: which offered items a table lets in at all, decided for a whole batch at
// once before its writer sees them. A rule's drops are counted (state), and add/extend
// return how many items were stored.
//
// Built-in: ThresholdAdmission ("threshold"): items whose score field is at least a value.
// (A Python predicate is applied by the Python layer to the whole batch and arrives as a
// mask; it needs no part here.) A new rule is a file implementing this interface plus one
// line in parts.cc.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "reverie/part.h"
#include "reverie/writer.h"

namespace reverie {

// Thread-safety: Admit may run from any number of writer threads at once; the live settings
// are atomics in the table's region.
class Admission : public Part {
 public:
  // admitted[r] &= whether input row r may enter, for rows r < batch.rows (batch.offered is
  // null here); returns how many rows it turned away. Changes nothing: the table calls
  // Count once the write went through (a write that fails leaves the counts as they were).
  // Throws ValueError for input it cannot judge. O(rows).
  virtual int64_t Admit(const WriteBatch& batch, uint8_t* admitted) const = 0;
  // Records `dropped` rows turned away by a write that completed. O(1).
  virtual void Count(int64_t dropped) = 0;
};

// Settings: {"kind": "threshold", "field": "<numeric scalar field>", "value": number (live)}.
// Admits items with field >= value (NaN never passes). The value may be changed at any time
// (SetValue; shared by every process of a shared table).
class ThresholdAdmission final : public Admission {
 public:
  ThresholdAdmission(int field, double value) : field_(field), initial_(value) {}

  int64_t Admit(const WriteBatch& batch, uint8_t* admitted) const override;
  void Count(int64_t dropped) override;
  double value() const { return state_->value.load(std::memory_order_relaxed); }
  // Throws ValueError unless finite.
  void SetValue(double value);
  int64_t dropped() const { return state_->dropped.load(std::memory_order_relaxed); }

  // Live: "value".
  void SetLive(const std::string& name, const ConfigValue& value) override;
  ConfigValue Live() const override;
  std::vector<size_t> Sections() const override { return {sizeof(State)}; }
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) override;
  void SaveScalars(ConfigValue* out) const override;
  void Restore(const ConfigValue& scalars, const Ring& stamps) override;

 private:
  struct State {
    std::atomic<double> value;
    std::atomic<int64_t> dropped;
  };
  int field_;
  double initial_;
  State* state_ = nullptr;
};

std::unique_ptr<Admission> MakeThreshold(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
