// The replay buffer: storage + ring writer + a sampler + gather, behind one lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "reverie/ring.h"
#include "reverie/sampler.h"
#include "reverie/storage.h"

namespace reverie {

// Thread-safety: every public method may be called from any number of threads at once.
// Add / Extend / UpdatePriorities / state changes take the lock exclusively; Sample takes it
// shared, so concurrent samples run in parallel and never see a row being written.
// (Lock-free writers are later work; the lock is the whole concurrency story for now.)
//
// Every method validates all of its input before it changes anything: after an exception the
// buffer is exactly as before.
class ReplayBuffer {
 public:
  // Throws ValueError for capacity < 1 or a bad spec.
  ReplayBuffer(int64_t capacity, std::vector<FieldSpec> spec, std::unique_ptr<Sampler> sampler,
               uint64_t seed);

  // Stores one item. `inputs` must name every field exactly once; each value's shape must be
  // the field's shape. O(item bytes) + the sampler's insert cost.
  void Add(const FieldInput* inputs, size_t n);
  // Stores the items along the leading axis of every input (the same length for all fields).
  // When more items than the capacity come at once, only the last `capacity` are kept (the
  // others count as written and overwritten). O(bytes) + insert cost.
  void Extend(const FieldInput* inputs, size_t n);

  // Draws `batch` items and writes, for each field f (spec order), the rows into out[f]
  // (batch * row_bytes each), the items' keys into `keys` and, for a prioritized sampler, the
  // importance weights into `weights` (may be null). Large gathers use the shared thread
  // pool; the result never depends on it. Throws ValueError when it cannot be served.
  void Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights);

  // Sets the priorities of the items named by keys (see Ring). A key that was never written
  // (or negative) throws IndexError; a key whose slot has been overwritten since is skipped
  // and counted in stale_updates(). Returns how many were skipped.
  int64_t UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n);

  int64_t capacity() const { return storage_.capacity(); }
  int64_t size() const;
  int64_t written() const;
  int64_t stale_updates() const;
  uint64_t seed() const { return seed_; }
  uint64_t sample_calls() const { return calls_.load(std::memory_order_relaxed); }
  const std::vector<FieldSpec>& spec() const { return storage_.spec(); }
  const Storage& storage() const { return storage_; }
  // Raw column memory, for zero-copy views. Writing through it bypasses the lock.
  uint8_t* column(size_t field) { return storage_.column(field); }
  const Sampler& sampler() const { return *sampler_; }

  // Runs fn(sampler) under the exclusive lock (beta changes, priority state).
  template <typename Fn>
  auto WithSampler(Fn&& fn) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    return fn(*sampler_);
  }

  // Counters for checkpoints: (written, sample calls, stale updates).
  struct Counters {
    int64_t written = 0;
    uint64_t sample_calls = 0;
    int64_t stale_updates = 0;
  };
  Counters GetCounters() const;
  // Throws ValueError unless written >= 0 and stale_updates >= 0.
  void SetCounters(const Counters& counters);
  // Copies `bytes` (capacity * row bytes) into column `field`. Throws on a size mismatch.
  void LoadColumn(size_t field, const void* data, size_t bytes);

 private:
  // Maps inputs to fields (values[f] for field f, spec order) and checks names, dtypes and
  // shapes. For Extend (`batched`), `leading` receives the common leading length.
  void Validate(const FieldInput* inputs, size_t n, bool batched, const ArrayView** values,
                int64_t* leading) const;
  void WriteRows(const ArrayView* const* values, int64_t count);
  // Validate + WriteRows under the lock, with the field table on the stack when it fits.
  void Write(const FieldInput* inputs, size_t n, bool batched);

  Storage storage_;
  std::unique_ptr<Sampler> sampler_;
  const uint64_t seed_;
  mutable std::shared_mutex mu_;
  Ring ring_;                      // guarded by mu_
  int64_t stale_updates_ = 0;      // guarded by mu_
  std::atomic<uint64_t> calls_{0};  // fetch_add per sample call; order irrelevant beyond
                                    // uniqueness, so relaxed suffices
};

}  // namespace reverie
