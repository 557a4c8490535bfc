#include "reverie/recency_selector.h"

#include <cmath>
#include <new>

#include "reverie/common.h"
#include "reverie/philox.h"

namespace reverie {
namespace {

double Unit(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }  // [0, 1)

// The proposal's mass on [k + 1, k + 2): the integral of y^(-a) there.
double Mass(int64_t k, double a) {
  const double lo = static_cast<double>(k + 1), hi = static_cast<double>(k + 2);
  if (a == 1.0) return std::log(hi / lo);
  return (std::pow(hi, 1.0 - a) - std::pow(lo, 1.0 - a)) / (1.0 - a);
}

void CheckExponent(double a) {
  REVERIE_CHECK(std::isfinite(a) && a >= 0 && a <= 64, "the recency exponent must be finite and in [0, 64], got ", a);
}

}  // namespace

std::unique_ptr<Selector> MakeRecencySelector(const ConfigValue& settings, const TableContext& table) {
  double a = 1.0;
  if (!settings.Get("exponent").is_null()) a = settings.Get("exponent").AsDouble("recency 'exponent'");
  CheckExponent(a);
  REVERIE_CHECK(table.streams == 1, "the recency sampler ranks items by insertion order: it does not serve an "
                "episode buffer's env streams");
  return std::make_unique<RecencySelector>(a, table.capacity);
}

RecencySelector::RecencySelector(double exponent, int64_t capacity) : initial_(exponent), capacity_(capacity) {}

void RecencySelector::Bind(const std::vector<uint8_t*>& sections, bool fresh) {
  exponent_ = reinterpret_cast<std::atomic<double>*>(sections[0]);
  if (fresh) new (exponent_) std::atomic<double>(initial_);
}

void RecencySelector::SetLive(const std::string& name, const ConfigValue& value) {
  if (name != "exponent") Selector::SetLive(name, value);
  const double a = value.AsDouble("exponent");
  CheckExponent(a);
  exponent_->store(a, std::memory_order_relaxed);
}

ConfigValue RecencySelector::Live() const {
  ConfigValue out = ConfigValue::MakeMap();
  out.Set("exponent", ConfigValue::Double(exponent_->load(std::memory_order_relaxed)));
  return out;
}

void RecencySelector::SaveScalars(ConfigValue* out) const {
  out->Set("recency.exponent", ConfigValue::Double(exponent_->load(std::memory_order_relaxed)));
}

void RecencySelector::Restore(const ConfigValue& scalars, const Ring&) {
  const double a = StateScalar(scalars, "recency.exponent");
  CheckExponent(a);
  exponent_->store(a, std::memory_order_relaxed);
}

void RecencySelector::ValidateSample(const SampleRequest& request) const {
  REVERIE_CHECK(request.batch > 0, "batch_size must be > 0, got ", request.batch);
  REVERIE_CHECK(request.size > 0, "cannot sample ", request.batch, " items: the buffer is empty (add items first)");
}

int64_t RecencySelector::Age(uint64_t seed, uint64_t call, uint32_t i, uint32_t attempt, int64_t n, double a) {
  if (n <= 1) return 0;
  if (a == 0.0) return static_cast<int64_t>(MulHi64(RandomBits(seed, call, i, attempt << 7), static_cast<uint64_t>(n)));
  const double top = static_cast<double>(n) + 1.0;
  const double m0 = Mass(0, a);
  const double span = a == 1.0 ? std::log(top) : std::pow(top, 1.0 - a) - 1.0;
  for (uint32_t t = 0; t < 62; t += 2) {
    const uint32_t lane = (attempt << 7) | t;
    const double u = Unit(RandomBits(seed, call, i, lane));
    const double y = a == 1.0 ? std::exp(u * span) : std::pow(1.0 + u * span, 1.0 / (1.0 - a));
    int64_t k = static_cast<int64_t>(std::floor(y)) - 1;
    if (k < 0) k = 0;
    if (k > n - 1) k = n - 1;  // rounding at the top end
    const double accept = std::pow(static_cast<double>(k + 1), -a) * m0 / Mass(k, a);
    if (Unit(RandomBits(seed, call, i, lane | 1)) < accept) return k;
  }
  return 0;  // after 31 rejections (probability below 1e-9 for any a): the newest
}

int64_t RecencySelector::SlotOf(const SampleRequest& request, int64_t age) const {
  const int64_t insertion = request.claimed - 1 - age;
  return insertion >= 0 ? insertion % capacity_ : -1;
}

void RecencySelector::Draw(const SampleRequest& request, int64_t begin, int64_t end, int64_t* slots) const {
  const double a = exponent_->load(std::memory_order_relaxed);
  const int64_t n = request.draw_range();
  for (int64_t i = begin; i < end; ++i) {
    slots[i] = SlotOf(request, Age(request.seed, request.call, static_cast<uint32_t>(i), 0, n, a));
  }
}

int64_t RecencySelector::Redraw(const SampleRequest& request, int64_t i, uint32_t attempt, const int64_t*) const {
  const double a = exponent_->load(std::memory_order_relaxed);
  return SlotOf(request, Age(request.seed, request.call, static_cast<uint32_t>(i), attempt, request.draw_range(), a));
}

}  // namespace reverie
