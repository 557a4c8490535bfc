#include "reverie/thread_pool.h"

#include <algorithm>
#include <chrono>

#include <pthread.h>

namespace reverie {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int workers) {
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

ThreadPool& ThreadPool::Shared() {
  // Leaked on purpose: worker threads must not be joined during static destruction.
  static ThreadPool* pool = [] {
    auto* p = new ThreadPool(std::max(0, static_cast<int>(std::thread::hardware_concurrency()) - 1));
    // A forked child has none of the parent's threads: it runs every loop inline.
    pthread_atfork(nullptr, nullptr, [] { Shared().forked_.store(true); });
    return p;
  }();
  return *pool;
}

void ThreadPool::RunChunks(Job& job) {
  for (;;) {
    const int64_t chunk = job.next.fetch_add(1, std::memory_order_relaxed);
    if (chunk >= job.chunks) return;
    try {
      (*job.fn)(job.n * chunk / job.chunks, job.n * (chunk + 1) / job.chunks);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.error_mu);
      if (!job.error) job.error = std::current_exception();
    }
    job.done.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = generation_.load();
  for (;;) {
    // Spin briefly for the next loop, then sleep.
    uint64_t now = generation_.load();
    if (now == seen) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      for (int i = 0; now == seen && !stop_.load(std::memory_order_relaxed); ++i) {
        CpuRelax();
        now = generation_.load();
        if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
      }
    }
    if (now == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      ++sleepers_;
      wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
      --sleepers_;
      now = generation_.load();
    }
    if (stop_.load()) return;
    seen = now;
    active_.fetch_add(1);
    Job* job = job_.load();
    if (job != nullptr) RunChunks(*job);
    active_.fetch_sub(1);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t chunks,
                             const std::function<void(int64_t, int64_t)>& fn) {
  chunks = std::max<int64_t>(1, std::min(chunks, n));
  std::unique_lock<std::mutex> owner(submit_, std::try_to_lock);
  if (threads_.empty() || chunks == 1 || forked_.load(std::memory_order_relaxed) ||
      !owner.owns_lock()) {
    if (n > 0) fn(0, n);
    return;
  }
  Job job;
  job.fn = &fn;
  job.n = n;
  job.chunks = chunks;
  job_.store(&job);
  generation_.fetch_add(1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (sleepers_ > 0) wake_.notify_all();
  }
  RunChunks(job);  // the caller works too
  while (job.done.load(std::memory_order_acquire) < chunks) CpuRelax();
  job_.store(nullptr);
  while (active_.load() != 0) CpuRelax();
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace reverie
