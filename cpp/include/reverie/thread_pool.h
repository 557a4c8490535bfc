// A small pool of worker threads for data-parallel loops (sampling and gathering).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace reverie {

// Thread-safety: ParallelFor may be called from any thread. One loop runs on the workers at
// a time; a caller that finds them busy runs its loop inline, so callers never wait on each
// other, and results never depend on which thread ran which chunk.
//
// Latency matters here (a 256-row sample takes ~20 us): after a loop, workers spin for a
// short while (kSpinMicros) watching for the next one before they sleep on a condition
// variable, so back-to-back loops start without a futex wake-up.
class ThreadPool {
 public:
  explicit ThreadPool(int workers);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // The process-wide pool, hardware_concurrency() - 1 workers, started on first use.
  static ThreadPool& Shared();

  // Runs fn(begin, end) over [0, n) split into `chunks` contiguous pieces, the caller taking
  // part; returns when all are done. The first exception thrown by fn is rethrown.
  void ParallelFor(int64_t n, int64_t chunks, const std::function<void(int64_t, int64_t)>& fn);

  int workers() const { return static_cast<int>(threads_.size()); }

 private:
  // One loop. Lives on the caller's stack for the duration of ParallelFor.
  struct Job {
    const std::function<void(int64_t, int64_t)>* fn;
    int64_t n, chunks;
    std::atomic<int64_t> next{0};  // next chunk to take (fetch_add by every participant)
    std::atomic<int64_t> done{0};  // chunks finished (release by finisher, acquire by owner)
    std::mutex error_mu;
    std::exception_ptr error;  // guarded by error_mu
  };
  static void RunChunks(Job& job);
  void WorkerLoop();

  static constexpr int64_t kSpinMicros = 50;

  std::mutex submit_;  // held (try_lock) by the caller whose loop owns the workers
  // The publication protocol: the owner stores job_ (seq_cst) then bumps generation_; a
  // worker increments active_ (seq_cst) before it loads job_. The owner clears job_ and
  // then waits for active_ == 0 before its Job goes out of scope; by the seq_cst total
  // order, a worker either sees job_ == nullptr or is counted in active_.
  std::atomic<Job*> job_{nullptr};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> forked_{false};  // set in a fork()ed child, where the workers are gone

  std::mutex mu_;
  std::condition_variable wake_;
  int sleepers_ = 0;  // guarded by mu_

  std::vector<std::thread> threads_;
};

}  // namespace reverie
