// The memory a buffer lives in, and the process-shared primitives that work inside it.
//
// A buffer keeps everything (counters, stamps, columns, the priority tree) in one Region:
// private anonymous memory, or a POSIX shared-memory segment that other processes attach to
// by name. Everything placed in a region must be address-free: offsets, never pointers;
// lock-free std::atomic (which is address-free on the platforms we build for), and
// pthread objects initialised as process-shared.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace reverie {

class Region {
 public:
  Region() = default;
  // Private zeroed memory (pages become resident when written). Throws std::bad_alloc.
  static Region Private(size_t bytes);
  // A new zeroed shared-memory segment /dev/shm/<name>; this object owns it and unlinks it on
  // Unlink() or destruction (in the creating process only, never in a fork()ed child). Throws
  // ValueError when the name is taken or bad, std::runtime_error when the system refuses.
  static Region CreateShared(const std::string& name, size_t bytes);
  // Maps an existing segment. Throws ValueError when there is none by that name.
  static Region AttachShared(const std::string& name);
  // Maps the file at `path` (shared, so writes reach the file): creates it zeroed with `bytes`
  // bytes reserved on disk when it is missing or empty (*existed = false), else maps it as it
  // is (*existed = true). Holds the file exclusively until destruction: a second buffer, in
  // this process or another, gets ValueError, as does a file of another size.
  static Region MapFile(const std::string& path, size_t bytes, bool* existed);

  ~Region();
  Region(Region&& other) noexcept;
  Region& operator=(Region&& other) noexcept;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return bytes_; }
  bool shared() const { return shared_; }
  const std::string& name() const { return name_; }
  // Removes the segment's name (mappings stay valid). Creator only; idempotent.
  void Unlink();
  // This object no longer unlinks the segment (another object owns its name's lifetime).
  void Disown() { owner_pid_ = 0; }
  // Whether this object (in this process) would unlink the segment.
  bool owns() const;
  // Removes the name of segment /dev/shm/<name>, whoever made it (no error when missing).
  static void UnlinkShared(const std::string& name);
  // Writes a file-backed region's dirty pages to its file and waits for it (msync); no-op
  // for other regions.
  void Flush();
  bool file_backed() const { return fd_ >= 0; }
  // Starts reading the pages of [p, p + n) (inside the region) from its file, without
  // waiting (madvise WILLNEED).
  void AdviseWillNeed(const void* p, size_t n) const;

 private:
  void Release();
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
  bool shared_ = false;
  bool mapped_ = false;
  std::string name_;
  int owner_pid_ = 0;  // the creator's pid while it still has to unlink
  int fd_ = -1;        // a mapped file's descriptor (its lock lives while it is open)
  std::pair<dev_t, ino_t> file_id_{};  // the mapped file (device, inode)
};

// A mutex that works across processes and survives its holder's death: when the holder
// dies, the next Lock() returns true ("recover": the protected data may be half-changed and
// must be repaired before Unlock()). Lives inside a region; Init() once, by the creator.
class ProcessMutex {
 public:
  void Init();
  // Returns true when the previous holder died while holding it.
  bool Lock();
  void Unlock();

 private:
  pthread_mutex_t mu_;
};

// A 32-bit event counter that threads and processes wait on (Linux futex, not private, so
// it works in shared memory).
struct Event {
  std::atomic<uint32_t> seq{0};
  std::atomic<uint32_t> waiters{0};

  // Wakes every waiter. Cheap (no system call) when nobody waits.
  void Notify();
  // Sleeps until seq != seen, a notify, or `timeout` passes (spurious wake-ups possible).
  void WaitFor(uint32_t seen, std::chrono::nanoseconds timeout);
};

// Whether process `pid` still runs (false for a zombie: killed and not yet reaped). O(1)
// system calls.
bool ProcessAlive(uint32_t pid);
uint32_t CurrentPid();

}  // namespace reverie
