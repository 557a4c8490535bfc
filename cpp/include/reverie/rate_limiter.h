// Replay-ratio control (in the manner of Reverb's rate limiters): a minimum size before any
// sampling, and a target number of sampled items per inserted item with a tolerance.
//
// With spi = samples_per_insert (> 0), I items inserted and S items sampled, the running
// difference is D = I * spi - S and its target is D0 = spi * min_size. A sample call starts
// only when I >= min_size and D >= D0 - tolerance; an insert starts only when
// I < min_size or D <= D0 + tolerance. Both conditions are checked before the call (a
// call may then overshoot the band by its own size), so sampling and inserting can never
// both be blocked: whatever the tolerance, no deadlock. With spi = 0 only min_size applies.
// Over a run, S / I tends to spi whatever the batch sizes.
//
// Inserts count as I when claimed for the insert check and when committed for the sample
// check, so a sample never starts before the items that allow it are readable.
//
// Changing spi or min_size while the limiter runs keeps the current error D - D0: the new
// ratio applies to inserts from then on, and the history is not re-priced (raising spi from
// 1 to 4 after a million inserts must not allow three million samples at once). This is
// kept as an offset added to D. Inserts before min_size count for nothing here: until the
// ratio starts, a new setting applies from the beginning.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "reverie/common.h"
#include "reverie/region.h"
#include "reverie/ring.h"

namespace reverie {

struct RateLimitConfig {
  bool enabled = false;             // off: no waiting, sampling an empty buffer is an error
  int64_t min_size = 1;             // >= 1
  double samples_per_insert = 0.0;  // >= 0; 0 turns ratio control off
  double tolerance = 0.0;           // >= 0, in sampled items
  double timeout = -1.0;            // seconds a call may wait: < 0 forever, 0 never waits
};

// The limiter's shared state (in the buffer's region).
struct RateLimitState {
  std::atomic<bool> enabled{false};
  std::atomic<int64_t> min_size{1};
  std::atomic<double> samples_per_insert{0.0};
  std::atomic<double> tolerance{0.0};
  std::atomic<double> timeout{-1.0};
  std::atomic<double> offset{0.0};  // added to D; see "Changing spi" above
  alignas(64) std::atomic<int64_t> sampled{0};  // items sampled, ever
  alignas(64) Event event;                      // bumped by every insert, sample and change
};

// Thread-safety: all methods may be called concurrently from any thread or process.
class RateLimiter {
 public:
  RateLimiter() = default;
  RateLimiter(RateLimitState* state, const Ring* ring) : state_(state), ring_(ring) {}

  // Throws ValueError (changing nothing) for a bad config; wakes every waiter.
  void Configure(const RateLimitConfig& config);
  RateLimitConfig config() const;
  bool enabled() const { return state_->enabled.load(std::memory_order_relaxed); }
  int64_t sampled() const { return state_->sampled.load(std::memory_order_acquire); }
  // Whether an insert / a sample could start now (the checks do not depend on the call's
  // size: see above). O(1).
  bool CanInsert() const;
  bool CanSample() const;

  // Waits until an insert may start. `poll`, if set, runs about every 50 ms while waiting
  // (it may throw to abort, e.g. on Ctrl-C). Throws TimeoutError after the timeout.
  void AwaitInsert(int64_t n, const std::function<void()>& poll) const;
  // Waits until a sample of n may start and counts it as sampled (atomically with the
  // check). Throws TimeoutError after the timeout. When disabled it only counts.
  void AdmitSample(int64_t n, const std::function<void()>& poll);
  // Takes back a sample that was admitted but then refused (bad input).
  void Unsample(int64_t n);
  // Wakes waiters after inserts were committed.
  void Notify() { state_->event.Notify(); }
  // The sampled count and the offset (checkpoints).
  double offset() const { return state_->offset.load(std::memory_order_relaxed); }
  void Restore(int64_t sampled, double offset) {
    state_->sampled.store(sampled, std::memory_order_release);
    state_->offset.store(offset, std::memory_order_relaxed);
  }

 private:
  template <typename Ready>
  void Await(Ready&& ready, const char* what, int64_t n, const std::function<void()>& poll) const;
  std::string Explain(bool sample, int64_t n) const;
  // The sample condition for a given sampled count.
  bool SampleAllowed(int64_t sampled) const;

  RateLimitState* state_ = nullptr;
  const Ring* ring_ = nullptr;
};

}  // namespace reverie
