#include "reverie/device_buffer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "reverie/aligned_buffer.h"
#include "reverie/common.h"
#include "reverie/thread_team.h"

namespace reverie {
namespace {

// Begin .. End of one call; a call that throws in between aborts instead.
class CallScope {
 public:
  CallScope(DeviceBackend& backend, StreamHandle stream) : backend_(backend), stream_(stream) {
    backend_.Begin(stream_);
  }
  ~CallScope() {
    if (!ended_) backend_.Abort();
  }
  void End() {
    ended_ = true;
    backend_.End(stream_);
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  DeviceBackend& backend_;
  StreamHandle stream_;
  bool ended_ = false;
};

// The shared kernels on host memory: what the CUDA build runs, step for step.
// The block programs run on a team of block_threads threads (one: no worker threads), with
// the team's barrier and shared scratch, and the sample and gather kernels over the very grid
// CUDA launches (SampleLaunch, GatherLaunch), the team sharing each block's threads.
class HostBackend final : public DeviceBackend {
 public:
  explicit HostBackend(int block_threads)
      : ints_(static_cast<size_t>(block_threads)),
        doubles_(static_cast<size_t>(block_threads)),
        team_(block_threads) {}

  std::string name() const override { return "cpu"; }
  void* Allocate(size_t bytes) override {
    AlignedBuffer buffer(std::max<size_t>(bytes, 1));
    void* p = buffer.data();
    blocks_.emplace(p, std::move(buffer));
    return p;
  }
  void Free(void* p) noexcept override { blocks_.erase(p); }
  void Begin(StreamHandle) override {}
  void End(StreamHandle) override {}
  void Copy(void* dst, const void* src, size_t bytes, StreamHandle) override {
    std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes, StreamHandle) override {
    std::memcpy(dst, src, bytes);
  }
  void Insert(const InsertArgs& args, StreamHandle) override {
    OnTeam([&](const SharedBlock<TeamLanes>& b) { InsertProgram(args, b); });
  }
  void Update(const UpdateArgs& args, StreamHandle) override {
    OnTeam([&](const SharedBlock<TeamLanes>& b) { UpdateProgram(args, b); });
  }
  void Sample(const SampleArgs& args, StreamHandle) override {
    OverGrid(SampleLaunch(args), [&](int64_t x, int, int thread) { SampleThread(args, x, thread); });
  }
  void Gather(const GatherArgs& args, StreamHandle) override {
    const bool by_row = GatherByRow(args);
    OverGrid(GatherLaunch(args), [&](int64_t x, int y, int thread) {
      if (by_row) {
        GatherRowThread(args, x, y, thread);
      } else {
        GatherWarpThread(args, x, y, thread);
      }
    });
  }

 private:
  // A one-block program on the team, with the team's shared scratch.
  template <typename Program>
  void OnTeam(const Program& program) {
    team_.Run([&](int t) { program(SharedBlock<TeamLanes>{TeamLanes{&team_, t}, ints_.data(), doubles_.data()}); });
  }
  // Every thread of a grid: block by block, member t of the team taking threads t, t + size,
  // ... of each block.
  template <typename ThreadFn>
  void OverGrid(const Launch& l, const ThreadFn& fn) {
    team_.Run([&](int t) {
      for (int y = 0; y < l.blocks_y; ++y) {
        for (int64_t x = 0; x < l.blocks_x; ++x) {
          for (int thread = t; thread < l.threads; thread += team_.size()) fn(x, y, thread);
        }
      }
    });
  }

  std::vector<int64_t> ints_;  // the "shared memory" of the block programs
  std::vector<double> doubles_;
  ThreadTeam team_;
  std::map<void*, AlignedBuffer> blocks_;
};

}  // namespace

std::unique_ptr<DeviceBackend> MakeHostBackend(int block_threads) {
  REVERIE_CHECK(block_threads >= 1 && block_threads <= 1024 && (block_threads & (block_threads - 1)) == 0,
                "block_threads must be a power of two in [1, 1024] (as a CUDA block), got ",
                block_threads);
  return std::make_unique<HostBackend>(block_threads);
}

#ifndef REVERIE_WITH_CUDA
std::unique_ptr<DeviceBackend> MakeCudaBackend(int) {
  throw std::runtime_error(
      "this build of reverie has no CUDA kernels (it was built without nvcc, or with "
      "REVERIE_CUDA=OFF); rebuild with nvcc on the PATH to use device='cuda'");
}
bool CudaBuilt() { return false; }
int CudaDeviceCount() { return 0; }
#endif

DeviceReplay::DeviceReplay(int64_t capacity, std::vector<int64_t> row_bytes, bool prioritized,
                           PrioritizedConfig config, uint64_t seed,
                           std::unique_ptr<DeviceBackend> backend)
    : backend_(std::move(backend)),
      capacity_(capacity),
      row_bytes_(std::move(row_bytes)),
      prioritized_(prioritized),
      config_(config),
      seed_(seed),
      beta_(config.beta) {
  REVERIE_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  REVERIE_CHECK(!row_bytes_.empty(), "a buffer needs at least one field");
  for (size_t f = 0; f < row_bytes_.size(); ++f) {
    REVERIE_CHECK(row_bytes_[f] > 0, "field ", f, " has ", row_bytes_[f],
                  " bytes per item; device buffers need fields of at least one byte");
  }
  const auto finite = [](double v) { return std::isfinite(v) && v >= 0; };
  REVERIE_CHECK(finite(config.alpha), "alpha must be finite and >= 0, got ", config.alpha);
  REVERIE_CHECK(finite(config.beta), "beta must be finite and >= 0, got ", config.beta);
  REVERIE_CHECK(finite(config.eps), "eps must be finite and >= 0, got ", config.eps);
  device_ = backend_->name();
  try {
    for (int64_t bytes : row_bytes_) {
      columns_.push_back(static_cast<uint8_t*>(backend_->Allocate(static_cast<size_t>(bytes * capacity))));
    }
    status_ = static_cast<DeviceStatus*>(backend_->Allocate(sizeof(DeviceStatus)));
    if (prioritized_) {
      layout_ = MakeTreeLayout(capacity);
      sums_ = static_cast<uint64_t*>(backend_->Allocate(SumTree::SumsBytes(capacity)));
      mins_ = static_cast<uint64_t*>(backend_->Allocate(SumTree::MinsBytes(capacity)));
      winner_ = static_cast<uint64_t*>(backend_->Allocate(static_cast<size_t>(capacity) * 8));
    }
    // The status starts as PrioritizedSelector's state does: max q 1, its scale.
    DeviceStatus initial;
    initial.scale_exp = PriorityScaleFor(1.0, std::ldexp(1.0, 62) / static_cast<double>(capacity) / 16.0);
    CallScope call(*backend_, 0);
    backend_->Copy(status_, &initial, sizeof(initial), 0);
    call.End();
  } catch (...) {
    Release();
    throw;
  }
}

DeviceReplay::~DeviceReplay() { Release(); }

void DeviceReplay::Release() noexcept {
  // The CUDA backend's Free waits for the device (cudaFree), so no kernel still uses these.
  for (uint8_t* c : columns_) backend_->Free(c);
  for (void* p : {static_cast<void*>(status_), static_cast<void*>(sums_),
                  static_cast<void*>(mins_), static_cast<void*>(winner_)}) {
    if (p != nullptr) backend_->Free(p);
  }
}

TreeView DeviceReplay::Tree() const {
  TreeView t;
  t.sums = sums_;
  t.mins = mins_;
  t.layout = layout_;
  return t;
}

void DeviceReplay::Add(const void* const* sources, int64_t n, StreamHandle stream) {
  REVERIE_CHECK(n >= 0, "cannot add a negative number of items (", n, ")");
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  // Of more than capacity items only the last capacity stay.
  const int64_t skipped = n > capacity_ ? n - capacity_ : 0;
  const int64_t kept = n - skipped;
  const int64_t first_key = written_ + skipped;
  const int64_t first = first_key % capacity_;
  const int64_t head = std::min(kept, capacity_ - first);
  CallScope call(*backend_, stream);
  for (size_t f = 0; f < columns_.size(); ++f) {
    const auto bytes = static_cast<size_t>(row_bytes_[f]);
    const auto* src = static_cast<const uint8_t*>(sources[f]) + static_cast<size_t>(skipped) * bytes;
    backend_->Copy(columns_[f] + static_cast<size_t>(first) * bytes, src,
                   static_cast<size_t>(head) * bytes, stream);
    if (kept > head) {
      backend_->Copy(columns_[f], src + static_cast<size_t>(head) * bytes,
                     static_cast<size_t>(kept - head) * bytes, stream);
    }
  }
  if (prioritized_) {
    InsertArgs args;
    args.tree = Tree();
    args.status = status_;
    args.first = first;
    args.n = kept;
    args.capacity = capacity_;
    backend_->Insert(args, stream);
  }
  call.End();
  written_ += n;
}

void DeviceReplay::Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights,
                          StreamHandle stream) {
  REVERIE_CHECK(batch > 0, "batch_size must be > 0, got ", batch);
  REVERIE_CHECK(batch < (int64_t{1} << 32), "batch_size must be < 2^32, got ", batch);
  std::lock_guard<std::mutex> lock(mu_);
  REVERIE_CHECK(written_ > 0, "cannot sample ", batch, " items: the buffer is empty (add items first)");
  SampleArgs args;
  args.tree = prioritized_ ? Tree() : TreeView{};
  args.status = status_;
  args.seed = seed_;
  args.call = calls_++;
  args.batch = batch;
  args.size = std::min(written_, capacity_);
  args.written = written_;
  args.capacity = capacity_;
  args.codec = KeyCodec(capacity_, 0);
  args.beta = beta_;
  args.keys = keys;
  args.weights = weights;
  CallScope call(*backend_, stream);
  backend_->Sample(args, stream);
  GatherRows(keys, batch, out, stream);
  call.End();
}

void DeviceReplay::GatherRows(const int64_t* keys, int64_t n, uint8_t* const* out,
                              StreamHandle stream) {
  GatherArgs gather;
  gather.keys = keys;
  gather.batch = n;
  gather.capacity = capacity_;
  gather.codec = KeyCodec(capacity_, 0);
  for (size_t f = 0; f < columns_.size(); f += kMaxGatherFields) {
    gather.fields = static_cast<int>(std::min<size_t>(kMaxGatherFields, columns_.size() - f));
    for (int k = 0; k < gather.fields; ++k) {
      gather.out[k] = out[f + static_cast<size_t>(k)];
      gather.column[k] = columns_[f + static_cast<size_t>(k)];
      gather.row_bytes[k] = row_bytes_[f + static_cast<size_t>(k)];
    }
    backend_->Gather(gather, stream);
  }
}

void DeviceReplay::CheckKeys(const int64_t* keys, int64_t n, bool stored) const {
  std::lock_guard<std::mutex> lock(mu_);
  CheckKeysLocked(keys, n, stored);
}

void DeviceReplay::CheckKeysLocked(const int64_t* keys, int64_t n, bool stored) const {
  const KeyCodec codec(capacity_, 0);
  const int64_t oldest = std::max<int64_t>(0, written_ - capacity_);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = keys[i];
    const int64_t insertion = FifoInsertionOfKey(codec, key, capacity_);
    REVERIE_CHECK_INDEX(insertion >= 0, "index ", key, " at position ", i, " is not a key of this buffer",
                        " (keys are the indices a sample returned)");
    REVERIE_CHECK_INDEX(insertion < written_, "index ", key, " at position ", i, " was never written: ",
                        written_, " items have been written in all (keys are the indices a sample returned)");
    REVERIE_CHECK_INDEX(!stored || insertion >= oldest, "index ", key, " at position ", i,
                        " is no longer stored: slot ", codec.Slot(key),
                        " has been written again since (keys name one item; a newer item has another key)");
  }
}

void DeviceReplay::Get(const int64_t* host_keys, const int64_t* keys, int64_t n, uint8_t* const* out,
                       StreamHandle stream) {
  REVERIE_CHECK(n >= 0, "negative key count ", n);
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mu_);  // no write between the check and the gather
  CheckKeysLocked(host_keys, n, /*stored=*/true);
  CallScope call(*backend_, stream);
  GatherRows(keys, n, out, stream);
  call.End();
}

void DeviceReplay::UpdatePriorities(const int64_t* keys, const void* priorities, bool f64,
                                    int64_t n, StreamHandle stream) {
  REVERIE_CHECK(prioritized_, "priority updates need a prioritized sampler; this buffer samples uniformly");
  REVERIE_CHECK(n >= 0, "negative update count ", n);
  if (n == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  UpdateArgs args;
  args.tree = Tree();
  args.status = status_;
  args.winner = winner_;
  args.keys = keys;
  args.priorities = priorities;
  args.f64 = f64;
  args.n = n;
  args.written = written_;
  args.capacity = capacity_;
  args.codec = KeyCodec(capacity_, 0);
  args.params.alpha = config_.alpha;
  args.params.eps = config_.eps;
  args.params.unit_budget = std::ldexp(1.0, 62) / static_cast<double>(capacity_);
  CallScope call(*backend_, stream);
  backend_->Update(args, stream);
  call.End();
}

DeviceStatus DeviceReplay::ReadStatus(StreamHandle stream, bool clear_error) {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceStatus status;
  CallScope call(*backend_, stream);
  backend_->CopyToHost(&status, status_, sizeof(status), stream);
  if (clear_error && status.error != kErrorNone) {
    const int64_t none = kErrorNone;
    backend_->Copy(&status_->error, &none, sizeof(none), stream);
  }
  call.End();
  return status;
}

std::vector<uint64_t> DeviceReplay::ReadLeaves(StreamHandle stream) {
  std::vector<uint64_t> leaves(static_cast<size_t>(capacity_), 0);
  if (!prioritized_) return leaves;
  std::lock_guard<std::mutex> lock(mu_);
  CallScope call(*backend_, stream);
  backend_->CopyToHost(leaves.data(), sums_ + layout_.offset[layout_.depth],
                       leaves.size() * sizeof(uint64_t), stream);
  call.End();
  return leaves;
}

void DeviceReplay::ReadColumn(int field, void* host_out, StreamHandle stream) {
  REVERIE_CHECK_INDEX(field >= 0 && static_cast<size_t>(field) < columns_.size(), "field ", field,
                      " out of range: the buffer has ", columns_.size());
  std::lock_guard<std::mutex> lock(mu_);
  CallScope call(*backend_, stream);
  backend_->CopyToHost(host_out, columns_[static_cast<size_t>(field)],
                       static_cast<size_t>(row_bytes_[static_cast<size_t>(field)] * capacity_), stream);
  call.End();
}

void DeviceReplay::set_beta(double beta) {
  REVERIE_CHECK(std::isfinite(beta) && beta >= 0, "beta must be finite and >= 0, got ", beta);
  std::lock_guard<std::mutex> lock(mu_);
  beta_ = beta;
}

double DeviceReplay::beta() const {
  std::lock_guard<std::mutex> lock(mu_);
  return beta_;
}

int64_t DeviceReplay::written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return written_;
}

int64_t DeviceReplay::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::min(written_, capacity_);
}

uint64_t DeviceReplay::sample_calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_;
}

}  // namespace reverie
