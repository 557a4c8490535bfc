#include "reverie/thread_pool.h"

#include <algorithm>
#include <utility>

namespace reverie {

ThreadPool::ThreadPool(int workers) {
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

ThreadPool& ThreadPool::Shared() {
  // Leaked on purpose: worker threads must not be joined during static destruction.
  static ThreadPool* pool = new ThreadPool(
      std::max(0, static_cast<int>(std::thread::hardware_concurrency()) - 1));
  return *pool;
}

void ThreadPool::RunChunks(std::unique_lock<std::mutex>& lock) {
  while (job_ != nullptr && next_chunk_ < job_chunks_) {
    const int64_t chunk = next_chunk_++;
    const auto* job = job_;
    const int64_t begin = job_n_ * chunk / job_chunks_;
    const int64_t end = job_n_ * (chunk + 1) / job_chunks_;
    lock.unlock();
    std::exception_ptr error;
    try {
      (*job)(begin, end);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (error && !error_) error_ = error;
    if (--pending_ == 0) done_.notify_all();
  }
}

void ThreadPool::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  uint64_t seen = generation_;
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    RunChunks(lock);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t chunks,
                             const std::function<void(int64_t, int64_t)>& fn) {
  chunks = std::max<int64_t>(1, std::min(chunks, n));
  std::unique_lock<std::mutex> owner(submit_, std::try_to_lock);
  if (threads_.empty() || chunks == 1 || !owner.owns_lock()) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  job_ = &fn;
  job_n_ = n;
  job_chunks_ = chunks;
  next_chunk_ = 0;
  pending_ = chunks;
  error_ = nullptr;
  ++generation_;
  wake_.notify_all();
  RunChunks(lock);  // the caller works too
  done_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
  std::exception_ptr error = std::exchange(error_, nullptr);
  lock.unlock();
  if (error) std::rethrow_exception(error);
}

}  // namespace reverie
