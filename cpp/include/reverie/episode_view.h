// The episode view ("episodes"): how the rows of a table of vectorized env steps become
// n-step transitions and sequence windows (episodes.h has the logic). It keeps each row's
// flags, fixed when the row is written (first row of an episode, final-observation row,
// terminated, truncated), and each env stream's last flags, in the table's region.
//
// Settings: {"kind": "episodes", "num_envs": N, "reward": "<field>", "terminated": "<field>",
// "truncated": "<field>", "obs": ["<field>", ...], "frame_stack": k}. Needs the FIFO writer
// (its ring has N streams: ring.h), no max_times_sampled, and a sampler with replacement.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "reverie/episodes.h"
#include "reverie/part.h"

namespace reverie {

class Table;
struct ArrayView;

class EpisodeView final : public Part {
 public:
  // Throws ValueError / TypeError unless the settings fit the spec and capacity.
  EpisodeView(const ConfigValue& settings, const TableContext& table);

  const EpisodeConfig& config() const { return config_; }
  // The episode boundaries (terminated, truncated) are kept as row flags when a step is
  // written: those fields cannot be updated in place.
  void CheckFieldUpdate(int field, const std::string& name) const override;
  int64_t num_envs() const { return config_.num_envs; }
  int64_t stream_rows() const { return capacity_ / config_.num_envs; }

  // The FIFO protocol's hook, the writer lock held: the flags of the rows of one write
  // (input rows are whole env steps with insertion numbers from `first`; the first `skip`
  // were not kept; `lapped`, sorted, lists insertions whose slot a newer write took, or is
  // null). O(count).
  void OnWrite(const ArrayView* const* values, int64_t first, int64_t count, int64_t skip,
               const std::vector<int64_t>* lapped, const class Ring& ring);

  // n-step transitions and sequence windows (episode_sampling.cc): see Table.
  void SampleTransitions(Table& table, int64_t batch, int n_step, double gamma,
                         uint8_t* const* out, uint8_t* const* next_out, float* returns,
                         float* discounts, int64_t* keys, float* weights);
  void SampleSequences(Table& table, int64_t batch, int64_t burn_in, int64_t length, bool drop,
                       uint8_t* const* out, uint8_t* mask, int64_t* keys, float* weights);
  // The argument checks of the two calls above (ValueError), for callers that allocate first.
  void CheckTransitionArgs(int64_t batch, int n_step, double gamma) const;
  void CheckSequenceArgs(int64_t batch, int64_t burn_in, int64_t length) const;

  // Part: row flags [capacity] and stream flags [num_envs].
  std::vector<size_t> Sections() const override;
  void Bind(const std::vector<uint8_t*>& sections, bool fresh) override;
  void StateArrays(std::vector<StateArray>* out) override;
  // Checks that whole env steps were written.
  void Restore(const ConfigValue& scalars, const Ring& stamps) override;

 private:
  template <typename Item>
  void SampleItems(Table& table, int64_t batch, Item& item, int64_t* keys, float* weights);

  EpisodeConfig config_;
  int64_t capacity_;
  uint8_t* flags_ = nullptr;    // per slot
  uint8_t* streams_ = nullptr;  // per env: its last row's flags
};

}  // namespace reverie
