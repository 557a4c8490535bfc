// The episode view (episode_view.h): row flags written with each env step, and the episode
// samplers, n-step transitions and sequence windows (episodes.h), drawn, gathered and
// validated against concurrent writers.
// Over 500 lines because it is one part: the samplers walk the view's own stream layout and
// flags, and splitting them off would expose those internals to a second file.
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/episode_view.h"
#include "reverie/episodes.h"
#include "reverie/philox.h"
#include "reverie/table.h"
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
  StoredRows(const Ring& ring, const uint8_t* flags, const uint8_t* reward, DType reward_dtype)
      : ring_(ring), flags_(flags), reward_(reward), reward_f32_(reward_dtype == DType::kFloat32),
        envs_(ring.streams()), rows_(ring.stream_rows()),
        generation_(ring.codec().Key(1, 0) - ring.codec().Key(0, 0)) {}

  // Keys (key.h) of one stream's rows: the next row is the next slot, one generation up
  // where the stream's rows wrap around. No division.
  RowPos Next(RowPos p) const {
    if (p.slot + 1 == p.base + rows_) {
      return RowPos{p.key + generation_ - (rows_ - 1), p.base, p.base};
    }
    return RowPos{p.key + 1, p.slot + 1, p.base};
  }
  RowPos Prev(RowPos p) const { return Back(p, 1); }
  // The row `behind` rows (0 <= behind < stream rows) before `p` in its stream.
  RowPos Back(RowPos p, int64_t behind) const {
    if (p.slot - behind >= p.base) return RowPos{p.key - behind, p.slot - behind, p.base};
    return RowPos{p.key - behind + rows_ - generation_, p.slot - behind + rows_, p.base};
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
  int64_t stream_rows() const { return rows_; }
  int64_t envs() const { return envs_; }
  // Starts loading the stamps, flags and rewards of rows [from, from + n) of the stream of
  // `slot` (row numbers relative to slot's, wrapping), one cache line at a time.
  void PrefetchRun(int64_t slot, int64_t from, int64_t n) const {
    const int64_t base = slot - slot % rows_;
    int64_t row = (slot - base + from) % rows_;
    if (row < 0) row += rows_;
    const int64_t reward_bytes = reward_f32_ ? 4 : 8;
    for (int64_t i = 0; i < n; i += 8, row += 8) {
      if (row >= rows_) row -= rows_;
      const int64_t at = base + row;
      ring_.PrefetchStamp(at);
      __builtin_prefetch(flags_ + at);
      __builtin_prefetch(reward_ + at * reward_bytes);
    }
  }

 private:
  const Ring& ring_;
  const uint8_t* flags_;
  const uint8_t* reward_;
  bool reward_f32_;
  int64_t envs_;  // streams: a step of all envs is envs_ insertions
  int64_t rows_;  // rows per stream
  int64_t generation_;  // one generation in key units (2^slot bits)
};

// Whether every row of lo's stream from lo to hi (inclusive) still holds its key.
bool RangeUnchanged(const StoredRows& rows, RowPos lo, RowPos hi) {
  for (RowPos p = lo; p.key <= hi.key; p = rows.Next(p)) {
    if (!rows.Unchanged(p)) return false;
  }
  return true;
}

// Copies the fields of a row (obs fields as frame stacks ending there) into one output
// position. Row sizes are looked up once per call.
class RowCopier {
 public:
  RowCopier(const Storage& storage, const EpisodeConfig& episodes)
      : storage_(storage), k_(episodes.frame_stack) {
    for (size_t f = 0; f < storage.num_fields(); ++f) {
      row_bytes_.push_back(storage.spec()[f].row_bytes());
      stacked_.push_back(0);
    }
    if (k_ > 1) {
      for (int f : episodes.obs) stacked_[static_cast<size_t>(f)] = 1;
    }
  }

  size_t fields() const { return row_bytes_.size(); }
  // Bytes one output position of field f takes.
  size_t out_bytes(size_t f) const {
    return stacked_[f] ? row_bytes_[f] * static_cast<size_t>(k_) : row_bytes_[f];
  }
  // Field f of `row` (stack: its frame stack, when f is stacked) to dst.
  void CopyField(size_t f, RowPos row, const RowPos* stack, uint8_t* dst) const {
    const size_t bytes = row_bytes_[f];
    const uint8_t* column = storage_.column(f);
    if (stacked_[f]) {
      for (int m = 0; m < k_; ++m) {
        RacyCopy(dst + static_cast<size_t>(m) * bytes, column + static_cast<size_t>(stack[m].slot) * bytes, bytes);
      }
    } else {
      RacyCopy(dst, column + static_cast<size_t>(row.slot) * bytes, bytes);
    }
  }
  // Field f (not stacked) of the adjacent rows [slot, slot + n): one copy.
  void CopyRun(size_t f, int64_t slot, int64_t n, uint8_t* dst) const {
    const size_t bytes = row_bytes_[f];
    RacyCopy(dst, storage_.column(f) + static_cast<size_t>(slot) * bytes, bytes * static_cast<size_t>(n));
  }
  bool stacked(size_t f) const { return stacked_[f] != 0; }
  // Starts loading every field of rows [slot, slot + n) (adjacent rows of one stream), one
  // cache line at a time: the rows of different items are independent cache misses, and
  // issuing them together overlaps them.
  void Prefetch(int64_t slot, int64_t n) const {
    for (size_t f = 0; f < row_bytes_.size(); ++f) {
      const uint8_t* first = storage_.column(f) + static_cast<size_t>(slot) * row_bytes_[f];
      const size_t bytes = row_bytes_[f] * static_cast<size_t>(n);
      for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(first + b);
      __builtin_prefetch(first + bytes - 1);
    }
  }

 private:
  const Storage& storage_;
  int k_;
  std::vector<size_t> row_bytes_;
  std::vector<uint8_t> stacked_;
};

}  // namespace

EpisodeView::EpisodeView(const ConfigValue& settings, const TableContext& table)
    : capacity_(table.capacity) {
  EpisodeConfig& e = config_;
  const std::vector<FieldSpec>& spec = *table.spec;
  e.num_envs = settings.At("num_envs", "episode view").AsInt("num_envs");
  REVERIE_CHECK(e.num_envs >= 1, "num_envs must be >= 1, got ", e.num_envs);
  REVERIE_CHECK(capacity_ % e.num_envs == 0, "capacity must be a multiple of num_envs (each env "
                "stream holds capacity / num_envs steps): got capacity ", capacity_, " and num_envs ",
                e.num_envs);
  const ConfigValue& k = settings.Get("frame_stack");
  e.frame_stack = k.is_null() ? 1 : static_cast<int>(k.AsInt("frame_stack"));
  REVERIE_CHECK(e.frame_stack >= 1 && e.frame_stack <= 64, "frame_stack must be in [1, 64], got ",
                e.frame_stack);
  REVERIE_CHECK(e.frame_stack <= capacity_ / e.num_envs, "frame_stack ", e.frame_stack,
                " is longer than an env stream holds (", capacity_ / e.num_envs, " steps)");
  const auto field = [&](const char* role) {
    const std::string& name = settings.At(role, "episode view").AsString(role);
    return table.FieldIndex(name, internal::Concat("the ", role, " field"));
  };
  e.reward = field("reward");
  e.terminated = field("terminated");
  e.truncated = field("truncated");
  for (const ConfigValue& obs : settings.At("obs", "episode view").AsList("obs")) {
    e.obs.push_back(table.FieldIndex(obs.AsString("an observation field"), "the observation field"));
  }
  const FieldSpec& reward = spec[static_cast<size_t>(e.reward)];
  REVERIE_CHECK_TYPE(reward.shape.empty() && (reward.dtype == DType::kFloat32 || reward.dtype == DType::kFloat64),
                     "reward field '", reward.name, "' must be a float32 or float64 scalar, got ",
                     DTypeName(reward.dtype), ShapeString(reward.shape.data(), static_cast<int>(reward.shape.size())));
  for (const auto& [index, part] : {std::pair{e.terminated, "terminated"}, std::pair{e.truncated, "truncated"}}) {
    const FieldSpec& flag = spec[static_cast<size_t>(index)];
    REVERIE_CHECK_TYPE(flag.shape.empty() && flag.dtype == DType::kBool, part, " field '", flag.name,
                       "' must be a bool scalar, got ", DTypeName(flag.dtype),
                       ShapeString(flag.shape.data(), static_cast<int>(flag.shape.size())));
  }
  REVERIE_CHECK(e.terminated != e.truncated, "terminated and truncated must be different fields");
}

std::vector<size_t> EpisodeView::Sections() const {
  return {static_cast<size_t>(capacity_), static_cast<size_t>(config_.num_envs)};
}

void EpisodeView::Bind(const std::vector<uint8_t*>& sections, bool fresh) {
  flags_ = sections[0];
  streams_ = sections[1];
  if (fresh) std::fill(streams_, streams_ + config_.num_envs, kStreamStart);
}

void EpisodeView::StateArrays(std::vector<StateArray>* out) {
  out->push_back(StateArray{"episodes.row_flags", "uint8", {capacity_}, flags_, true});
  out->push_back(StateArray{"episodes.stream_flags", "uint8", {config_.num_envs}, streams_, false});
}

void EpisodeView::Restore(const ConfigValue&, const Ring& stamps) {
  REVERIE_CHECK(stamps.committed() % config_.num_envs == 0, stamps.committed(),
                " rows written are not whole steps of num_envs=", config_.num_envs, " envs");
}

void EpisodeView::OnWrite(const ArrayView* const* values, int64_t first, int64_t count, int64_t skip,
                          const std::vector<int64_t>* lapped, const Ring& ring) {
  // Input rows are whole env steps and every write claims whole steps, so `first` is a
  // multiple of num_envs: row i belongs to env i % num_envs. Bool inputs are one byte per
  // value whether typed or not (Validate).
  const auto* terminated = static_cast<const uint8_t*>(values[config_.terminated]->data);
  const auto* truncated = static_cast<const uint8_t*>(values[config_.truncated]->data);
  const int64_t envs = config_.num_envs;
  int64_t env = 0;
  Ring::Cursor c(ring, first + skip);
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t f = RowFlagsAfter(streams_[env], terminated[i] != 0, truncated[i] != 0);
    streams_[env] = f;
    if (i >= skip) {
      const int64_t n = first + i;
      if (lapped == nullptr || !std::binary_search(lapped->begin(), lapped->end(), n)) {
        RacyCopy(flags_ + c.slot(), &f, 1);
      }
      c.Next();
    }
    env = env + 1 == envs ? 0 : env + 1;
  }
}

void EpisodeView::CheckTransitionArgs(int64_t batch, int n_step, double gamma) const {
  REVERIE_CHECK(batch > 0, "batch_size must be > 0, got ", batch);
  REVERIE_CHECK(n_step >= 1, "n_step must be >= 1, got ", n_step);
  REVERIE_CHECK(gamma >= 0.0 && gamma <= 1.0, "gamma must be in [0, 1], got ", gamma);
}

void EpisodeView::CheckSequenceArgs(int64_t batch, int64_t burn_in, int64_t length) const {
  REVERIE_CHECK(batch > 0, "batch_size must be > 0, got ", batch);
  REVERIE_CHECK(length >= 1, "length must be >= 1, got ", length);
  REVERIE_CHECK(burn_in >= 0, "burn_in must be >= 0, got ", burn_in);
  REVERIE_CHECK(length <= stream_rows() - burn_in, "a sequence of burn_in + length = ",
                burn_in, " + ", length, " steps is longer than an env stream holds (capacity / ",
                "num_envs = ", stream_rows(), ")");
}

template <typename Item>
void EpisodeView::SampleItems(Table& table, int64_t batch, Item& item, int64_t* keys, float* weights) {
  const Ring& ring_ = table.ring_;
  Selector* sampler_ = table.selector_.get();
  const int64_t stream_rows = ring_.stream_rows();
  auto rows_at = [stream_rows](int64_t key, int64_t slot) {
    return RowPos{key, slot, slot - slot % stream_rows};
  };
  int64_t claimed = 0;
  const SampleRequest request = table.BeginSample(batch, &claimed);
  const std::unique_ptr<int64_t[]> slot_buffer(new int64_t[static_cast<size_t>(batch)]);
  int64_t* slots = slot_buffer.get();
  float* w = sampler_->prioritized() ? weights : nullptr;
  const int64_t range = request.draw_range();
  const int64_t cap = capacity_;
  // A prioritized draw is a slot (a leaf of the tree). A uniform draw d in [0, range) is the
  // key claimed - range + d: with several streams the claimed keys' slots are no prefix of
  // the ring (ring.h), so the draw is over keys and mapped to their slots.
  const bool by_key = !sampler_->prioritized();
  const int64_t oldest = claimed - range;
  auto to_slot = [&](int64_t d) { return d < 0 || !by_key ? d : ring_.SlotOfInsertion(oldest + d); };
  std::atomic<bool> none{false};  // no valid start exists

  // Every valid start (slot, key and cumulative draw weight), listed once per piece of the
  // batch when valid starts are too rare for random draws to find.
  struct Candidates {
    bool listed = false;
    std::vector<int64_t> slots, keys;
    std::vector<uint64_t> cumulative;
  };
  // Whether `slot` holds a valid start for position i; then slots[i], keys[i] and the item's
  // plan are set.
  auto valid = [&](int64_t i, int64_t slot) {
    if (slot < 0 || slot >= cap) return false;
    const uint64_t stamp = ring_.LoadStamp(slot);
    if (!Stamp::IsCommitted(stamp)) return false;
    if (!item.Plan(i, rows_at(Stamp::KeyOf(stamp), slot))) return false;
    slots[i] = slot;
    keys[i] = Stamp::KeyOf(stamp);
    return true;
  };
  // Makes slots[i] a valid start, drawing again (attempt numbers from `attempt`) as needed.
  // slots[i] holds the first draw already mapped to its slot.
  auto resolve = [&](int64_t i, uint32_t attempt, Candidates& list) {
    if (valid(i, slots[i])) return true;
    for (uint32_t a = attempt + 1; a <= attempt + kMaxStartDraws; ++a) {
      if (valid(i, to_slot(sampler_->Redraw(request, i, a, slots)))) return true;
    }
    // Valid starts are rare (or there are none): list them all, O(capacity), and draw among
    // them with the sampler's weights, so the draw stays uniform (or proportional to
    // priority) among valid starts. A writer may change a listed start meanwhile: then the
    // list is made again.
    for (int round = 0; round < 3; ++round) {
      if (!list.listed || round > 0) {
        list = Candidates{};
        list.listed = true;
        uint64_t total = 0;
        for (int64_t slot = 0; slot < cap; ++slot) {
          const uint64_t weight = sampler_->DrawWeight(slot);
          if (weight == 0 || !valid(i, slot)) continue;
          total += weight;
          list.slots.push_back(slot);
          list.keys.push_back(keys[i]);
          list.cumulative.push_back(total);
        }
      }
      if (list.slots.empty()) return false;
      const uint64_t u = MulHi64(RandomBits(request.seed, request.call, static_cast<uint32_t>(i),
                                            attempt + kMaxStartDraws + 1 + static_cast<uint32_t>(round)),
                                 list.cumulative.back());
      const auto pick = static_cast<size_t>(
          std::upper_bound(list.cumulative.begin(), list.cumulative.end(), u) - list.cumulative.begin());
      if (valid(i, list.slots[pick]) && keys[i] == list.keys[pick]) return true;
    }
    return false;
  };
  auto work = [&](int64_t begin, int64_t end) {
    sampler_->Draw(request, begin, end, slots);
    for (int64_t i = begin; i < end; ++i) slots[i] = to_slot(slots[i]);
    // In phases over the whole piece, so the cache misses of different items overlap: start
    // loading every item's stamps and flags, plan every item (start loading the rows it
    // will copy), copy them all, then check them all.
    for (int64_t i = begin; i < end; ++i) {
      if (slots[i] >= 0 && slots[i] < cap) item.Prefetch(slots[i]);
    }
    auto fail = [&] { none.store(true, std::memory_order_relaxed); };
    Candidates list;
    for (int64_t i = begin; i < end; ++i) {
      if (!resolve(i, 0, list)) return fail();
      item.PrefetchData(i);
    }
    for (int64_t i = begin; i < end; ++i) item.Copy(i);
    std::atomic_thread_fence(std::memory_order_acquire);
    for (int64_t i = begin; i < end; ++i) {
      // A row changed under the copy (a writer lapped it): another start for this item.
      for (uint32_t attempt = kMaxStartDraws + 2; !item.Recheck(i); attempt += kMaxStartDraws + 2) {
        slots[i] = to_slot(sampler_->Redraw(request, i, attempt, slots));
        if (!resolve(i, attempt, list)) return fail();
        item.Copy(i);
        std::atomic_thread_fence(std::memory_order_acquire);
      }
    }
    if (w != nullptr) sampler_->Weights(slots, begin, end, w);
  };
  ThreadPool& pool = ThreadPool::Shared();
  const int64_t chunks = batch >= kMinParallelItems ? pool.workers() + 1 : 1;
  for (int attempt = 0;; ++attempt) {
    // A tree rescale or a field update while drawing (rare): the call is drawn again, at
    // last under the writer lock (as in Sample).
    std::optional<Table::WriterLock> lock;
    if (attempt >= Table::kAttemptsBeforeLock) lock.emplace(table);
    const uint64_t epoch = table.StableEpoch();
    pool.ParallelFor(batch, chunks, work);
    if (none.load(std::memory_order_relaxed)) {
      table.limiter_.Unsample(batch);
      table.UndoCall(request.call);  // nothing was sampled: the table is as before
      throw std::invalid_argument(item.NoneMessage());
    }
    if (table.Epoch() == epoch) break;
  }
}

void EpisodeView::SampleTransitions(Table& table, int64_t batch, int n_step, double gamma,
                                    uint8_t* const* out, uint8_t* const* next_out, float* returns,
                                    float* discounts, int64_t* keys, float* weights) {
  CheckTransitionArgs(batch, n_step, gamma);
  const Storage& storage = table.storage_;
  const EpisodeConfig& episodes_ = config_;
  const StoredRows rows(table.ring_, flags_, storage.column(static_cast<size_t>(episodes_.reward)),
                        storage.spec()[static_cast<size_t>(episodes_.reward)].dtype);
  const RowCopier copier(storage, episodes_);

  struct StartPlan {
    RowPos start, boot, lo;
    double ret, discount;
  };
  const std::unique_ptr<StartPlan[]> plans(new StartPlan[static_cast<size_t>(batch)]);
  struct Item {
    const StoredRows& rows;
    const RowCopier& copier;
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
        // Complete when planned; a writer may have overwritten a row since, and then the
        // recheck rejects this copy.
        StackRows(rows, p.start, k, stack);
        StackRows(rows, p.boot, k, next_stack);
      }
      for (size_t f = 0; f < copier.fields(); ++f) {
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
    void Prefetch(int64_t slot) const {
      rows.PrefetchRun(slot, 1 - episodes.frame_stack, episodes.frame_stack + n_step);
    }
    void PrefetchData(int64_t i) const {
      const auto& p = plans[i];
      // Rows lo..boot of one stream: adjacent unless they wrap around its end.
      if (p.boot.slot >= p.lo.slot) {
        copier.Prefetch(p.lo.slot, p.boot.slot - p.lo.slot + 1);
      } else {
        copier.Prefetch(p.lo.slot, p.lo.base + rows.stream_rows() - p.lo.slot);
        copier.Prefetch(p.boot.base, p.boot.slot - p.boot.base + 1);
      }
    }
    std::string NoneMessage() const {
      return "no transition can be sampled yet: a start needs a stored next row in its env "
             "stream (and a complete frame stack); add more steps";
    }
  } item{rows, copier, episodes_, plans.get(), out, next_out, returns, discounts,
         n_step, gamma};
  SampleItems(table, batch, item, keys, weights);
}

void EpisodeView::SampleSequences(Table& table, int64_t batch, int64_t burn_in, int64_t length,
                                  bool drop, uint8_t* const* out, uint8_t* mask, int64_t* keys,
                                  float* weights) {
  CheckSequenceArgs(batch, burn_in, length);
  const EpisodeConfig& episodes_ = config_;
  const int k = episodes_.frame_stack;
  const int64_t total = burn_in + length;
  const Storage& storage = table.storage_;
  const StoredRows rows(table.ring_, flags_, storage.column(static_cast<size_t>(episodes_.reward)),
                        storage.spec()[static_cast<size_t>(episodes_.reward)].dtype);
  const RowCopier copier(storage, episodes_);
  std::vector<int64_t> window(static_cast<size_t>(batch * total));
  std::vector<WindowResult> results(static_cast<size_t>(batch));

  struct Item {
    const StoredRows& rows;
    const RowCopier& copier;
    int k;
    int64_t burn_in, length, total;
    bool drop;
    int64_t* window;
    WindowResult* results;
    uint8_t* const* out;
    uint8_t* mask;

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
      // Runs of stored rows (one stream, not wrapping) are copied field by field in one go;
      // zero rows are cleared; stacked fields go position by position.
      int64_t t = 0;
      while (t < total) {
        int64_t end = t + 1;
        if (slots[t] < 0) {
          while (end < total && slots[end] < 0) ++end;
        } else {
          while (end < total && slots[end] == slots[end - 1] + 1) ++end;
        }
        for (size_t f = 0; f < copier.fields(); ++f) {
          const size_t bytes = copier.out_bytes(f);
          uint8_t* dst = out[f] + static_cast<size_t>(i * total + t) * bytes;
          if (slots[t] < 0) {
            std::memset(dst, 0, bytes * static_cast<size_t>(end - t));
          } else if (!copier.stacked(f)) {
            copier.CopyRun(f, slots[t], end - t, dst);
          } else {
            for (int64_t u = t; u < end; ++u) {
              // The window is one stream: a row is hi's minus its distance in slots.
              int64_t behind = hi.slot - slots[u];
              if (behind < 0) behind += rows.stream_rows();
              const RowPos row = rows.Back(hi, behind);
              StackRows(rows, row, k, stack);  // rows in [lo, hi]; see SampleTransitions' Copy
              copier.CopyField(f, row, stack, dst + static_cast<size_t>(u - t) * bytes);
            }
          }
        }
        t = end;
      }
    }
    bool Recheck(int64_t i) const { return RangeUnchanged(rows, results[i].lo, results[i].hi); }
    void Prefetch(int64_t slot) const { rows.PrefetchRun(slot, 1 - k - burn_in, total + k - 1); }
    void PrefetchData(int64_t i) const {
      const int64_t* slots = window + i * total;
      for (int64_t t = 0; t < total; ++t) {
        if (slots[t] < 0) continue;
        int64_t end = t + 1;
        while (end < total && slots[end] == slots[end - 1] + 1) ++end;
        copier.Prefetch(slots[t], end - t);
        t = end - 1;
      }
    }
    std::string NoneMessage() const {
      return internal::Concat(
          "no sequence can be sampled: ", drop ? "with episode_end = drop a start needs "
          : "a start needs ", drop ? internal::Concat(length, " steps left in its episode")
                                   : std::string("a stored transition row"),
          " (and a complete frame stack); add more steps", drop ? " or set episode_end to pad" : "");
    }
  } item{rows, copier, k, burn_in, length, total, drop, window.data(), results.data(),
         out, mask};
  SampleItems(table, batch, item, keys, weights);
}

void EpisodeView::CheckFieldUpdate(int field, const std::string& name) const {
  REVERIE_CHECK(field != config_.terminated && field != config_.truncated, "field '", name,
                "' marks episode boundaries, which the buffer indexed when the step was written: "
                "it cannot be updated in place");
}

}  // namespace reverie
