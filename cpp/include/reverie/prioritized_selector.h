// Proportional prioritized sampling (Schaul et al., "Prioritized Experience Replay", ICLR
// 2016): P(i) = p_i^alpha / sum_k p_k^alpha with p_i = |delta_i| + eps, and importance
// weights w_i = (N * P(i))^-beta / max_j w_j.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "reverie/selector.h"
#include "reverie/sum_tree.h"

namespace reverie {

struct PrioritizedConfig {
  double alpha = 0.6;  // >= 0; 0 is uniform
  double beta = 0.4;   // >= 0; 0 turns weights off (all 1)
  double eps = 1e-6;   // >= 0, added to every priority before the exponent
};

// The tree holds q_i = (p_i + eps)^alpha in fixed point: units_i = round(q_i * 2^scale_exp),
// at least 1 when q_i > 0. scale_exp is chosen so that the largest q seen maps to about
// 2^-4 of the per-leaf budget 2^62 / capacity, leaving the total below 2^62; when a larger q
// arrives, every leaf is shifted right (and the tree rebuilt, O(capacity), at most once per
// 16x growth of the largest priority). The relative resolution of the largest priority is
// 2^-(58 - log2 capacity), e.g. 2^-38 at capacity 1M; a priority below 2^-scale_exp units
// rounds up to one unit and stays samplable.
//
// New items get the running max q (1.0 before any update), as in the paper. Stratified
// sampling: the total is cut into B equal segments and draw i falls uniformly in segment i.
// Importance weights use the realised probabilities: w_i = (units_min / units_i)^beta, which
// is (N P(i))^-beta / max_j (N P(j))^-beta with N cancelled.
//
// The scalars that change at run time (scale, running max, beta, the rescale epoch) live in
// a PriorityState next to the tree, so a buffer in shared memory shares them too.
struct PriorityState {
  std::atomic<uint64_t> epoch{0};  // odd while the tree is rescaled or rebuilt
  std::atomic<int32_t> scale_exp{0};
  std::atomic<double> max_q{1.0};
  std::atomic<double> beta{0.4};
  // A rescale in progress (crash-safe): shift 0 when none; else the leaves below
  // `rescale_next` are shifted already and the scale becomes `rescale_target` when done.
  std::atomic<int32_t> rescale_shift{0};
  std::atomic<int32_t> rescale_target{0};
  std::atomic<int64_t> rescale_next{0};
};

// Settings: {"kind": "prioritized", "alpha": >= 0, "beta": >= 0 (live), "eps": >= 0}.
class PrioritizedSelector final : public Selector {
 public:
  // In memory of its own. Throws ValueError for capacity < 1 or alpha/beta/eps negative or
  // not finite.
  PrioritizedSelector(int64_t capacity, PrioritizedConfig config);
  // In caller-given memory (SumTree's sizes; the state and tree outlive the selector). With
  // `initialize` the state is set up; otherwise it is taken as it is (a buffer attached in
  // another process).
  PrioritizedSelector(int64_t capacity, PrioritizedConfig config, PriorityState* state,
                      uint64_t* sums, uint64_t* mins, bool initialize);
  // For a table: its memory comes from the table's region (Sections, then Bind). Checks the
  // config (ValueError) at once.
  struct InRegion {};
  PrioritizedSelector(int64_t capacity, PrioritizedConfig config, InRegion);

  // Part: the scalars (PriorityState), the sum-tree and the min-tree.
  std::vector<size_t> Sections() const override;
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) override;
  // "priority.leaves" (uint64 units per slot); scalars priority.scale_exp, .max_q, .beta.
  void StateArrays(std::vector<StateArray>* out) override;
  void SaveScalars(ConfigValue* out) const override;
  // Checks that only slots holding items have priorities and that they fit the budget, then
  // rebuilds the tree. O(capacity).
  void Restore(const ConfigValue& scalars, const Ring& slots) override;
  // Live: "beta".
  void SetLive(const std::string& name, const ConfigValue& value) override;
  ConfigValue Live() const override;
  bool write_locked() const override { return true; }
  // The leaf becomes 0 (never drawn). O(depth).
  void OnRemove(int64_t slot) override;
  double ScoreOf(int64_t slot) const override { return StoredPriority(slot); }
  double MinPriority() const override;
  double beta() const override { return state_->beta.load(std::memory_order_relaxed); }

  // alpha and eps as constructed; beta as now.
  PrioritizedConfig config() const;
  // Throws ValueError unless beta is finite and >= 0.
  void set_beta(double beta);

  void ValidateSample(const SampleRequest& request) const override;
  // O(B * depth) tree descent, queries interleaved level by level.
  void Draw(const SampleRequest& request, int64_t begin, int64_t end,
            int64_t* slots) const override;
  // One unstratified draw over the whole total. O(depth).
  int64_t Redraw(const SampleRequest& request, int64_t i, uint32_t attempt,
                 const int64_t* slots) const override;
  // A positive leaf. O(1).
  bool Drawable(const SampleRequest&, int64_t, int64_t slot, const int64_t*) const override {
    return tree_.leaf(slot) != 0;
  }
  uint64_t DrawWeight(int64_t slot) const override { return tree_.leaf(slot); }
  // O(B).
  void Weights(const int64_t* slots, int64_t begin, int64_t end, float* weights) const override;
  // O(n + depth) for a contiguous range (wrapping ranges are two).
  void OnInsert(int64_t first, int64_t n) override;
  uint64_t epoch() const override { return state_->epoch.load(std::memory_order_acquire); }
  // Finishes a rescale a dead writer left halfway, then rebuilds every internal node from
  // the leaves. O(capacity).
  void Repair() override;
  bool prioritized() const override { return true; }
  void ValidatePriorities(const double* priorities, int64_t n) const override;
  // O(n * depth); may rescale the tree (see above).
  void UpdatePriorities(const int64_t* slots, const double* priorities, int64_t n) override;

  // q = (p + eps)^alpha for a raw priority p. O(1).
  double Transform(double priority) const;
  // The stored q of `slot` as the tree holds it (units / 2^scale_exp). O(1).
  double StoredPriority(int64_t slot) const;
  const SumTree& tree() const { return tree_; }

  // State for the device buffer's tests: leaves in units, the scale and the running max q.
  struct State {
    std::vector<uint64_t> leaves;
    int scale_exp = 0;
    double max_q = 1.0;
  };
  State GetState() const;
  // Throws ValueError (changing nothing) unless the state fits this sampler.
  void SetState(const State& state);

 private:
  void Initialize(const PrioritizedConfig& config, int64_t capacity);
  // `slot` if its leaf is positive, else -1.
  int64_t Checked(int64_t slot) const;
  uint64_t ToUnits(double q) const;
  // With the scale 2^scale_exp given (one load per batch).
  static uint64_t ToUnits(double q, double scale);
  // Makes sure q fits the fixed-point budget, rescaling the tree if it does not.
  void Reserve(double q);
  // Shifts the leaves from rescale_next on and adopts the target scale. Writer lock held.
  void FinishRescale();
  // Runs a whole-tree change with the epoch odd, so concurrent samples start over.
  template <typename Fn>
  void WithEpoch(Fn&& fn);

  PrioritizedConfig config_;
  int64_t capacity_;
  std::unique_ptr<PriorityState> owned_state_;
  PriorityState* state_ = nullptr;
  SumTree tree_;
  double unit_budget_ = 0;  // largest units a leaf may hold: 2^62 / capacity
};

std::unique_ptr<Selector> MakePrioritizedSelector(const ConfigValue& settings, const TableContext& table);

}  // namespace reverie
