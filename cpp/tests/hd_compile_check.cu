// Compiles the shared __host__ __device__ kernels (tree descent, tree update, gather,
// Philox, the episode logic: n-step returns, frame stacks, sequence windows) for the GPU, so CI proves the CPU-tested code is also valid device code.
// Compile-only (CI: nvcc -c). The device buffer's kernels (cpp/cuda/cuda_backend.cu, which
// launches kernels.h) are compiled by the CUDA build itself.
#include "reverie/episodes.h"
#include "reverie/gather.h"
#include "reverie/philox.h"
#include "reverie/sum_tree.h"

namespace {

__global__ void DescendKernel(const uint64_t* sums, reverie::TreeLayout layout, uint64_t seed,
                              uint64_t call, int64_t* leaves, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint64_t total = sums[0];
  const uint64_t u = reverie::MulHi64(reverie::RandomBits(seed, call, static_cast<uint32_t>(i)), total);
  leaves[i] = reverie::Descend(sums, layout, u);
}

__global__ void UpdateKernel(uint64_t* sums, uint64_t* mins, reverie::TreeLayout layout,
                             const int64_t* leaf, const uint64_t* units, int n) {
  // One thread: the sequential semantics (last write wins) of the CPU path.
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  for (int k = 0; k < n; ++k) {
    reverie::SetLeafSum(sums, layout, leaf[k], units[k]);
    reverie::RefreshMinPath(sums, mins, layout, leaf[k]);
  }
}

__global__ void GatherKernel(uint8_t* out, const uint8_t* column, size_t row_bytes,
                             const int64_t* slots, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) reverie::GatherRows(out, column, row_bytes, slots, i, i + 1);
}

// A stream in device memory: row r at slot r % rows, present from `oldest` to `newest`.
struct DeviceRows {
  const uint8_t* flags;
  const float* reward;
  int64_t oldest, newest, rows;

  __device__ reverie::RowPos Next(reverie::RowPos p) const {
    return reverie::RowPos{p.key + 1, p.slot + 1 == rows ? 0 : p.slot + 1, 0};
  }
  __device__ reverie::RowPos Prev(reverie::RowPos p) const {
    return reverie::RowPos{p.key - 1, p.slot == 0 ? rows - 1 : p.slot - 1, 0};
  }
  __device__ bool Present(reverie::RowPos p) const { return p.key >= oldest && p.key <= newest; }
  __device__ uint8_t Flags(reverie::RowPos p) const { return flags[p.slot]; }
  __device__ double Reward(reverie::RowPos p) const { return reward[p.slot]; }
};

__global__ void EpisodeKernel(DeviceRows rows, const int64_t* starts, int n, float* returns,
                              int64_t* boots, int64_t* stack_bottoms, int64_t* window,
                              uint8_t* mask) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const reverie::RowPos start{starts[i], starts[i] % rows.rows, 0};
  const reverie::NStepResult r = reverie::NStep(rows, start, 3, 0.99);
  returns[i] = static_cast<float>(r.ret);
  boots[i] = r.boot.key;
  reverie::RowPos stack[4];
  stack_bottoms[i] = reverie::StackRows(rows, start, 4, stack) ? stack[0].key : -1;
  reverie::SequenceWindow(rows, start, 2, 8, false, 4, window + i * 10, mask + i * 10);
}

}  // namespace

void LaunchAll(const uint64_t* sums, uint64_t* msums, uint64_t* mins, reverie::TreeLayout layout,
               int64_t* leaves, const uint64_t* units, uint8_t* out, const uint8_t* column) {
  DescendKernel<<<1, 256>>>(sums, layout, 1, 0, leaves, 256);
  UpdateKernel<<<1, 1>>>(msums, mins, layout, leaves, units, 256);
  GatherKernel<<<1, 256>>>(out, column, 68, leaves, 256);
}

void LaunchEpisodes(const uint8_t* flags, const float* reward, const int64_t* starts,
                    float* returns, int64_t* boots, int64_t* bottoms, int64_t* window,
                    uint8_t* mask) {
  EpisodeKernel<<<1, 256>>>(DeviceRows{flags, reward, 0, 999, 1000}, starts, 256, returns, boots,
                            bottoms, window, mask);
}
