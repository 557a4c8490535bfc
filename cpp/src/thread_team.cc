#include "reverie/thread_team.h"

namespace reverie {

ThreadTeam::ThreadTeam(int size) : size_(size) {
  for (int t = 1; t < size; ++t) threads_.emplace_back([this, t] { Work(t); });
}

ThreadTeam::~ThreadTeam() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadTeam::Run(const std::function<void(int)>& fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    ++job_generation_;
    running_ = size_ - 1;
  }
  cv_.notify_all();
  fn(0);
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return running_ == 0; });
  job_ = nullptr;
}

void ThreadTeam::Barrier() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t generation = barrier_generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++barrier_generation_;
    cv_.notify_all();
  } else {
    cv_.wait(lock, [&] { return barrier_generation_ != generation; });
  }
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
    if (--running_ == 0) cv_.notify_all();
  }
}

}  // namespace reverie
