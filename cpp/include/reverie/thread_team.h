// A team of threads that runs one function on all of them at once, with a barrier among
// them: the host's stand-in for a CUDA block (device_buffer.cc, and the kernel tests).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace reverie {

// The block programs of kernels.h run on it with real concurrency between their barriers, so
// a missing barrier shows up as a wrong result in the tests, or as a race under TSan (the
// barrier is a mutex, which TSan understands).
// Thread-safety: one Run at a time; Barrier only from inside Run's function. The workers do
// not survive fork(): a team must not be used in a forked child.
class ThreadTeam {
 public:
  // size - 1 worker threads; the caller of Run is member 0. size >= 1. Throws
  // std::system_error when the threads cannot be started.
  explicit ThreadTeam(int size);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  int size() const { return size_; }

  // Runs fn(t) for every t in [0, size) at once, the caller as t = 0; returns when all have
  // returned. fn must not throw. Throws std::logic_error if the members called Barrier a
  // different number of times (one returned while others waited at a barrier): instead of
  // hanging, the barriers then stop waiting and every member runs to its end.
  void Run(const std::function<void(int)>& fn);

  // Returns once every member has called it (or, after a divergence, at once).
  void Barrier();

 private:
  void Work(int t);
  void Stop() noexcept;  // ends and joins the workers
  void Finished();       // a member's fn returned; mu_ held
  void Release();        // completes the current barrier; mu_ held

  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int)>* job_ = nullptr;  // guarded by mu_, as is everything below
  uint64_t job_generation_ = 0;
  int running_ = 0;
  int arrived_ = 0;   // members waiting at the current barrier
  int finished_ = 0;  // members whose fn has returned, this Run
  bool diverged_ = false;
  uint64_t barrier_generation_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Member t of a team as the Lanes of SharedBlock and BlockReduce (kernels.h).
struct TeamLanes {
  ThreadTeam* team;
  int t;
  int thread() const { return t; }
  int threads() const { return team->size(); }
  void Sync() const { team->Barrier(); }
};

}  // namespace reverie
