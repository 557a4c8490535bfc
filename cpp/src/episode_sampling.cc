// The episode samplers of ReplayBuffer: n-step transitions and sequence windows (episodes.h),
// drawn, gathered and validated against concurrent writers.
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/episodes.h"
#include "reverie/replay_buffer.h"
#include "reverie/thread_pool.h"

namespace reverie {
namespace {

constexpr uint32_t kMaxStartDraws = 256;  // random draws of a start before probing slot by slot
constexpr int64_t kMinParallelItems = 16;

// The buffer's stored rows as episodes.h reads them. Presence is the commit stamp (ring.h);
// flags and rewards are read after it (acquire) and the caller rechecks the stamps after its
// copy, so a row overwritten meanwhile is never used.
class StoredRows {
 public:
  StoredRows(const Ring& ring, const uint8_t* flags, const uint8_t* reward, DType reward_dtype,
             int64_t envs)
      : ring_(ring), flags_(flags), reward_(reward), reward_f32_(reward_dtype == DType::kFloat32),
        envs_(envs), capacity_(ring.capacity()) {}

  RowPos Next(RowPos p) const {
    const int64_t slot = p.slot + envs_;
    return RowPos{p.key + envs_, slot >= capacity_ ? slot - capacity_ : slot};
  }
  RowPos Prev(RowPos p) const {
    const int64_t slot = p.slot - envs_;
    return RowPos{p.key - envs_, slot < 0 ? slot + capacity_ : slot};
  }
  bool Present(RowPos p) const {
    return p.key >= 0 && ring_.LoadStamp(p.slot) == Stamp::Committed(p.key);
  }
  bool Unchanged(RowPos p) const {
    return ring_.RecheckStamp(p.slot) == Stamp::Committed(p.key);
  }
  uint8_t Flags(RowPos p) const {
    uint8_t f;
    RacyCopy(&f, flags_ + p.slot, 1);
    return f;
  }
  double Reward(RowPos p) const {
    if (reward_f32_) {
      float r;
      RacyCopy(&r, reward_ + p.slot * 4, 4);
      return r;
    }
    double r;
    RacyCopy(&r, reward_ + p.slot * 8, 8);
    return r;
  }
  int64_t envs() const { return envs_; }

 private:
  const Ring& ring_;
  const uint8_t* flags_;
  const uint8_t* reward_;
  bool reward_f32_;
  int64_t envs_;
  int64_t capacity_;
};

// Whether every row of lo's stream from lo to hi (inclusive) still holds its key.
bool RangeUnchanged(const StoredRows& rows, RowPos lo, RowPos hi) {
  for (RowPos p = lo; p.key <= hi.key; p = rows.Next(p)) {
    if (!rows.Unchanged(p)) return false;
  }
  return true;
}

// Copies the fields of the row at `slot` (obs fields as frame stacks ending there) into
// position `at` of the outputs. `is_obs[f]` marks stacked fields.
struct RowCopier {
  const Storage& storage;
  const StoredRows& rows;
  const std::vector<uint8_t>& is_obs;
  int k;

  // Bytes one output position of field f takes.
  size_t out_bytes(size_t f) const {
    const size_t row = storage.spec()[f].row_bytes();
    return is_obs[f] ? row * static_cast<size_t>(k) : row;
  }
  void CopyField(size_t f, RowPos row, const RowPos* stack, uint8_t* dst) const {
    const size_t bytes = storage.spec()[f].row_bytes();
    const uint8_t* column = storage.column(f);
    if (is_obs[f] && k > 1) {
      for (int m = 0; m < k; ++m) {
        RacyCopy(dst + static_cast<size_t>(m) * bytes, column + static_cast<size_t>(stack[m].slot) * bytes, bytes);
      }
    } else {
      RacyCopy(dst, column + static_cast<size_t>(row.slot) * bytes, bytes);
    }
  }
};

}  // namespace

void ReplayBuffer::CheckTransitionArgs(int64_t batch, int n_step, double gamma) const {
  REVERIE_CHECK(episodes_.enabled(), "n-step sampling needs an episode buffer (num_envs)");
  REVERIE_CHECK(batch > 0, "batch_size must be > 0, got ", batch);
  REVERIE_CHECK(n_step >= 1, "n_step must be >= 1, got ", n_step);
  REVERIE_CHECK(gamma >= 0.0 && gamma <= 1.0, "gamma must be in [0, 1], got ", gamma);
}

void ReplayBuffer::CheckSequenceArgs(int64_t batch, int64_t burn_in, int64_t length) const {
  REVERIE_CHECK(episodes_.enabled(), "sequence sampling needs an episode buffer (num_envs)");
  REVERIE_CHECK(batch > 0, "batch_size must be > 0, got ", batch);
  REVERIE_CHECK(length >= 1, "length must be >= 1, got ", length);
  REVERIE_CHECK(burn_in >= 0, "burn_in must be >= 0, got ", burn_in);
  REVERIE_CHECK(burn_in + length <= stream_capacity(), "a sequence of burn_in + length = ",
                burn_in + length, " steps is longer than an env stream holds (capacity / num_envs = ",
                stream_capacity(), ")");
}

template <typename Item>
void ReplayBuffer::SampleItems(int64_t batch, Item& item, int64_t* keys, float* weights) {
  limiter_.AdmitSample(batch, poll_);
  SampleRequest request;
  request.seed = seed_;
  request.batch = batch;
  request.size = ring_.size();
  request.range = ring_.range();
  try {
    sampler_->ValidateSample(request);
  } catch (...) {
    limiter_.Unsample(batch);
    throw;
  }
  request.call = NextCall();
  const std::unique_ptr<int64_t[]> slot_buffer(new int64_t[static_cast<size_t>(batch)]);
  int64_t* slots = slot_buffer.get();
  float* w = sampler_->prioritized() ? weights : nullptr;
  const int64_t range = request.draw_range();
  std::atomic<bool> none{false};  // no valid start exists

  // Makes slots[i] a valid start, drawing again (attempt numbers from `attempt`) as needed.
  auto resolve = [&](int64_t i, uint32_t attempt) {
    auto valid = [&](int64_t slot) {
      if (slot < 0 || slot >= range) return false;
      const uint64_t stamp = ring_.LoadStamp(slot);
      if (!Stamp::IsCommitted(stamp)) return false;
      if (!item.Plan(i, RowPos{Stamp::KeyOf(stamp), slot})) return false;
      slots[i] = slot;
      keys[i] = Stamp::KeyOf(stamp);
      return true;
    };
    if (valid(slots[i])) return true;
    for (uint32_t a = attempt + 1; a <= attempt + kMaxStartDraws; ++a) {
      if (valid(sampler_->Redraw(request, i, a, slots))) return true;
    }
    // Valid starts are rare (or there are none): probe every slot from a random start.
    // Slightly biased toward the slots after long invalid runs; O(range).
    const int64_t from = std::max<int64_t>(0, sampler_->Redraw(request, i, attempt + kMaxStartDraws + 1, slots));
    for (int64_t n = 0; n < range; ++n) {
      int64_t slot = from + n;
      if (slot >= range) slot -= range;
      if (sampler_->Drawable(request, i, slot, slots) && valid(slot)) return true;
    }
    return false;
  };
  auto work = [&](int64_t begin, int64_t end) {
    sampler_->Draw(request, begin, end, slots);
    for (int64_t i = begin; i < end; ++i) {
      uint32_t attempt = 0;
      for (;;) {
        if (!resolve(i, attempt)) {
          none.store(true, std::memory_order_relaxed);
          return;
        }
        item.Copy(i);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (item.Recheck(i)) break;
        attempt += kMaxStartDraws + 2;  // a row changed under the copy: another start
        slots[i] = sampler_->Redraw(request, i, attempt, slots);
      }
    }
    if (w != nullptr) sampler_->Weights(slots, begin, end, w);
  };
  ThreadPool& pool = ThreadPool::Shared();
  const int64_t chunks = batch >= kMinParallelItems ? pool.workers() + 1 : 1;
  for (;;) {
    // A tree rescale while drawing (rare): the call is drawn again (as in Sample).
    uint64_t epoch = sampler_->epoch();
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while ((epoch & 1) != 0 && std::chrono::steady_clock::now() < give_up) {
      sched_yield();
      epoch = sampler_->epoch();
    }
    pool.ParallelFor(batch, chunks, work);
    if (none.load(std::memory_order_relaxed)) {
      limiter_.Unsample(batch);
      throw std::invalid_argument(item.NoneMessage());
    }
    if (sampler_->epoch() == epoch) break;
  }
}

void ReplayBuffer::SampleTransitions(int64_t batch, int n_step, double gamma, uint8_t* const* out,
                                     uint8_t* const* next_out, float* returns, float* discounts,
                                     int64_t* keys, float* weights) {
  CheckTransitionArgs(batch, n_step, gamma);
  const int k = episodes_.frame_stack;
  const size_t fields = storage_.num_fields();
  std::vector<uint8_t> is_obs(fields, 0);
  for (int f : episodes_.obs) is_obs[static_cast<size_t>(f)] = 1;
  const StoredRows rows(ring_, flags_, storage_.column(static_cast<size_t>(episodes_.reward)),
                        storage_.spec()[static_cast<size_t>(episodes_.reward)].dtype,
                        episodes_.num_envs);
  const RowCopier copier{storage_, rows, is_obs, k};

  struct StartPlan {
    RowPos start, boot, lo;
    double ret, discount;
  };
  const std::unique_ptr<StartPlan[]> plans(new StartPlan[static_cast<size_t>(batch)]);
  struct Item {
    const StoredRows& rows;
    const RowCopier& copier;
    const Storage& storage;
    const EpisodeConfig& episodes;
    StartPlan* plans;
    uint8_t* const* out;
    uint8_t* const* next_out;
    float* returns;
    float* discounts;
    int n_step;
    double gamma;

    bool Plan(int64_t i, RowPos start) const {
      if (!IsTransition(rows.Flags(start))) return false;
      const RowPos lo = StackBottom(rows, start, episodes.frame_stack);
      if (lo.key < 0) return false;
      const NStepResult r = NStep(rows, start, n_step, gamma);
      if (r.steps == 0) return false;
      plans[i] = {start, r.boot, lo, r.ret, r.discount};
      return true;
    }
    void Copy(int64_t i) const {
      const auto& p = plans[i];
      const int k = episodes.frame_stack;
      RowPos stack[64], next_stack[64];
      if (k > 1) {
        StackRows(rows, p.start, k, stack);
        StackRows(rows, p.boot, k, next_stack);
      }
      for (size_t f = 0; f < storage.num_fields(); ++f) {
        const size_t bytes = copier.out_bytes(f);
        copier.CopyField(f, p.start, stack, out[f] + static_cast<size_t>(i) * bytes);
      }
      for (size_t j = 0; j < episodes.obs.size(); ++j) {
        const auto f = static_cast<size_t>(episodes.obs[j]);
        const size_t bytes = copier.out_bytes(f);
        copier.CopyField(f, p.boot, next_stack, next_out[j] + static_cast<size_t>(i) * bytes);
      }
      returns[i] = static_cast<float>(p.ret);
      discounts[i] = static_cast<float>(p.discount);
    }
    bool Recheck(int64_t i) const { return RangeUnchanged(rows, plans[i].lo, plans[i].boot); }
    std::string NoneMessage() const {
      return "no transition can be sampled yet: a start needs a stored next row in its env "
             "stream (and a complete frame stack); add more steps";
    }
  } item{rows, copier, storage_, episodes_, plans.get(), out, next_out, returns, discounts,
         n_step, gamma};
  SampleItems(batch, item, keys, weights);
}

void ReplayBuffer::SampleSequences(int64_t batch, int64_t burn_in, int64_t length, bool drop,
                                   uint8_t* const* out, uint8_t* mask, int64_t* keys,
                                   float* weights) {
  CheckSequenceArgs(batch, burn_in, length);
  const int k = episodes_.frame_stack;
  const int64_t total = burn_in + length;
  const size_t fields = storage_.num_fields();
  std::vector<uint8_t> is_obs(fields, 0);
  for (int f : episodes_.obs) is_obs[static_cast<size_t>(f)] = 1;
  const StoredRows rows(ring_, flags_, storage_.column(static_cast<size_t>(episodes_.reward)),
                        storage_.spec()[static_cast<size_t>(episodes_.reward)].dtype,
                        episodes_.num_envs);
  const RowCopier copier{storage_, rows, is_obs, k};
  std::vector<int64_t> window(static_cast<size_t>(batch * total));
  std::vector<WindowResult> results(static_cast<size_t>(batch));

  struct Item {
    const StoredRows& rows;
    const RowCopier& copier;
    const Storage& storage;
    int k;
    int64_t burn_in, length, total;
    bool drop;
    int64_t* window;
    WindowResult* results;
    uint8_t* const* out;
    uint8_t* mask;
    int64_t capacity;

    bool Plan(int64_t i, RowPos start) const {
      if (!IsTransition(rows.Flags(start))) return false;
      if (StackBottom(rows, start, k).key < 0) return false;
      const WindowResult r = SequenceWindow(rows, start, burn_in, length, drop, k, window + i * total,
                                            mask + i * total);
      results[i] = r;
      return r.ok;
    }
    void Copy(int64_t i) const {
      const int64_t* slots = window + i * total;
      const RowPos hi = results[i].hi;
      RowPos stack[64];
      for (int64_t t = 0; t < total; ++t) {
        const int64_t slot = slots[t];
        if (slot < 0) {
          for (size_t f = 0; f < storage.num_fields(); ++f) {
            const size_t bytes = copier.out_bytes(f);
            std::memset(out[f] + static_cast<size_t>(i * total + t) * bytes, 0, bytes);
          }
          continue;
        }
        // The window is one stream: a row's key is hi's minus its distance in slots.
        int64_t behind = hi.slot - slot;
        if (behind < 0) behind += capacity;
        const RowPos row{hi.key - behind, slot};
        if (k > 1) StackRows(rows, row, k, stack);  // reads rows in [lo, hi] only
        for (size_t f = 0; f < storage.num_fields(); ++f) {
          const size_t bytes = copier.out_bytes(f);
          copier.CopyField(f, row, stack, out[f] + static_cast<size_t>(i * total + t) * bytes);
        }
      }
    }
    bool Recheck(int64_t i) const { return RangeUnchanged(rows, results[i].lo, results[i].hi); }
    std::string NoneMessage() const {
      return internal::Concat(
          "no sequence can be sampled: ", drop ? "with episode_end='drop' a start needs "
          : "a start needs ", drop ? internal::Concat(length, " steps left in its episode")
                                   : std::string("a stored transition row"),
          " (and a complete frame stack); add more steps", drop ? " or use episode_end='pad'" : "");
    }
  } item{rows, copier, storage_, k, burn_in, length, total, drop, window.data(), results.data(),
         out, mask, capacity()};
  SampleItems(batch, item, keys, weights);
}

}  // namespace reverie
