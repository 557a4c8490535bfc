// The CUDA backend of DeviceReplay: device memory, and the shared kernels of kernels.h
// launched on the caller's stream. The kernels are thin: each calls the same REVERIE_HD
// function that the host backend runs (and the CPU tests test), with its thread's index.
#include <cuda_runtime.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "reverie/device_buffer.h"
#include "reverie/kernels.h"

namespace reverie {
namespace {

void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a sticky-free error so later calls start clean
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

cudaStream_t AsStream(StreamHandle s) { return reinterpret_cast<cudaStream_t>(s); }

// A CUDA block as the Block of kernels.h: barriers and block-wide reductions in shared memory.
// Its members are __host__ __device__ only so the templates that take it compile for both
// sides; they run on the device.
struct CudaBlock {
  int64_t* ints;    // blockDim.x entries of shared memory
  double* doubles;  // blockDim.x entries of shared memory
  __host__ __device__ int thread() const {
#if defined(__CUDA_ARCH__)
    return static_cast<int>(threadIdx.x);
#else
    return 0;
#endif
  }
  __host__ __device__ int threads() const {
#if defined(__CUDA_ARCH__)
    return static_cast<int>(blockDim.x);
#else
    return 1;
#endif
  }
  __host__ __device__ void Sync() const {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }
  // Block-wide min / max; every thread gets the result. blockDim.x is a power of two.
  __host__ __device__ int64_t Min(int64_t v) const {
    return Reduce(v, ints, [](int64_t x, int64_t y) { return y < x ? y : x; });
  }
  __host__ __device__ double Max(double v) const {
    return Reduce(v, doubles, [](double x, double y) { return y > x ? y : x; });
  }
  template <typename T, typename Op>
  __host__ __device__ static T Reduce(T v, T* shared, Op op) {
#if defined(__CUDA_ARCH__)
    const unsigned t = threadIdx.x;
    shared[t] = v;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (t < stride) shared[t] = op(shared[t], shared[t + stride]);
      __syncthreads();
    }
    const T result = shared[0];
    __syncthreads();  // before the array is used again
    return result;
#else
    (void)shared;
    (void)op;
    return v;
#endif
  }
};

constexpr int kProgramThreads = 512;  // the one-block tree programs
constexpr int kSampleThreads = 256;
constexpr int kRowThreads = 256;      // a block per row for large rows
constexpr int kWarpRowsPerBlock = 8;  // a warp per row for small rows
constexpr int64_t kLargeRowBytes = 1024;

__global__ void __launch_bounds__(kProgramThreads) InsertKernel(InsertArgs args) {
  __shared__ int64_t ints[kProgramThreads];
  __shared__ double doubles[kProgramThreads];
  InsertProgram(args, CudaBlock{ints, doubles});
}

__global__ void __launch_bounds__(kProgramThreads) UpdateKernel(UpdateArgs args) {
  __shared__ int64_t ints[kProgramThreads];
  __shared__ double doubles[kProgramThreads];
  UpdateProgram(args, CudaBlock{ints, doubles});
}

__global__ void SampleKernel(SampleArgs args) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < args.batch) SampleOne(args, i);
}

// Large rows: block (item, field) copies one row with all its threads.
__global__ void GatherRowKernel(GatherArgs args) {
  GatherPart(args, blockIdx.x, static_cast<int>(blockIdx.y), static_cast<int>(threadIdx.x),
             static_cast<int>(blockDim.x));
}

// Small rows: each warp copies one row.
__global__ void GatherWarpKernel(GatherArgs args) {
  const int64_t item = blockIdx.x * static_cast<int64_t>(kWarpRowsPerBlock) + threadIdx.x / 32;
  if (item < args.batch) {
    GatherPart(args, item, static_cast<int>(blockIdx.y), static_cast<int>(threadIdx.x % 32), 32);
  }
}

// Makes `device` current for the scope of a call, and restores the caller's. Never throws
// (it runs in destructors and noexcept paths); a failed switch shows up as the call's error.
// The Python layer already makes the buffer's device current (torch.cuda.device), so this
// switches nothing in the usual case and creates no context on another GPU.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    if (previous_ != device) changed_ = cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

class CudaBackend final : public DeviceBackend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error(std::string("CUDA is not usable here: ") + cudaGetErrorString(err));
    }
    if (device < 0 || device >= count) {
      throw std::runtime_error("no CUDA device " + std::to_string(device) + ": this machine has " +
                               std::to_string(count));
    }
    DeviceGuard guard(device_);
    Check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
  }
  ~CudaBackend() override {
    DeviceGuard guard(device_);
    cudaEventDestroy(done_);
  }

  std::string name() const override { return "cuda:" + std::to_string(device_); }

  void* Allocate(size_t bytes) override {
    DeviceGuard guard(device_);
    void* p = nullptr;
    Check(cudaMalloc(&p, bytes < 1 ? 1 : bytes), "cudaMalloc");
    const cudaError_t err = cudaMemset(p, 0, bytes);
    if (err != cudaSuccess) {
      cudaFree(p);
      Check(err, "cudaMemset");
    }
    return p;
  }
  void Free(void* p) noexcept override {
    DeviceGuard guard(device_);
    cudaFree(p);  // waits for the device: no kernel uses p afterwards
  }

  void Begin(StreamHandle stream) override {
    guard_.emplace(device_);
    // After the previous call's work, wherever it ran.
    // (Also on the same stream handle: a handle may be reused by a new stream.)
    if (recorded_) {
      const cudaError_t err = cudaStreamWaitEvent(AsStream(stream), done_, 0);
      if (err != cudaSuccess) guard_.reset();
      Check(err, "cudaStreamWaitEvent");
    }
  }
  void Abort() noexcept override { guard_.reset(); }
  void End(StreamHandle stream) override {
    const cudaError_t err = cudaEventRecord(done_, AsStream(stream));
    guard_.reset();
    Check(err, "cudaEventRecord");
    recorded_ = true;
  }

  void Copy(void* dst, const void* src, size_t bytes, StreamHandle stream) override {
    if (bytes == 0) return;
    Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, AsStream(stream)), "cudaMemcpyAsync");
  }
  void CopyToHost(void* dst, const void* src, size_t bytes, StreamHandle stream) override {
    Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, AsStream(stream)), "cudaMemcpyAsync");
    Check(cudaStreamSynchronize(AsStream(stream)), "cudaStreamSynchronize");
  }

  void Insert(const InsertArgs& args, StreamHandle stream) override {
    InsertKernel<<<1, kProgramThreads, 0, AsStream(stream)>>>(args);
    Check(cudaGetLastError(), "the insert kernel");
  }
  void Sample(const SampleArgs& args, StreamHandle stream) override {
    const auto blocks = static_cast<unsigned>((args.batch + kSampleThreads - 1) / kSampleThreads);
    SampleKernel<<<blocks, kSampleThreads, 0, AsStream(stream)>>>(args);
    Check(cudaGetLastError(), "the sample kernel");
  }
  void Gather(const GatherArgs& args, StreamHandle stream) override {
    int64_t widest = 0;
    for (int f = 0; f < args.fields; ++f) widest = args.row_bytes[f] > widest ? args.row_bytes[f] : widest;
    if (widest >= kLargeRowBytes) {
      const dim3 grid(static_cast<unsigned>(args.batch), static_cast<unsigned>(args.fields));
      GatherRowKernel<<<grid, kRowThreads, 0, AsStream(stream)>>>(args);
    } else {
      const dim3 grid(static_cast<unsigned>((args.batch + kWarpRowsPerBlock - 1) / kWarpRowsPerBlock),
                      static_cast<unsigned>(args.fields));
      GatherWarpKernel<<<grid, 32 * kWarpRowsPerBlock, 0, AsStream(stream)>>>(args);
    }
    Check(cudaGetLastError(), "the gather kernel");
  }
  void Update(const UpdateArgs& args, StreamHandle stream) override {
    UpdateKernel<<<1, kProgramThreads, 0, AsStream(stream)>>>(args);
    Check(cudaGetLastError(), "the priority update kernel");
  }

 private:
  int device_;
  cudaEvent_t done_ = nullptr;
  bool recorded_ = false;
  std::optional<DeviceGuard> guard_;  // set from Begin to End
};

}  // namespace

std::unique_ptr<DeviceBackend> MakeCudaBackend(int device) {
  return std::make_unique<CudaBackend>(device);
}

bool CudaBuilt() { return true; }

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace reverie
