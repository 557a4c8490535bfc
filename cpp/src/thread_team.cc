#include "reverie/thread_team.h"

#include <stdexcept>

namespace reverie {

ThreadTeam::ThreadTeam(int size) : size_(size) {
  try {
    for (int t = 1; t < size; ++t) threads_.emplace_back([this, t] { Work(t); });
  } catch (...) {  // e.g. out of threads: stop the ones started, then report
    Stop();
    throw;
  }
}

ThreadTeam::~ThreadTeam() { Stop(); }

void ThreadTeam::Stop() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void ThreadTeam::Run(const std::function<void(int)>& fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    ++job_generation_;
    running_ = size_ - 1;
    finished_ = 0;
    diverged_ = false;
  }
  cv_.notify_all();
  fn(0);
  std::unique_lock<std::mutex> lock(mu_);
  Finished();
  cv_.wait(lock, [this] { return running_ == 0; });
  job_ = nullptr;
  if (diverged_) {
    throw std::logic_error(
        "the threads of a block program reached different numbers of barriers (some returned "
        "while others waited at a barrier): on a GPU this block would hang or race");
  }
}

void ThreadTeam::Barrier() {
  std::unique_lock<std::mutex> lock(mu_);
  if (diverged_) return;  // no barrier can complete any more: let every member finish
  const uint64_t generation = barrier_generation_;
  ++arrived_;
  if (arrived_ + finished_ == size_) {
    Release();
  } else {
    cv_.wait(lock, [&] { return barrier_generation_ != generation; });
  }
}

void ThreadTeam::Finished() {
  ++finished_;
  if (arrived_ > 0 && arrived_ + finished_ == size_) Release();
}

void ThreadTeam::Release() {
  if (finished_ > 0) diverged_ = true;
  arrived_ = 0;
  ++barrier_generation_;
  cv_.notify_all();
}

void ThreadTeam::Work(int t) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || job_generation_ != seen; });
    if (stop_) return;
    seen = job_generation_;
    const std::function<void(int)>* fn = job_;
    lock.unlock();
    (*fn)(t);
    lock.lock();
    Finished();
    if (--running_ == 0) cv_.notify_all();
  }
}

}  // namespace reverie
