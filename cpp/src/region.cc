#include "reverie/region.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <mutex>
#include <set>
#include <utility>

#include "reverie/common.h"

namespace reverie {
namespace {

std::string SegmentPath(const std::string& name) { return "/" + name; }

void CheckName(const std::string& name) {
  REVERIE_CHECK(!name.empty() && name.size() < 200 && name.find('/') == std::string::npos,
                "shared-memory name must be 1-199 characters without '/', got '", name, "'");
}

std::runtime_error SystemError(const std::string& what) {
  return std::runtime_error(what + ": " + std::strerror(errno));
}

}  // namespace

Region Region::Private(size_t bytes) {
  // An anonymous private mapping: zero pages, resident only once written.
  // The region starts on a 2 MiB boundary (mapped with room to spare, then trimmed), so
  // the large columns, placed at 2 MiB offsets, can be backed by transparent huge pages:
  // random rows of a big column then cost far fewer TLB misses.
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t span = bytes + kHugePage;
  void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  const auto base = reinterpret_cast<uintptr_t>(p);
  const uintptr_t start = (base + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  if (start != base) munmap(p, start - base);
  const size_t tail = span - (start - base) - bytes;
  if (tail != 0) munmap(reinterpret_cast<void*>(start + bytes), tail);
#ifdef MADV_HUGEPAGE
  if (bytes >= kHugePage) madvise(reinterpret_cast<void*>(start), bytes, MADV_HUGEPAGE);  // advice
#endif
  Region r;
  r.bytes_ = bytes;
  r.data_ = reinterpret_cast<uint8_t*>(start);
  r.mapped_ = true;
  return r;
}

Region Region::CreateShared(const std::string& name, size_t bytes) {
  CheckName(name);
  const std::string path = SegmentPath(name);
  const int fd = shm_open(path.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      throw std::invalid_argument("a shared-memory segment named '" + name + "' already exists");
    }
    throw SystemError("cannot create shared memory /dev/shm/" + name);
  }
  Region r;
  r.shared_ = true;
  r.name_ = name;
  r.owner_pid_ = static_cast<int>(getpid());
  // From here on the destructor unlinks the name if anything fails.
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    close(fd);
    errno = err;
    throw SystemError("cannot size shared memory /dev/shm/" + name + " to " +
                      std::to_string(bytes) + " bytes");
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) {
    errno = err;
    throw SystemError("cannot map shared memory /dev/shm/" + name);
  }
  r.data_ = static_cast<uint8_t*>(p);
  r.bytes_ = bytes;
  r.mapped_ = true;
  return r;
}

Region Region::AttachShared(const std::string& name) {
  CheckName(name);
  const std::string path = SegmentPath(name);
  const int fd = shm_open(path.c_str(), O_RDWR, 0);
  if (fd < 0) {
    if (errno == ENOENT) {
      throw std::invalid_argument("no shared-memory buffer named '" + name +
                                  "' (was it closed, or did its creator exit?)");
    }
    throw SystemError("cannot open shared memory /dev/shm/" + name);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    errno = err;
    throw SystemError("cannot stat shared memory /dev/shm/" + name);
  }
  const auto bytes = static_cast<size_t>(st.st_size);
  void* p = bytes == 0 ? MAP_FAILED
                       : mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) {
    if (bytes == 0) throw std::invalid_argument("shared memory '" + name + "' is empty");
    errno = err;
    throw SystemError("cannot map shared memory /dev/shm/" + name);
  }
  Region r;
  r.shared_ = true;
  r.name_ = name;
  r.data_ = static_cast<uint8_t*>(p);
  r.bytes_ = bytes;
  r.mapped_ = true;
  return r;
}

namespace {

// The files this process has mapped, by (device, inode): POSIX record locks (below) do not
// conflict within one process, so a second buffer on the same file here is refused by this
// list instead.
std::mutex open_files_mu;
std::set<std::pair<dev_t, ino_t>>& OpenFiles() {
  static auto* files = new std::set<std::pair<dev_t, ino_t>>();
  return *files;
}

}  // namespace

Region Region::MapFile(const std::string& path, size_t bytes, bool* existed) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw SystemError("cannot open or create '" + path + "'");
  Region r;
  r.fd_ = fd;  // from here on the destructor closes it (and so releases the lock)
  r.name_ = path;
  struct stat st;
  if (fstat(fd, &st) != 0) throw SystemError("cannot stat '" + path + "'");
  {
    std::lock_guard<std::mutex> lock(open_files_mu);
    if (!OpenFiles().insert({st.st_dev, st.st_ino}).second) {
      throw std::invalid_argument("'" + path + "' is in use by another buffer in this process "
                                  "(a file-backed buffer is opened once at a time)");
    }
  }
  r.file_id_ = {st.st_dev, st.st_ino};
  // A POSIX record lock on the whole file: held by this process only (fork()ed children do
  // not inherit it, so a DataLoader worker never keeps it), released when this process
  // closes the file.
  struct flock whole {};
  whole.l_type = F_WRLCK;
  whole.l_whence = SEEK_SET;
  if (fcntl(fd, F_SETLK, &whole) != 0) {
    if (errno == EACCES || errno == EAGAIN) {
      throw std::invalid_argument("'" + path + "' is in use by a buffer in another process "
                                  "(a file-backed buffer is opened once at a time)");
    }
    throw SystemError("cannot lock '" + path + "'");
  }
  const auto size = static_cast<size_t>(st.st_size);
  *existed = size != 0;
  if (size == 0) {
    // Reserve the disk space now: a sparse file that cannot grow later would kill the
    // process with SIGBUS in the middle of a write instead of failing here.
    const int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes));
    if (err != 0) {
      ftruncate(fd, 0);
      errno = err;
      throw SystemError("cannot reserve " + std::to_string(bytes) + " bytes for '" + path + "'");
    }
  } else if (size != bytes) {
    throw std::invalid_argument(internal::Concat(
        "'", path, "' holds ", size, " bytes, but a buffer of this capacity, spec and sampler "
        "needs ", bytes, ": it was made with other settings (or is not a reverie buffer)"));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw SystemError("cannot map '" + path + "'");
  r.data_ = static_cast<uint8_t*>(p);
  r.bytes_ = bytes;
  r.mapped_ = true;
  return r;
}

void Region::AdviseWillNeed(const void* p, size_t n) const {
  static const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto first = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const auto last = reinterpret_cast<uintptr_t>(p) + n;
  madvise(reinterpret_cast<void*>(first), last - first, MADV_WILLNEED);  // advice only
}

void Region::Flush() {
  if (fd_ >= 0 && mapped_ && msync(data_, bytes_, MS_SYNC) != 0) {
    throw SystemError("cannot write '" + name_ + "' back to disk");
  }
}

Region::~Region() { Release(); }

Region::Region(Region&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      shared_(other.shared_),
      mapped_(std::exchange(other.mapped_, false)),
      name_(std::move(other.name_)),
      owner_pid_(std::exchange(other.owner_pid_, 0)),
      fd_(std::exchange(other.fd_, -1)),
      file_id_(other.file_id_) {}

Region& Region::operator=(Region&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    shared_ = other.shared_;
    mapped_ = std::exchange(other.mapped_, false);
    name_ = std::move(other.name_);
    owner_pid_ = std::exchange(other.owner_pid_, 0);
    fd_ = std::exchange(other.fd_, -1);
    file_id_ = other.file_id_;
  }
  return *this;
}

bool Region::owns() const { return owner_pid_ != 0 && owner_pid_ == static_cast<int>(getpid()); }

void Region::UnlinkShared(const std::string& name) { shm_unlink(SegmentPath(name).c_str()); }

void Region::Unlink() {
  // Only the creating process unlinks: a fork()ed child has a copy of this object too.
  if (owner_pid_ != 0 && owner_pid_ == static_cast<int>(getpid())) {
    shm_unlink(SegmentPath(name_).c_str());
  }
  owner_pid_ = 0;
}

void Region::Release() {
  Unlink();
  if (mapped_) munmap(data_, bytes_);  // a file's dirty pages still reach it (page cache)
  if (fd_ >= 0) {
    {
      std::lock_guard<std::mutex> lock(open_files_mu);
      OpenFiles().erase(file_id_);
    }
    close(fd_);
  }
  data_ = nullptr;
  bytes_ = 0;
  mapped_ = false;
  fd_ = -1;
}

void ProcessMutex::Init() {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&mu_, &attr);
  pthread_mutexattr_destroy(&attr);
}

bool ProcessMutex::Lock() {
  const int rc = pthread_mutex_lock(&mu_);
  if (rc == EOWNERDEAD) {
    pthread_mutex_consistent(&mu_);
    return true;
  }
  if (rc != 0) {
    errno = rc;
    throw SystemError("cannot lock the buffer's priority lock");
  }
  return false;
}

void ProcessMutex::Unlock() { pthread_mutex_unlock(&mu_); }

void Event::Notify() {
  seq.fetch_add(1, std::memory_order_seq_cst);
  if (waiters.load(std::memory_order_seq_cst) != 0) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&seq), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
  }
}

void Event::WaitFor(uint32_t seen, std::chrono::nanoseconds timeout) {
  if (timeout.count() <= 0) return;
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1000000000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1000000000);
  // std::atomic<uint32_t> is a plain 32-bit word on Linux: the futex address.
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&seq), FUTEX_WAIT, seen, &ts, nullptr, 0);
}

bool ProcessAlive(uint32_t pid) {
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return false;
  // A killed child that its parent has not reaped yet still answers kill(); it is a zombie.
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%u/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return true;  // no /proc: trust kill()
  char buf[512];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* close_paren = std::strrchr(buf, ')');  // the state follows "(comm) "
  if (close_paren == nullptr || close_paren[1] == '\0') return true;
  const char state = close_paren[2];
  return state != 'Z' && state != 'X';
}

namespace {

// getpid() is a system call; writers ask for it on every write. Cached, and refreshed in a
// fork()ed child.
std::atomic<uint32_t> cached_pid{0};

void ForgetPid() { cached_pid.store(0, std::memory_order_relaxed); }

}  // namespace

uint32_t CurrentPid() {
  uint32_t pid = cached_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const int registered = pthread_atfork(nullptr, nullptr, ForgetPid);
    (void)registered;
    pid = static_cast<uint32_t>(getpid());
    cached_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

}  // namespace reverie
