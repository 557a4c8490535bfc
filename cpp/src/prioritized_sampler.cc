#include "reverie/prioritized_sampler.h"

#include <algorithm>
#include <cmath>

#include "reverie/common.h"
#include "reverie/philox.h"

namespace reverie {
namespace {

constexpr double kHeadroom = 16.0;  // the largest q maps to budget / kHeadroom units

bool FiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }

// Largest e with q * 2^e <= limit.
int ScaleFor(double q, double limit) {
  return static_cast<int>(std::floor(std::log2(limit / q)));
}

int64_t CheckedCapacity(int64_t capacity) {
  REVERIE_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  return capacity;
}

}  // namespace

PrioritizedSampler::PrioritizedSampler(int64_t capacity, PrioritizedConfig config)
    : config_(config), tree_(CheckedCapacity(capacity)) {
  REVERIE_CHECK(FiniteNonNegative(config.alpha), "alpha must be finite and >= 0, got ", config.alpha);
  REVERIE_CHECK(FiniteNonNegative(config.beta), "beta must be finite and >= 0, got ", config.beta);
  REVERIE_CHECK(FiniteNonNegative(config.eps), "eps must be finite and >= 0, got ", config.eps);
  unit_budget_ = std::ldexp(1.0, 62) / static_cast<double>(capacity);
  SetScale(ScaleFor(max_q_, unit_budget_ / kHeadroom));
}

void PrioritizedSampler::set_beta(double beta) {
  REVERIE_CHECK(FiniteNonNegative(beta), "beta must be finite and >= 0, got ", beta);
  config_.beta = beta;
}

double PrioritizedSampler::Transform(double priority) const {
  const double x = priority + config_.eps;
  // Exact shortcuts for the common exponents; pow otherwise.
  if (config_.alpha == 1.0) return x;
  if (config_.alpha == 0.5) return std::sqrt(x);
  if (config_.alpha == 0.0) return 1.0;  // as pow(x, 0): uniform
  return std::pow(x, config_.alpha);
}

uint64_t PrioritizedSampler::ToUnits(double q) const {
  if (q <= 0) return 0;
  const double scaled = std::nearbyint(q * scale_);  // scale_ = 2^scale_exp_: exact
  return scaled < 1 ? 1 : static_cast<uint64_t>(scaled);
}

double PrioritizedSampler::StoredPriority(int64_t slot) const {
  return std::ldexp(static_cast<double>(tree_.leaf(slot)), -scale_exp_);
}

void PrioritizedSampler::SetScale(int scale_exp) {
  scale_exp_ = scale_exp;
  scale_ = std::ldexp(1.0, scale_exp);
}

void PrioritizedSampler::Reserve(double q) {
  if (q <= max_q_) return;
  max_q_ = q;
  if (std::ldexp(q, scale_exp_) <= unit_budget_) return;
  const int target = ScaleFor(q, unit_budget_ / kHeadroom);
  tree_.ShiftLeavesRight(scale_exp_ - target);
  SetScale(target);
}

void PrioritizedSampler::ValidateSample(const SampleRequest& request) const {
  REVERIE_CHECK(request.batch > 0, "batch_size must be > 0, got ", request.batch);
  REVERIE_CHECK(request.size > 0, "cannot sample ", request.batch,
                " items: the buffer is empty (add items first)");
  REVERIE_CHECK(tree_.total() > 0, "cannot sample: every stored item has priority 0");
}

void PrioritizedSampler::Sample(const SampleRequest& request, int64_t begin, int64_t end,
                                int64_t* slots, float* weights) const {
  const uint64_t batch = static_cast<uint64_t>(request.batch);
  const uint64_t total = tree_.total();
  constexpr int64_t kPiece = 256;  // queries descending together
  uint64_t u[kPiece];
  for (int64_t first = begin; first < end; first += kPiece) {
    const int64_t count = std::min(kPiece, end - first);
    for (int64_t q = 0; q < count; ++q) {
      // Segment i is [total*i/B, total*(i+1)/B); one uniform draw inside it.
      const auto i = static_cast<uint64_t>(first + q);
      const auto lo = static_cast<uint64_t>(static_cast<unsigned __int128>(total) * i / batch);
      const auto hi = static_cast<uint64_t>(static_cast<unsigned __int128>(total) * (i + 1) / batch);
      const uint64_t r = RandomBits(request.seed, request.call, static_cast<uint32_t>(i));
      u[q] = hi > lo ? lo + MulHi64(r, hi - lo) : std::min(lo, total - 1);
    }
    tree_.DescendBatch(u, slots + first, count);
  }
  if (weights == nullptr) return;
  const double beta = config_.beta;
  if (beta == 0) {
    std::fill(weights + begin, weights + end, 1.0f);
    return;
  }
  // w = (min / units)^beta. The ratio is formed in double and the power taken in float:
  // relative error ~1e-7, below the float32 result's own resolution.
  const double min_units = static_cast<double>(tree_.min_positive());
  const float beta_f = static_cast<float>(beta);
  for (int64_t i = begin; i < end; ++i) {
    const auto ratio = static_cast<float>(min_units / static_cast<double>(tree_.leaf(slots[i])));
    weights[i] = ratio == 1.0f ? 1.0f : std::exp(beta_f * std::log(ratio));
  }
}

void PrioritizedSampler::OnInsert(int64_t first, int64_t n) {
  const uint64_t units = ToUnits(max_q_);
  const int64_t capacity = tree_.leaves();
  const int64_t head = std::min(n, capacity - first);
  tree_.FillRange(first, head, units);
  tree_.FillRange(0, n - head, units);
}

void PrioritizedSampler::ValidatePriorities(const double* priorities, int64_t n) const {
  for (int64_t k = 0; k < n; ++k) {
    REVERIE_CHECK(FiniteNonNegative(priorities[k]), "priorities must be finite and >= 0; got ",
                  priorities[k], " at position ", k);
    // Only alpha > 1 can overflow a finite priority.
    REVERIE_CHECK(config_.alpha <= 1.0 || std::isfinite(Transform(priorities[k])), "priority ", priorities[k],
                  " at position ", k, " overflows (p + eps)^alpha with alpha = ", config_.alpha);
  }
}

void PrioritizedSampler::UpdatePriorities(const int64_t* slots, const double* priorities,
                                          int64_t n) {
  if (n == 0) return;
  // (p + eps)^alpha grows with p, so the largest new q is that of the largest p: settle the
  // fixed-point scale for it first; then every value converts independently, on whichever
  // thread stores it (pow, ~17 ns each, is the bulk of the arithmetic).
  Reserve(Transform(*std::max_element(priorities, priorities + n)));
  tree_.SetLeaves(slots, [&](int64_t k) { return ToUnits(Transform(priorities[k])); }, n);
}

PrioritizedSampler::State PrioritizedSampler::GetState() const {
  State state;
  state.leaves.resize(static_cast<size_t>(tree_.leaves()));
  for (int64_t i = 0; i < tree_.leaves(); ++i) state.leaves[static_cast<size_t>(i)] = tree_.leaf(i);
  state.scale_exp = scale_exp_;
  state.max_q = max_q_;
  return state;
}

void PrioritizedSampler::SetState(const State& state) {
  REVERIE_CHECK(static_cast<int64_t>(state.leaves.size()) == tree_.leaves(),
                "priority state has ", state.leaves.size(), " leaves, the buffer has capacity ",
                tree_.leaves());
  REVERIE_CHECK(std::isfinite(state.max_q) && state.max_q > 0,
                "priority state: max priority must be finite and > 0, got ", state.max_q);
  unsigned __int128 total = 0;
  for (uint64_t v : state.leaves) total += v;
  REVERIE_CHECK(total < (static_cast<unsigned __int128>(1) << 63),
                "priority state: the leaves sum past the fixed-point budget");
  tree_.AssignLeaves(state.leaves.data());
  SetScale(state.scale_exp);
  max_q_ = state.max_q;
}

}  // namespace reverie
