// A replay buffer whose columns and priority tree live in device memory.
//
// The host keeps only counters (items written, sample calls) and launches work; every value
// that depends on data (priorities, the running max, the fixed-point scale, stale counts,
// input errors) stays on the device, so sample -> update_priorities never waits for the GPU.
// The work itself is the shared kernels of kernels.h, run by a backend:
//  - the CUDA backend (cpp/cuda/cuda_backend.cu) launches them on the caller's stream;
//  - the host backend runs exactly the same functions on host memory, one thread. It is the
//    reference the CUDA build is tested against, and what exercises the kernels' logic on
//    machines without a GPU.
//
// Ordering: calls are serialised by a mutex (they only enqueue work), and each call's work
// is ordered after the previous call's, whatever stream either ran on (the CUDA backend
// makes the stream wait on an event recorded after the previous call). So any number of
// threads may use one buffer, on any streams, with no host synchronisation.
//
// Input errors the host cannot see without waiting (a NaN priority or a never-written key in
// device memory) are found by the kernel, which then changes nothing and records the first
// one in the device status; ReadStatus() reports it (Python raises it at synchronize()).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "reverie/kernels.h"
#include "reverie/prioritized_selector.h"

namespace reverie {

using StreamHandle = uintptr_t;  // a cudaStream_t on the CUDA backend; ignored on the host

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda:0", ...
  // Zeroed memory the kernels can use. Throws std::runtime_error when out of memory.
  virtual void* Allocate(size_t bytes) = 0;
  virtual void Free(void* p) noexcept = 0;
  // Around each call: orders its work after the previous call's (see above).
  virtual void Begin(StreamHandle stream) = 0;
  virtual void End(StreamHandle stream) = 0;
  // Instead of End when the call failed half-way (restores the caller's device).
  virtual void Abort() noexcept {}
  // Copies bytes from host or device memory into device memory, in stream order. A host
  // source may be reused as soon as this returns.
  virtual void Copy(void* dst, const void* src, size_t bytes, StreamHandle stream) = 0;
  // Waits for the stream, then copies device memory to the host.
  virtual void CopyToHost(void* dst, const void* src, size_t bytes, StreamHandle stream) = 0;
  virtual void Insert(const InsertArgs& args, StreamHandle stream) = 0;
  virtual void Sample(const SampleArgs& args, StreamHandle stream) = 0;
  virtual void Gather(const GatherArgs& args, StreamHandle stream) = 0;
  virtual void Update(const UpdateArgs& args, StreamHandle stream) = 0;
};

// Host memory. The block programs run on a team of block_threads threads (a power of two up
// to 1024; 1 starts no thread) with real barriers, and the sample and gather kernels over
// CUDA's grid: with more than one, a check of the kernels' synchronisation without a GPU.
std::unique_ptr<DeviceBackend> MakeHostBackend(int block_threads = 1);
// CUDA device `device`. Throws std::runtime_error when this build has no CUDA, or there is no
// driver or no such device.
std::unique_ptr<DeviceBackend> MakeCudaBackend(int device);
// Whether this build contains the CUDA kernels.
bool CudaBuilt();
// CUDA devices usable now: 0 without CUDA in the build, a driver or a device. Never throws.
int CudaDeviceCount();

class DeviceReplay {
 public:
  // Columns of `row_bytes[f]` bytes per item. Uniform (with replacement) or prioritized.
  // Throws ValueError for capacity < 1, an empty or zero-sized field list, or a bad config.
  DeviceReplay(int64_t capacity, std::vector<int64_t> row_bytes, bool prioritized,
               PrioritizedConfig config, uint64_t seed, std::unique_ptr<DeviceBackend> backend);
  ~DeviceReplay();
  DeviceReplay(const DeviceReplay&) = delete;
  DeviceReplay& operator=(const DeviceReplay&) = delete;

  // Appends n items; sources[f] holds n rows of field f (host or device memory). Of more
  // than capacity items only the last capacity stay (the keys still advance by n). O(n).
  void Add(const void* const* sources, int64_t n, StreamHandle stream);
  // Draws `batch` items into out[f] (batch rows each), keys and, when prioritized, weights:
  // memory the kernels write (device memory on the CUDA backend). ValueError for batch < 1
  // or an empty buffer. O(batch * (depth + row bytes)).
  void Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights,
              StreamHandle stream);
  // Checks keys given on the host: IndexError naming the first that is not a key of this
  // buffer or was never written, and with `stored`, also one overwritten since. O(n).
  void CheckKeys(const int64_t* keys, int64_t n, bool stored) const;
  // The rows of the items named by `keys` (kernel-readable memory, like Sample's) into
  // out[f], n rows each. `host_keys` is a host copy of the same keys, checked first
  // (CheckKeys with `stored`). O(n * row bytes).
  void Get(const int64_t* host_keys, const int64_t* keys, int64_t n, uint8_t* const* out,
           StreamHandle stream);
  // keys[k] gets priorities[k] (float64 when f64, else float32), in kernel-readable memory.
  // A repeated key keeps the last value; a key overwritten since it was sampled is counted
  // as stale. Bad input is found on the device (see above). ValueError for a uniform buffer.
  // O(n * depth).
  void UpdatePriorities(const int64_t* keys, const void* priorities, bool f64, int64_t n,
                        StreamHandle stream);

  // Waits for the buffer's work and returns the device status; with clear_error, the
  // recorded error is cleared (it is reported once).
  DeviceStatus ReadStatus(StreamHandle stream, bool clear_error);
  // The tree's leaves (units), waiting for the buffer's work. O(capacity).
  std::vector<uint64_t> ReadLeaves(StreamHandle stream);
  // All capacity rows of field f, waiting for the buffer's work. O(capacity * row bytes).
  void ReadColumn(int field, void* host_out, StreamHandle stream);

  void set_beta(double beta);
  double beta() const;
  PrioritizedConfig config() const { return config_; }
  bool prioritized() const { return prioritized_; }
  int64_t capacity() const { return capacity_; }
  int64_t written() const;
  int64_t size() const;
  uint64_t sample_calls() const;
  uint64_t seed() const { return seed_; }
  const std::string& device() const { return device_; }

 private:
  TreeView Tree() const;
  void CheckKeysLocked(const int64_t* keys, int64_t n, bool stored) const;  // caller holds mu_
  // Gathers the rows of `keys` (n of them, kernel-readable) into out[f] (caller holds mu_).
  void GatherRows(const int64_t* keys, int64_t n, uint8_t* const* out, StreamHandle stream);
  // Frees every allocation made so far (destructor, and a constructor that failed).
  void Release() noexcept;

  mutable std::mutex mu_;
  std::unique_ptr<DeviceBackend> backend_;
  std::string device_;
  int64_t capacity_;
  std::vector<int64_t> row_bytes_;
  bool prioritized_;
  PrioritizedConfig config_;
  uint64_t seed_;
  TreeLayout layout_;
  std::vector<uint8_t*> columns_;
  uint64_t* sums_ = nullptr;
  uint64_t* mins_ = nullptr;
  uint64_t* winner_ = nullptr;
  DeviceStatus* status_ = nullptr;
  int64_t written_ = 0;
  uint64_t calls_ = 0;
  double beta_;
};

}  // namespace reverie
