#include "reverie/prioritized_selector.h"

#include <algorithm>
#include <cmath>

#include "reverie/common.h"
#include "reverie/kernels.h"
#include "reverie/philox.h"
#include "reverie/ring.h"

namespace reverie {
namespace {

constexpr double kHeadroom = 16.0;  // the largest q maps to budget / kHeadroom units

bool FiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }

int ScaleFor(double q, double limit) { return PriorityScaleFor(q, limit); }

int64_t CheckedCapacity(int64_t capacity) {
  REVERIE_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  return capacity;
}

}  // namespace

PrioritizedSelector::PrioritizedSelector(int64_t capacity, PrioritizedConfig config)
    : config_(config),
      capacity_(CheckedCapacity(capacity)),
      owned_state_(std::make_unique<PriorityState>()),
      state_(owned_state_.get()),
      tree_(capacity) {
  Initialize(config, capacity);
}

PrioritizedSelector::PrioritizedSelector(int64_t capacity, PrioritizedConfig config,
                                         PriorityState* state, uint64_t* sums, uint64_t* mins,
                                         bool initialize)
    : config_(config), capacity_(CheckedCapacity(capacity)), state_(state), tree_(capacity, sums, mins) {
  if (initialize) {
    Initialize(config, capacity);
  } else {
    unit_budget_ = std::ldexp(1.0, 62) / static_cast<double>(capacity);
  }
}

PrioritizedSelector::PrioritizedSelector(int64_t capacity, PrioritizedConfig config, InRegion)
    : config_(config), capacity_(CheckedCapacity(capacity)), tree_(1, nullptr, nullptr) {
  // The settings are checked now, before any region exists.
  PriorityState probe;
  state_ = &probe;
  Initialize(config, capacity);
  state_ = nullptr;
}

std::unique_ptr<Selector> MakePrioritizedSelector(const ConfigValue& settings, const TableContext& table) {
  PrioritizedConfig c;
  const auto number = [&](const char* name, double fallback) {
    const ConfigValue& v = settings.Get(name);
    return v.is_null() ? fallback : v.AsDouble(internal::Concat("prioritized sampler '", name, "'"));
  };
  c.alpha = number("alpha", c.alpha);
  c.beta = number("beta", c.beta);
  c.eps = number("eps", c.eps);
  return std::make_unique<PrioritizedSelector>(table.capacity, c, PrioritizedSelector::InRegion{});
}

std::vector<size_t> PrioritizedSelector::Sections() const {
  return {sizeof(PriorityState), SumTree::SumsBytes(capacity_), SumTree::MinsBytes(capacity_)};
}

void PrioritizedSelector::Bind(const std::vector<uint8_t*>& sections, bool fresh) {
  state_ = reinterpret_cast<PriorityState*>(sections[0]);
  if (fresh) new (state_) PriorityState();
  tree_ = SumTree(capacity_, reinterpret_cast<uint64_t*>(sections[1]),
                  reinterpret_cast<uint64_t*>(sections[2]));
  if (fresh) {
    Initialize(config_, capacity_);
  } else {
    unit_budget_ = std::ldexp(1.0, 62) / static_cast<double>(capacity_);
  }
}

void PrioritizedSelector::StateArrays(std::vector<StateArray>* out) {
  // The leaf level of the sums array: one contiguous run of `capacity` words.
  auto* leaves = const_cast<uint64_t*>(tree_.sums()) + tree_.layout().offset[tree_.layout().depth];
  out->push_back(StateArray{"priority.leaves", "uint64", {capacity_}, reinterpret_cast<uint8_t*>(leaves), true});
}

void PrioritizedSelector::SaveScalars(ConfigValue* out) const {
  out->Set("priority.scale_exp", ConfigValue::Int(state_->scale_exp.load(std::memory_order_relaxed)));
  out->Set("priority.max_q", ConfigValue::Double(state_->max_q.load(std::memory_order_relaxed)));
  out->Set("priority.beta", ConfigValue::Double(state_->beta.load(std::memory_order_relaxed)));
}

void PrioritizedSelector::Restore(const ConfigValue& scalars, const Ring& slots) {
  const double max_q = StateScalar(scalars, "priority.max_q");
  const double beta = StateScalar(scalars, "priority.beta");
  const int64_t scale_exp = StateInt(scalars, "priority.scale_exp");
  REVERIE_CHECK(std::isfinite(max_q) && max_q > 0,
                "priority state: max priority must be finite and > 0, got ", max_q);
  REVERIE_CHECK(FiniteNonNegative(beta), "priority state: beta must be finite and >= 0, got ", beta);
  REVERIE_CHECK(scale_exp > -1100 && scale_exp < 1100, "priority state: scale exponent ", scale_exp,
                " is out of range");
  unsigned __int128 total = 0;
  int64_t held = 0;
  for (int64_t slot = 0; slot < capacity_; ++slot) {
    const uint64_t leaf = tree_.leaf(slot);
    const bool holds = Stamp::IsCommitted(slots.LoadStamp(slot));
    held += holds;
    REVERIE_CHECK(holds || leaf == 0, "priority state is inconsistent with the stored items: slot ",
                  slot, " holds no item but has a priority (", held, " of the first ", slot + 1,
                  " slots hold items)");
    total += leaf;
  }
  REVERIE_CHECK(total < (static_cast<unsigned __int128>(1) << 63),
                "priority state: the leaves sum past the fixed-point budget");
  state_->epoch.store(0, std::memory_order_relaxed);
  state_->rescale_shift.store(0, std::memory_order_relaxed);
  state_->scale_exp.store(static_cast<int32_t>(scale_exp), std::memory_order_relaxed);
  state_->max_q.store(max_q, std::memory_order_relaxed);
  state_->beta.store(beta, std::memory_order_relaxed);
  tree_.Rebuild();
}

void PrioritizedSelector::SetLive(const std::string& name, const ConfigValue& value) {
  if (name != "beta") Selector::SetLive(name, value);
  set_beta(value.AsDouble("beta"));
}

ConfigValue PrioritizedSelector::Live() const {
  ConfigValue out = ConfigValue::MakeMap();
  out.Set("beta", ConfigValue::Double(state_->beta.load(std::memory_order_relaxed)));
  return out;
}

void PrioritizedSelector::OnRemove(int64_t slot) {
  const int64_t index = slot;
  const uint64_t zero = 0;
  tree_.SetLeaves(&index, &zero, 1);
}

void PrioritizedSelector::Initialize(const PrioritizedConfig& config, int64_t capacity) {
  REVERIE_CHECK(FiniteNonNegative(config.alpha), "alpha must be finite and >= 0, got ", config.alpha);
  REVERIE_CHECK(FiniteNonNegative(config.beta), "beta must be finite and >= 0, got ", config.beta);
  REVERIE_CHECK(FiniteNonNegative(config.eps), "eps must be finite and >= 0, got ", config.eps);
  unit_budget_ = std::ldexp(1.0, 62) / static_cast<double>(capacity);
  state_->beta.store(config.beta, std::memory_order_relaxed);
  state_->max_q.store(1.0, std::memory_order_relaxed);
  state_->scale_exp.store(ScaleFor(1.0, unit_budget_ / kHeadroom), std::memory_order_relaxed);
}

PrioritizedConfig PrioritizedSelector::config() const {
  PrioritizedConfig c = config_;
  c.beta = state_->beta.load(std::memory_order_relaxed);
  return c;
}

void PrioritizedSelector::set_beta(double beta) {
  REVERIE_CHECK(FiniteNonNegative(beta), "beta must be finite and >= 0, got ", beta);
  state_->beta.store(beta, std::memory_order_relaxed);
}

double PrioritizedSelector::Transform(double priority) const {
  return PriorityTransform(priority, config_.alpha, config_.eps);
}

uint64_t PrioritizedSelector::ToUnits(double q) const {
  return ToUnits(q, std::ldexp(1.0, state_->scale_exp.load(std::memory_order_relaxed)));
}

uint64_t PrioritizedSelector::ToUnits(double q, double scale) { return PriorityUnits(q, scale); }

double PrioritizedSelector::MinPriority() const {
  return std::ldexp(static_cast<double>(tree_.min_positive()), -state_->scale_exp.load(std::memory_order_relaxed));
}

double PrioritizedSelector::StoredPriority(int64_t slot) const {
  return std::ldexp(static_cast<double>(tree_.leaf(slot)),
                    -state_->scale_exp.load(std::memory_order_relaxed));
}

template <typename Fn>
void PrioritizedSelector::WithEpoch(Fn&& fn) {
  state_->epoch.fetch_add(1, std::memory_order_acq_rel);
  fn();
  state_->epoch.fetch_add(1, std::memory_order_acq_rel);
}

void PrioritizedSelector::Reserve(double q) {
  if (q <= state_->max_q.load(std::memory_order_relaxed)) return;
  state_->max_q.store(q, std::memory_order_relaxed);
  const int scale_exp = state_->scale_exp.load(std::memory_order_relaxed);
  if (std::ldexp(q, scale_exp) <= unit_budget_) return;
  const int target = ScaleFor(q, unit_budget_ / kHeadroom);
  // Recorded first, so a process killed halfway leaves enough to finish it (Repair).
  state_->rescale_target.store(target, std::memory_order_relaxed);
  state_->rescale_next.store(0, std::memory_order_relaxed);
  state_->rescale_shift.store(scale_exp - target, std::memory_order_release);
  WithEpoch([&] { FinishRescale(); });
}

void PrioritizedSelector::FinishRescale() {
  const int shift = state_->rescale_shift.load(std::memory_order_acquire);
  tree_.ShiftLeavesRight(shift, state_->rescale_next.load(std::memory_order_acquire),
                         &state_->rescale_next);
  state_->scale_exp.store(state_->rescale_target.load(std::memory_order_relaxed),
                          std::memory_order_relaxed);
  state_->rescale_shift.store(0, std::memory_order_release);
}

void PrioritizedSelector::Repair() {
  // A writer that died in the middle of a whole-tree change left the epoch odd: even it out.
  if ((state_->epoch.load(std::memory_order_acquire) & 1) != 0) {
    state_->epoch.fetch_add(1, std::memory_order_acq_rel);
  }
  WithEpoch([&] {
    if (state_->rescale_shift.load(std::memory_order_acquire) != 0) {
      FinishRescale();  // shifts the rest and rebuilds
    } else {
      tree_.Rebuild();
    }
  });
}

void PrioritizedSelector::ValidateSample(const SampleRequest& request) const {
  REVERIE_CHECK(request.batch > 0, "batch_size must be > 0, got ", request.batch);
  REVERIE_CHECK(request.size > 0, "cannot sample ", request.batch,
                " items: the buffer is empty (add items first)");
  REVERIE_CHECK(tree_.total() > 0, "cannot sample: every stored item has priority 0");
}

int64_t PrioritizedSelector::Checked(int64_t slot) const {
  // A descent racing an update can end on a leaf that is 0 (or beyond the stored range);
  // such a draw is rejected, so a zero priority is never sampled.
  return tree_.leaf(slot) != 0 ? slot : -1;
}

void PrioritizedSelector::Draw(const SampleRequest& request, int64_t begin, int64_t end,
                              int64_t* slots) const {
  const uint64_t batch = static_cast<uint64_t>(request.batch);
  const uint64_t total = tree_.total();
  if (total == 0) {  // every priority was set to 0 after validation
    std::fill(slots + begin, slots + end, -1);
    return;
  }
  constexpr int64_t kPiece = 256;  // queries descending together
  uint64_t u[kPiece];
  for (int64_t first = begin; first < end; first += kPiece) {
    const int64_t count = std::min(kPiece, end - first);
    for (int64_t q = 0; q < count; ++q) {
      u[q] = StratifiedPoint(total, batch, static_cast<uint64_t>(first + q), request.seed,
                             request.call);
    }
    tree_.DescendBatch(u, slots + first, count);
  }
  for (int64_t i = begin; i < end; ++i) slots[i] = Checked(slots[i]);
}

int64_t PrioritizedSelector::Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                                   const int64_t*) const {
  const uint64_t total = tree_.total();
  if (total == 0) return -1;
  const uint64_t r = RandomBits(request.seed, request.call, static_cast<uint32_t>(i), attempt);
  return Checked(Descend(tree_.sums(), tree_.layout(), MulHi64(r, total)));
}

void PrioritizedSelector::Weights(const int64_t* slots, int64_t begin, int64_t end,
                                 float* weights) const {
  const double beta = state_->beta.load(std::memory_order_relaxed);
  if (beta == 0) {
    std::fill(weights + begin, weights + end, 1.0f);
    return;
  }
  // (min / units)^beta (kernels.h); a ratio above 1 (or a zero leaf) can only come from an
  // update racing this sample and gives weight 1.
  const uint64_t min_units = tree_.min_positive();
  for (int64_t i = begin; i < end; ++i) {
    weights[i] = ImportanceWeight(min_units, tree_.leaf(slots[i]), beta);
  }
}

void PrioritizedSelector::OnInsert(int64_t first, int64_t n) {
  const uint64_t units = ToUnits(state_->max_q.load(std::memory_order_relaxed));
  const int64_t capacity = tree_.leaves();
  const int64_t head = std::min(n, capacity - first);
  tree_.FillRange(first, head, units);
  tree_.FillRange(0, n - head, units);
}

void PrioritizedSelector::ValidatePriorities(const double* priorities, int64_t n) const {
  for (int64_t k = 0; k < n; ++k) {
    REVERIE_CHECK(FiniteNonNegative(priorities[k]), "priorities must be finite and >= 0; got ",
                  priorities[k], " at position ", k);
    // Only alpha > 1 can overflow a finite priority.
    REVERIE_CHECK(config_.alpha <= 1.0 || std::isfinite(Transform(priorities[k])), "priority ", priorities[k],
                  " at position ", k, " overflows (p + eps)^alpha with alpha = ", config_.alpha);
  }
}

void PrioritizedSelector::UpdatePriorities(const int64_t* slots, const double* priorities,
                                          int64_t n) {
  if (n == 0) return;
  // (p + eps)^alpha grows with p, so the largest new q is that of the largest p: settle the
  // fixed-point scale for it first; then every value converts independently, on whichever
  // thread stores it (pow, ~17 ns each, is the bulk of the arithmetic).
  Reserve(Transform(*std::max_element(priorities, priorities + n)));
  const double scale = std::ldexp(1.0, state_->scale_exp.load(std::memory_order_relaxed));
  tree_.SetLeaves(slots, [&](int64_t k) { return ToUnits(Transform(priorities[k]), scale); }, n);
}

PrioritizedSelector::State PrioritizedSelector::GetState() const {
  State state;
  state.leaves.resize(static_cast<size_t>(tree_.leaves()));
  for (int64_t i = 0; i < tree_.leaves(); ++i) state.leaves[static_cast<size_t>(i)] = tree_.leaf(i);
  state.scale_exp = state_->scale_exp.load(std::memory_order_relaxed);
  state.max_q = state_->max_q.load(std::memory_order_relaxed);
  return state;
}

void PrioritizedSelector::SetState(const State& state) {
  REVERIE_CHECK(static_cast<int64_t>(state.leaves.size()) == tree_.leaves(),
                "priority state has ", state.leaves.size(), " leaves, the buffer has capacity ",
                tree_.leaves());
  REVERIE_CHECK(std::isfinite(state.max_q) && state.max_q > 0,
                "priority state: max priority must be finite and > 0, got ", state.max_q);
  unsigned __int128 total = 0;
  for (uint64_t v : state.leaves) total += v;
  REVERIE_CHECK(total < (static_cast<unsigned __int128>(1) << 63),
                "priority state: the leaves sum past the fixed-point budget");
  WithEpoch([&] {
    tree_.AssignLeaves(state.leaves.data());
    state_->scale_exp.store(state.scale_exp, std::memory_order_relaxed);
    state_->max_q.store(state.max_q, std::memory_order_relaxed);
  });
}

}  // namespace reverie
