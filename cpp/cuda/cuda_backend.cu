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

// The threads and barrier of a CUDA block, for SharedBlock and BlockReduce (kernels.h). Its
// members are __host__ __device__ only so the templates that take it compile for both sides;
// they run on the device.
struct CudaLanes {
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
};

// Each kernel is its thread's function of kernels.h, on the grid of SampleLaunch /
// GatherLaunch, or the one-block program with kProgramThreads threads. (No launch bounds on
// the grid kernels: with them ptxas caps the gathers at 32 registers and they spill.)
__global__ void __launch_bounds__(kProgramThreads) InsertKernel(InsertArgs args) {
  __shared__ int64_t ints[kProgramThreads];
  __shared__ double doubles[kProgramThreads];
  InsertProgram(args, SharedBlock<CudaLanes>{CudaLanes{}, ints, doubles});
}

__global__ void __launch_bounds__(kProgramThreads) UpdateKernel(UpdateArgs args) {
  __shared__ int64_t ints[kProgramThreads];
  __shared__ double doubles[kProgramThreads];
  UpdateProgram(args, SharedBlock<CudaLanes>{CudaLanes{}, ints, doubles});
}

__global__ void SampleKernel(SampleArgs args) {
  SampleThread(args, blockIdx.x, static_cast<int>(threadIdx.x));
}

__global__ void GatherRowKernel(GatherArgs args) {
  GatherRowThread(args, blockIdx.x, static_cast<int>(blockIdx.y), static_cast<int>(threadIdx.x));
}

__global__ void GatherWarpKernel(GatherArgs args) {
  GatherWarpThread(args, blockIdx.x, static_cast<int>(blockIdx.y), static_cast<int>(threadIdx.x));
}

// A kernel's grid; a launch CUDA cannot take (more than 2^31 - 1 blocks) is an error.
dim3 Grid(const Launch& l, const char* what) {
  if (l.blocks_x < 1 || l.blocks_x > 0x7fffffff) {
    throw std::runtime_error(std::string(what) + ": " + std::to_string(l.blocks_x) +
                             " blocks is outside what one CUDA launch takes (1 .. 2^31 - 1)");
  }
  return dim3(static_cast<unsigned>(l.blocks_x), static_cast<unsigned>(l.blocks_y));
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
    const Launch l = SampleLaunch(args);
    SampleKernel<<<Grid(l, "the sample kernel"), l.threads, 0, AsStream(stream)>>>(args);
    Check(cudaGetLastError(), "the sample kernel");
  }
  void Gather(const GatherArgs& args, StreamHandle stream) override {
    const Launch l = GatherLaunch(args);
    const dim3 grid = Grid(l, "the gather kernel");
    if (GatherByRow(args)) {
      GatherRowKernel<<<grid, l.threads, 0, AsStream(stream)>>>(args);
    } else {
      GatherWarpKernel<<<grid, l.threads, 0, AsStream(stream)>>>(args);
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
