#include "reverie/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "reverie/common.h"

namespace reverie {
namespace {

constexpr auto kPollEvery = std::chrono::milliseconds(50);

}  // namespace

void RateLimiter::Configure(const RateLimitConfig& c) {
  REVERIE_CHECK(c.min_size >= 1, "min_size_to_sample must be >= 1, got ", c.min_size);
  REVERIE_CHECK(std::isfinite(c.samples_per_insert) && c.samples_per_insert >= 0,
                "samples_per_insert must be finite and >= 0, got ", c.samples_per_insert);
  REVERIE_CHECK(std::isfinite(c.tolerance) && c.tolerance >= 0,
                "tolerance must be finite and >= 0, got ", c.tolerance);
  REVERIE_CHECK(!std::isnan(c.timeout), "timeout must be a number of seconds, got NaN");
  if (!enabled()) {
    // Switched on: every insert so far counts at the new ratio, as if it had always run.
    state_->offset.store(0.0, std::memory_order_relaxed);
  } else {
    // A change while running keeps the error D - D0 = (I - min_size) * spi - S + offset,
    // counting only inserts past min_size: before the ratio starts, a new setting simply
    // applies from the beginning.
    const auto inserts = static_cast<double>(ring_->committed());
    const RateLimitConfig old = config();
    const auto past = [&](int64_t min_size) {
      return std::max(0.0, inserts - static_cast<double>(min_size));
    };
    const double kept =
        past(old.min_size) * old.samples_per_insert - past(c.min_size) * c.samples_per_insert;
    state_->offset.store(offset() + kept, std::memory_order_relaxed);
  }
  state_->enabled.store(c.enabled, std::memory_order_relaxed);
  state_->min_size.store(c.min_size, std::memory_order_relaxed);
  state_->samples_per_insert.store(c.samples_per_insert, std::memory_order_relaxed);
  state_->tolerance.store(c.tolerance, std::memory_order_relaxed);
  state_->timeout.store(c.timeout, std::memory_order_relaxed);
  state_->event.Notify();
}

RateLimitConfig RateLimiter::config() const {
  RateLimitConfig c;
  c.enabled = enabled();
  c.min_size = state_->min_size.load(std::memory_order_relaxed);
  c.samples_per_insert = state_->samples_per_insert.load(std::memory_order_relaxed);
  c.tolerance = state_->tolerance.load(std::memory_order_relaxed);
  c.timeout = state_->timeout.load(std::memory_order_relaxed);
  return c;
}

bool RateLimiter::CanInsert() const {
  if (!enabled()) return true;
  const double spi = state_->samples_per_insert.load(std::memory_order_relaxed);
  if (spi <= 0) return true;
  const int64_t min_size = state_->min_size.load(std::memory_order_relaxed);
  const int64_t inserts = ring_->claimed();
  if (inserts < min_size) return true;
  const double bound = spi * static_cast<double>(min_size) +
                       state_->tolerance.load(std::memory_order_relaxed);
  return static_cast<double>(inserts) * spi - static_cast<double>(sampled()) + offset() <= bound;
}

bool RateLimiter::CanSample() const { return SampleAllowed(sampled()); }

bool RateLimiter::SampleAllowed(int64_t sampled) const {
  if (!enabled()) return true;
  const int64_t min_size = state_->min_size.load(std::memory_order_relaxed);
  const int64_t inserts = ring_->committed();
  if (inserts < min_size) return false;
  const double spi = state_->samples_per_insert.load(std::memory_order_relaxed);
  if (spi <= 0) return true;
  const double bound = spi * static_cast<double>(min_size) -
                       state_->tolerance.load(std::memory_order_relaxed);
  return static_cast<double>(inserts) * spi - static_cast<double>(sampled) + offset() >= bound;
}

std::string RateLimiter::Explain(bool sample, int64_t n) const {
  const RateLimitConfig c = config();
  std::ostringstream out;
  const int64_t inserts = sample ? ring_->committed() : ring_->claimed();
  if (sample && inserts < c.min_size) {
    out << "sampling starts once " << c.min_size << " items are inserted (min_size_to_sample), "
        << "and " << inserts << " are so far";
    return out.str();
  }
  out << "samples_per_insert=" << c.samples_per_insert << " with tolerance " << c.tolerance
      << ": " << sampled() << " items sampled for " << inserts << " inserted";
  if (sample) {
    out << " (a sample of " << n << " needs more inserts first)";
  } else {
    out << " (inserting more needs more sampling first)";
  }
  return out.str();
}

template <typename Ready>
void RateLimiter::Await(Ready&& ready, const char* what, int64_t n,
                        const std::function<void()>& poll) const {
  if (ready()) return;
  const double timeout = state_->timeout.load(std::memory_order_relaxed);
  if (timeout == 0) {
    throw TimeoutError(internal::Concat(what, "(", n, ") is not allowed now and the rate limiter ",
                                        "does not wait (timeout=0): ", Explain(what[0] == 's', n)));
  }
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const bool forever = timeout < 0 || !std::isfinite(timeout);
  const auto deadline =
      forever ? Clock::time_point::max()
              : start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout));
  Event& event = state_->event;
  event.waiters.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    Event& e;
    ~Leave() { e.waiters.fetch_sub(1, std::memory_order_seq_cst); }
  } leave{event};
  for (;;) {
    // Read the event before the condition: a change after this read bumps it, so the wait
    // below returns at once instead of missing the wake-up.
    const uint32_t seen = event.seq.load(std::memory_order_seq_cst);
    if (ready()) return;
    const auto now = Clock::now();
    if (now >= deadline) {
      throw TimeoutError(internal::Concat(
          "a", what[0] == 'i' ? "n " : " ", what, " of ", n, n == 1 ? " item" : " items", " waited ",
          std::chrono::duration<double>(now - start).count(),
          " s (the rate limiter's timeout) and is still not allowed: ", Explain(what[0] == 's', n)));
    }
    const auto slice = std::min<Clock::duration>(deadline - now, kPollEvery);
    event.WaitFor(seen, std::chrono::duration_cast<std::chrono::nanoseconds>(slice));
    if (poll) poll();
  }
}

void RateLimiter::AwaitInsert(int64_t n, const std::function<void()>& poll) const {
  if (!enabled()) return;
  Await([&] { return CanInsert(); }, "insert", n, poll);
}

void RateLimiter::AdmitSample(int64_t n, const std::function<void()>& poll) {
  if (!enabled()) {
    state_->sampled.fetch_add(n, std::memory_order_acq_rel);
    return;
  }
  // The check and the count are one CAS, so concurrent samplers cannot all pass on one
  // allowance.
  auto try_admit = [&] {
    int64_t seen = state_->sampled.load(std::memory_order_acquire);
    for (;;) {
      if (!SampleAllowed(seen)) return false;
      if (state_->sampled.compare_exchange_weak(seen, seen + n, std::memory_order_acq_rel)) {
        return true;
      }
    }
  };
  Await(try_admit, "sample", n, poll);
  state_->event.Notify();  // inserts waiting for sampling to catch up
}

void RateLimiter::Unsample(int64_t n) {
  state_->sampled.fetch_sub(n, std::memory_order_acq_rel);
  state_->event.Notify();
}

}  // namespace reverie
