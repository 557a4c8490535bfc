// Compiles the shared __host__ __device__ kernels (tree descent, tree update, gather,
// Philox) for the GPU, so CI proves the CPU-tested code is also valid device code.
// Compile-only (CI: nvcc -c); the CUDA build proper comes with the device buffers.
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

}  // namespace

void LaunchAll(const uint64_t* sums, uint64_t* msums, uint64_t* mins, reverie::TreeLayout layout,
               int64_t* leaves, const uint64_t* units, uint8_t* out, const uint8_t* column) {
  DescendKernel<<<1, 256>>>(sums, layout, 1, 0, leaves, 256);
  UpdateKernel<<<1, 1>>>(msums, mins, layout, leaves, units, 256);
  GatherKernel<<<1, 256>>>(out, column, 68, leaves, 256);
}
