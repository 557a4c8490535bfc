#include "reverie/admission.h"

#include <cmath>
#include <new>

#include "reverie/common.h"

namespace reverie {

std::unique_ptr<Admission> MakeThreshold(const ConfigValue& settings, const TableContext& table) {
  const int field = table.ScalarField(settings.At("field", "threshold admission").AsString("threshold field"),
                                      "threshold field");
  const double value = settings.At("value", "threshold admission").AsDouble("threshold value");
  REVERIE_CHECK(std::isfinite(value), "the threshold value must be finite, got ", value);
  return std::make_unique<ThresholdAdmission>(field, value);
}

void ThresholdAdmission::Bind(const std::vector<uint8_t*>& sections, bool fresh) {
  state_ = reinterpret_cast<State*>(sections[0]);
  if (fresh) {
    new (&state_->value) std::atomic<double>(initial_);
    new (&state_->dropped) std::atomic<int64_t>(0);
  }
}

void ThresholdAdmission::SetValue(double value) {
  REVERIE_CHECK(std::isfinite(value), "the threshold value must be finite, got ", value);
  state_->value.store(value, std::memory_order_relaxed);
}

void ThresholdAdmission::SetLive(const std::string& name, const ConfigValue& value) {
  if (name != "value") Admission::SetLive(name, value);
  SetValue(value.AsDouble("threshold value"));
}

ConfigValue ThresholdAdmission::Live() const {
  ConfigValue out = ConfigValue::MakeMap();
  out.Set("value", ConfigValue::Double(value()));
  return out;
}

int64_t ThresholdAdmission::Admit(const WriteBatch& batch, uint8_t* admitted) const {
  const double threshold = value();
  const ArrayView& v = *batch.values[field_];
  int64_t dropped = 0;
  for (int64_t r = 0; r < batch.rows; ++r) {
    if (admitted[r] == 0) continue;
    const double score = ElementAsDouble(v.data, v.dtype, v.ndim == 0 ? 0 : r);
    if (!(score >= threshold)) {  // NaN fails too
      admitted[r] = 0;
      ++dropped;
    }
  }
  return dropped;
}

void ThresholdAdmission::Count(int64_t dropped) {
  if (dropped > 0) state_->dropped.fetch_add(dropped, std::memory_order_relaxed);
}

void ThresholdAdmission::SaveScalars(ConfigValue* out) const {
  out->Set("threshold.value", ConfigValue::Double(value()));
  out->Set("threshold.dropped", ConfigValue::Int(dropped()));
}

void ThresholdAdmission::Restore(const ConfigValue& scalars, const Ring&) {
  const double value = StateScalar(scalars, "threshold.value");
  const int64_t dropped = StateInt(scalars, "threshold.dropped");
  REVERIE_CHECK(std::isfinite(value) && dropped >= 0, "threshold state: value ", value,
                ", dropped ", dropped);
  state_->value.store(value, std::memory_order_relaxed);
  state_->dropped.store(dropped, std::memory_order_relaxed);
}

}  // namespace reverie
