// Recency-weighted sampling ("recency"): P(i) proportional to (age_i + 1)^(-a), age_i the
// number of items written after item i (0 for the newest), as power-law replay uses it
// ("Catastrophic Interference is Mitigated in Naturalistic Power-Law Learning
// Environments"). a = 0 is uniform; larger a favours recent items more.
//
// Settings: {"kind": "recency", "exponent": a >= 0 (default 1)}; the exponent is live
// (buf.sampler.exponent = x; kept in the table's region, so every process sees it).
//
// Exact draws of an age k in [0, n), n the draw range (items written, at most the capacity):
// a proposal Y on [1, n + 1) with density proportional to y^(-a), by its closed-form inverse
// CDF, k = floor(Y) - 1, accepted with probability (k + 1)^(-a) / (M * m_k), m_k the
// proposal's mass on [k + 1, k + 2) and M = 1 / m_0 (the largest ratio, at k = 0). So
// P(k) is exactly proportional to (k + 1)^(-a); about 1 - 2 proposals per draw. Every draw
// is a function of (seed, call, position, attempt). The slot of age k is that of insertion
// claimed - 1 - k, so this selector needs the FIFO writer (one stream); a slot whose item
// was removed (max_times_sampled) or is being written is drawn again by the table
// (rejection: exact over the items held).
//
// Thread-safety: draws are lock-free and read only the exponent. O(1) per draw.
#pragma once

#include <atomic>

#include "reverie/selector.h"

namespace reverie {

class RecencySelector final : public Selector {
 public:
  RecencySelector(double exponent, int64_t capacity);

  void ValidateSample(const SampleRequest& request) const override;
  void Draw(const SampleRequest& request, int64_t begin, int64_t end, int64_t* slots) const override;
  int64_t Redraw(const SampleRequest& request, int64_t i, uint32_t attempt, const int64_t* slots) const override;
  bool Drawable(const SampleRequest&, int64_t, int64_t, const int64_t*) const override { return true; }
  void OnInsert(int64_t, int64_t) override {}
  bool needs_fifo() const override { return true; }

  // The age drawn for position i, attempt `attempt`, among n ages, exponent a. Pure.
  static int64_t Age(uint64_t seed, uint64_t call, uint32_t i, uint32_t attempt, int64_t n, double a);

  void SetLive(const std::string& name, const ConfigValue& value) override;
  ConfigValue Live() const override;
  std::vector<size_t> Sections() const override { return {sizeof(std::atomic<double>)}; }
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) override;
  void SaveScalars(ConfigValue* out) const override;
  void Restore(const ConfigValue& scalars, const Ring& slots) override;

 private:
  int64_t SlotOf(const SampleRequest& request, int64_t age) const;
  double initial_;
  int64_t capacity_;
  std::atomic<double>* exponent_ = nullptr;
};

std::unique_ptr<Selector> MakeRecencySelector(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
