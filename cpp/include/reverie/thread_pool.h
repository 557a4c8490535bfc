// A small pool of worker threads for data-parallel loops (large gathers).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace reverie {

// Thread-safety: ParallelFor may be called from any thread. One loop runs on the workers at a
// time; a caller that finds them busy runs its loop inline, so callers never wait on each
// other and results never depend on which thread ran which chunk.
class ThreadPool {
 public:
  explicit ThreadPool(int workers);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // The process-wide pool, hardware_concurrency() - 1 workers, started on first use.
  static ThreadPool& Shared();

  // Runs fn(begin, end) over [0, n) split into `chunks` contiguous pieces, the caller taking
  // part; returns when all are done. Exceptions from fn propagate (the first one).
  void ParallelFor(int64_t n, int64_t chunks, const std::function<void(int64_t, int64_t)>& fn);

  int workers() const { return static_cast<int>(threads_.size()); }

 private:
  void WorkerLoop();
  // Takes chunks of the current loop until none are left; `lock` holds mu_.
  void RunChunks(std::unique_lock<std::mutex>& lock);

  std::mutex submit_;  // held by the caller whose loop owns the workers
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> threads_;
  // Guarded by mu_:
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunks_ = 0, next_chunk_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace reverie
