#include "reverie/replay_buffer.h"

#include <sched.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>
#include <optional>

#include "reverie/atomics.h"
#include "reverie/common.h"
#include "reverie/gather.h"
#include "reverie/sum_tree.h"
#include "reverie/thread_pool.h"
#include "reverie/uniform_sampler.h"

namespace reverie {

// The first bytes of a buffer's region. Everything here is address-free (see region.h).
struct BufferHeader {
  static constexpr uint64_t kMagic = 0x31564552'45564552ull;  // "REVERER1" (little endian)
  static constexpr uint32_t kVersion = 1;

  std::atomic<uint64_t> magic{0};  // stored last (release) by the creator
  uint32_t version = kVersion;
  uint64_t total_bytes = 0;
  uint64_t fingerprint = 0;  // of capacity, spec, sampler config and seed
  RingCounters ring;
  alignas(64) std::atomic<uint64_t> calls{0};
  std::atomic<int64_t> stale{0};
  alignas(64) ProcessMutex writer_mu;
  alignas(64) RateLimitState limiter;
  alignas(64) PriorityState priority;
};

namespace {

constexpr size_t kParallelGatherBytes = size_t{256} << 10;  // large rows: cut finer above this
constexpr int64_t kRowsPerChunk = 16;
constexpr int64_t kMinParallelRows = 64;  // below this a second thread costs more than it saves
constexpr uint32_t kMaxRedraws = 64;  // random redraws of one row before probing slot by slot
constexpr uint32_t kRecheckAttempts = 1u << 16;  // redraw numbers used after a failed recheck
constexpr int kQuietBackoff = 16;  // checked-path calls after the quiet path missed

// Major page faults of this process so far (pages read from disk).
int64_t MajorFaults() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_majflt;
}

std::string FieldNames(const std::vector<FieldSpec>& spec) {
  std::string out;
  for (size_t i = 0; i < spec.size(); ++i) out += (i ? ", " : "") + spec[i].name;
  return out;
}

size_t AlignUp(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }

// FNV-1a over everything that fixes the region's layout and meaning.
struct Fingerprint {
  uint64_t h = 1469598103934665603ull;
  void Add(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  template <typename T>
  void Add(const T& v) {
    Add(&v, sizeof(v));
  }
};

uint64_t FingerprintOf(int64_t capacity, const std::vector<FieldSpec>& spec,
                       const SamplerConfig& sampler, uint64_t seed, const EpisodeConfig& episodes) {
  Fingerprint f;
  f.Add(episodes.num_envs);
  f.Add(episodes.reward);
  f.Add(episodes.terminated);
  f.Add(episodes.truncated);
  f.Add(episodes.frame_stack);
  for (int obs : episodes.obs) f.Add(obs);
  f.Add(capacity);
  for (const FieldSpec& field : spec) {
    f.Add(field.name.data(), field.name.size());
    f.Add(static_cast<int>(field.dtype));
    for (int64_t d : field.shape) f.Add(d);
    f.Add(int64_t{-1});
  }
  f.Add(static_cast<int>(sampler.kind));
  f.Add(sampler.replacement);
  f.Add(sampler.prioritized.alpha);
  f.Add(sampler.prioritized.eps);
  f.Add(seed);
  return f.h;
}

// Where each part of a buffer lives in its region.
struct RegionLayout {
  size_t stamps = 0;
  std::vector<size_t> columns;
  size_t sums = 0, mins = 0;
  size_t flags = 0, streams = 0;
  size_t total = 0;
};

RegionLayout MakeRegionLayout(const Storage& storage, bool prioritized,
                              const EpisodeConfig& episodes) {
  RegionLayout l;
  size_t at = AlignUp(sizeof(BufferHeader), 64);
  // Parts are packed (64-byte aligned) one after the other. The region itself starts on a
  // 2 MiB boundary, so transparent huge pages back every whole 2 MiB of it, parts or not;
  // aligning each part to 2 MiB as well would only make huge pages of the gaps (measured:
  // RSS 1.08x the stored bytes instead of 1.05x for the 1M W1 buffer).
  auto place = [&](size_t bytes) {
    const size_t offset = at;
    at = AlignUp(at + bytes, 64);
    return offset;
  };
  l.stamps = place(static_cast<size_t>(storage.capacity()) * sizeof(uint64_t));
  for (size_t f = 0; f < storage.num_fields(); ++f) l.columns.push_back(place(storage.column_bytes(f)));
  if (prioritized) {
    l.sums = place(SumTree::SumsBytes(storage.capacity()));
    l.mins = place(SumTree::MinsBytes(storage.capacity()));
  }
  if (episodes.enabled()) {
    l.flags = place(static_cast<size_t>(storage.capacity()));
    l.streams = place(static_cast<size_t>(episodes.num_envs));
  }
  l.total = at;
  return l;
}

// Throws ValueError unless `episodes` fits the spec and capacity.
void CheckEpisodeConfig(const EpisodeConfig& e, int64_t capacity, const std::vector<FieldSpec>& spec) {
  if (!e.enabled()) return;
  REVERIE_CHECK(e.num_envs >= 1, "num_envs must be >= 1, got ", e.num_envs);
  REVERIE_CHECK(capacity % e.num_envs == 0, "capacity must be a multiple of num_envs (each env "
                "stream holds capacity / num_envs steps): got capacity ", capacity, " and num_envs ",
                e.num_envs);
  REVERIE_CHECK(e.frame_stack >= 1 && e.frame_stack <= 64, "frame_stack must be in [1, 64], got ",
                e.frame_stack);
  REVERIE_CHECK(e.frame_stack <= capacity / e.num_envs, "frame_stack ", e.frame_stack,
                " is longer than an env stream holds (", capacity / e.num_envs, " steps)");
  const auto field = [&](int index, const char* part) -> const FieldSpec& {
    REVERIE_CHECK(index >= 0 && static_cast<size_t>(index) < spec.size(), "the ", part,
                  " field is not in the spec; fields: ", FieldNames(spec));
    return spec[static_cast<size_t>(index)];
  };
  const FieldSpec& reward = field(e.reward, "reward");
  REVERIE_CHECK_TYPE(reward.shape.empty() && (reward.dtype == DType::kFloat32 || reward.dtype == DType::kFloat64),
                     "reward field '", reward.name, "' must be a float32 or float64 scalar, got ",
                     DTypeName(reward.dtype), ShapeString(reward.shape.data(), static_cast<int>(reward.shape.size())));
  for (const auto& [index, part] : {std::pair{e.terminated, "terminated"}, std::pair{e.truncated, "truncated"}}) {
    const FieldSpec& flag = field(index, part);
    REVERIE_CHECK_TYPE(flag.shape.empty() && flag.dtype == DType::kBool, part, " field '", flag.name,
                       "' must be a bool scalar, got ", DTypeName(flag.dtype),
                       ShapeString(flag.shape.data(), static_cast<int>(flag.shape.size())));
  }
  REVERIE_CHECK(e.terminated != e.truncated, "terminated and truncated must be different fields");
  for (int obs : e.obs) field(obs, "observation");
}

}  // namespace

ReplayBuffer::WriterLock::WriterLock(ReplayBuffer& buf) : buf_(buf) {
  if (buf_.header_->writer_mu.Lock()) {
    // The previous holder died inside: its tree change may be half applied. The leaves are
    // each whole (single stores), so rebuilding the sums and mins from them repairs it.
    buf_.sampler_->Repair();
  }
}

ReplayBuffer::WriterLock::~WriterLock() { buf_.header_->writer_mu.Unlock(); }

ReplayBuffer::ReplayBuffer(int64_t capacity, std::vector<FieldSpec> spec,
                           const SamplerConfig& sampler, uint64_t seed,
                           const StorageConfig& storage, const EpisodeConfig& episodes)
    : storage_(capacity, std::move(spec)), seed_(seed), episodes_(episodes) {
  const bool prioritized = sampler.kind == SamplerConfig::Kind::kPrioritized;
  CheckEpisodeConfig(episodes_, capacity, storage_.spec());
  REVERIE_CHECK(!episodes_.enabled() || sampler.kind != SamplerConfig::Kind::kUniform || sampler.replacement,
                "episode buffers sample with replacement: Uniform(replacement=False) is not supported");
  const RegionLayout layout = MakeRegionLayout(storage_, prioritized, episodes_);
  const uint64_t fingerprint = FingerprintOf(capacity, storage_.spec(), sampler, seed, episodes_);
  bool attach = storage.kind == StorageConfig::Kind::kAttachShared;
  if (prioritized && !attach) {
    // Check the config before a segment is created.
    PrioritizedSampler probe(1, sampler.prioritized);
  }
  switch (storage.kind) {
    case StorageConfig::Kind::kPrivate: region_ = Region::Private(layout.total); break;
    case StorageConfig::Kind::kCreateShared: region_ = Region::CreateShared(storage.name, layout.total); break;
    case StorageConfig::Kind::kAttachShared: region_ = Region::AttachShared(storage.name); break;
    case StorageConfig::Kind::kFile: region_ = Region::MapFile(storage.name, layout.total, &attach); break;
  }
  const char* what = storage.kind == StorageConfig::Kind::kFile ? "file" : "shared memory";
  uint8_t* base = region_.data();
  if (attach) {
    REVERIE_CHECK(region_.size() >= sizeof(BufferHeader), what, " '", storage.name,
                  "' is not a reverie buffer (", region_.size(), " bytes)");
    header_ = reinterpret_cast<BufferHeader*>(base);
    REVERIE_CHECK(header_->magic.load(std::memory_order_acquire) == BufferHeader::kMagic &&
                      header_->version == BufferHeader::kVersion,
                  what, " '", storage.name, "' is not a reverie buffer of this version");
    REVERIE_CHECK(header_->total_bytes == layout.total && region_.size() == layout.total &&
                      header_->fingerprint == fingerprint,
                  what, " '", storage.name, "' holds a buffer made with another capacity, spec, ",
                  "sampler or seed than given here");
    if (storage.kind == StorageConfig::Kind::kFile) {
      // Reopened, under the file's exclusive lock: nobody else uses it. The process-shared
      // objects of the last process to use it are stale, so they start afresh, and a slot
      // left "being written" by a writer that died is emptied (its pid may belong to
      // another live process by now, which would make the next writer wait on it).
      reopened_ = true;
      header_->writer_mu.Init();
      auto* stamps = reinterpret_cast<std::atomic<uint64_t>*>(base + layout.stamps);
      for (int64_t slot = 0; slot < capacity; ++slot) {
        if (Stamp::IsWriting(stamps[slot].load(std::memory_order_relaxed))) {
          stamps[slot].store(Stamp::kEmpty, std::memory_order_relaxed);
        }
      }
    }
  } else {
    header_ = new (base) BufferHeader();
    header_->total_bytes = layout.total;
    header_->fingerprint = fingerprint;
    header_->writer_mu.Init();
  }
  std::vector<uint8_t*> columns;
  for (size_t offset : layout.columns) columns.push_back(base + offset);
  storage_.Bind(std::move(columns));
  ring_ = Ring(capacity, reinterpret_cast<std::atomic<uint64_t>*>(base + layout.stamps),
               &header_->ring, KeyCodec(capacity, 0), episodes_.enabled() ? episodes_.num_envs : 1);
  limiter_ = RateLimiter(&header_->limiter, &ring_);
  if (episodes_.enabled()) {
    flags_ = base + layout.flags;
    streams_ = base + layout.streams;
    if (!attach) std::fill(streams_, streams_ + episodes_.num_envs, kStreamStart);
  }
  if (prioritized) {
    sampler_ = std::make_unique<PrioritizedSampler>(
        capacity, sampler.prioritized, &header_->priority,
        reinterpret_cast<uint64_t*>(base + layout.sums),
        reinterpret_cast<uint64_t*>(base + layout.mins), /*initialize=*/!attach);
  } else {
    sampler_ = std::make_unique<UniformSampler>(sampler.replacement);
  }
  // A process that used the file may have died inside a tree update: rebuild it.
  if (reopened_) sampler_->Repair();
  // Attachers may look now.
  if (!attach) header_->magic.store(BufferHeader::kMagic, std::memory_order_release);
}

ReplayBuffer::~ReplayBuffer() = default;

int64_t ReplayBuffer::stale_updates() const {
  return header_->stale.load(std::memory_order_relaxed);
}

uint64_t ReplayBuffer::NextCall() { return header_->calls.fetch_add(1, std::memory_order_relaxed); }

SampleRequest ReplayBuffer::BeginSample(int64_t batch, int64_t* claimed) {
  limiter_.AdmitSample(batch, poll_);  // may wait; counts the items as sampled
  SampleRequest request;
  request.seed = seed_;
  request.batch = batch;
  request.size = ring_.size();
  const int64_t claimed_now = ring_.claimed();
  request.range = std::min(claimed_now, capacity());
  if (claimed != nullptr) *claimed = claimed_now;
  try {
    sampler_->ValidateSample(request);
  } catch (...) {
    limiter_.Unsample(batch);
    throw;
  }
  request.call = NextCall();
  return request;
}

void ReplayBuffer::UndoCall(uint64_t call) {
  uint64_t expected = call + 1;
  header_->calls.compare_exchange_strong(expected, call, std::memory_order_relaxed);
}

uint64_t ReplayBuffer::sample_calls() const {
  return header_->calls.load(std::memory_order_relaxed);
}

void ReplayBuffer::Validate(const FieldInput* inputs, size_t n, bool batched,
                            const ArrayView** values, int64_t* leading) const {
  const auto& spec = storage_.spec();
  std::fill(values, values + spec.size(), nullptr);
  for (size_t i = 0; i < n; ++i) {
    size_t f = 0;
    while (f < spec.size() && spec[f].name != inputs[i].name) ++f;
    if (f == spec.size()) {
      throw std::invalid_argument(internal::Concat("unknown field '", inputs[i].name,
                                                   "'; the buffer's fields are ",
                                                   FieldNames(spec)));
    }
    REVERIE_CHECK(values[f] == nullptr, "field '", spec[f].name, "' given twice");
    values[f] = &inputs[i].value;
  }
  for (size_t f = 0; f < spec.size(); ++f) {
    REVERIE_CHECK(values[f] != nullptr, "missing field '", spec[f].name,
                  "'; every item needs all of ", FieldNames(spec));
  }
  if (batched) *leading = -1;
  for (size_t f = 0; f < spec.size(); ++f) {
    const FieldSpec& field = spec[f];
    const ArrayView& v = *values[f];
    if (v.typed) {
      REVERIE_CHECK_TYPE(v.dtype == field.dtype, "field '", field.name, "': expected dtype ",
                         DTypeName(field.dtype), ", got ", DTypeName(v.dtype));
    } else {
      REVERIE_CHECK_TYPE(UntypedConvertible(v.dtype, field.dtype), "field '", field.name,
                         "': cannot store a Python ",
                         v.dtype == DType::kFloat64 ? "float" : "int", " value in a ",
                         DTypeName(field.dtype), " field");
    }
    const int item_dims = static_cast<int>(field.shape.size());
    const int64_t envs = episodes_.num_envs;
    // Leading axes: one for a batch; for episodes also (T, num_envs) time-major steps.
    int skip = batched ? 1 : 0;
    if (batched && envs > 0 && v.ndim == item_dims + 2) skip = 2;
    bool shape_ok = v.ndim == item_dims + skip;
    for (int d = 0; shape_ok && d < item_dims; ++d) shape_ok = v.shape[d + skip] == field.shape[d];
    if (!shape_ok) {
      const std::string item = ShapeString(field.shape.data(), item_dims);
      std::string inner = item.substr(1, item.size() - 2);  // "(17,)" -> "17"
      if (!inner.empty() && inner.back() == ',') inner.pop_back();
      std::string expected;
      if (!batched) {
        expected = "shape " + item + " for one item";
      } else if (envs > 0) {
        const std::string tail = inner.empty() ? "" : ", " + inner;
        expected = internal::Concat("shape (", envs, tail, ") for one step of ", envs,
                                    " envs, or (T, ", envs, tail, ") for T steps");
      } else {
        expected = "shape (n, *" + item + ") for a batch";
      }
      throw std::invalid_argument(internal::Concat("field '", field.name, "': expected ", expected,
                                                   ", got ", ShapeString(v.shape, v.ndim)));
    }
    if (batched) {
      int64_t rows = v.shape[0];
      if (skip == 2) {
        REVERIE_CHECK(v.shape[1] == envs, "field '", field.name, "': the env axis (axis 1 of (T, ",
                      "num_envs, ...)) must be num_envs=", envs, ", got shape ",
                      ShapeString(v.shape, v.ndim));
        rows *= envs;
      } else if (envs > 0) {
        REVERIE_CHECK(rows % envs == 0, "field '", field.name, "': the env axis must be num_envs=",
                      envs, " (one row per env), got shape ", ShapeString(v.shape, v.ndim));
      }
      if (*leading < 0) {
        *leading = rows;
      } else {
        REVERIE_CHECK(rows == *leading, "field '", field.name, "' has ", rows,
                      envs > 0 ? " rows (env steps x envs)" : " items", " but '", spec[0].name,
                      "' has ", *leading, "; every field needs the same leading length");
      }
    }
    if (!v.typed && v.dtype == DType::kInt64) {
      int64_t bad = 0;
      REVERIE_CHECK(IntegersFitIn(static_cast<const int64_t*>(v.data),
                                  static_cast<size_t>(v.elements()), field.dtype, &bad),
                    "field '", field.name, "': value ", bad, " does not fit dtype ",
                    DTypeName(field.dtype));
    }
  }
}

void ReplayBuffer::CopyRows(const ArrayView* const* values, int64_t row, int64_t slot,
                            int64_t n) {
  const auto& spec = storage_.spec();
  for (size_t f = 0; f < spec.size(); ++f) {
    const ArrayView& v = *values[f];
    const size_t elems = static_cast<size_t>(spec[f].item_elements());
    const size_t row_bytes = spec[f].row_bytes();
    const size_t src_row = elems * DTypeSize(v.dtype);
    const uint8_t* src = static_cast<const uint8_t*>(v.data) + static_cast<size_t>(row) * src_row;
    uint8_t* dst = storage_.column(f) + static_cast<size_t>(slot) * row_bytes;
    const size_t bytes = static_cast<size_t>(n) * row_bytes;
    if (v.typed) {
      RacyCopy(dst, src, bytes);
    } else {
#if defined(REVERIE_TSAN)
      std::vector<uint8_t> converted(bytes);
      ConvertUntyped(src, v.dtype, converted.data(), spec[f].dtype, static_cast<size_t>(n) * elems);
      RacyCopy(dst, converted.data(), bytes);
#else
      ConvertUntyped(src, v.dtype, dst, spec[f].dtype, static_cast<size_t>(n) * elems);
#endif
    }
  }
}

void ReplayBuffer::WriteItems(const ArrayView* const* values, int64_t count) {
  limiter_.AwaitInsert(count, poll_);
  // An episode buffer's streams continue from each env's last row (WriteFlags): its writers
  // take turns, whole write by whole write, under the writer lock (taken after the limiter's
  // wait, so a waiting writer never holds up update_priorities).
  std::optional<WriterLock> episode_lock;
  if (episodes_.enabled()) episode_lock.emplace(*this);
  const int64_t cap = capacity();
  const int64_t first = ring_.Claim(count);  // step 1: keys [first, first + count) are ours
  // Only the last `capacity` items survive; write just those.
  const int64_t skip = std::max<int64_t>(0, count - cap);
  const int64_t kept = count - skip;
  const int64_t first_key = first + skip;
  const uint32_t pid = CurrentPid();
  // Step 2 for every kept key. A key is lapped (false) only when a newer writer got its slot
  // first; its row is then skipped.
  bool all_acquired = true;
  std::vector<int64_t> lapped;
  auto acquire_all = [&] {
    Ring::Cursor c(ring_, first_key);
    for (int64_t k = first_key; k < first_key + kept; ++k, c.Next()) {
      if (!ring_.Acquire(c.key(), c.slot(), pid)) {
        all_acquired = false;
        lapped.push_back(k);
      }
    }
  };
  auto acquired = [&](int64_t key) {
    return all_acquired || !std::binary_search(lapped.begin(), lapped.end(), key);
  };
  // fn(key, slot, n) for each run of acquired keys in adjacent slots: at most two runs (up to
  // the end of the ring, then from slot 0) for a one-stream ring whose keys were all acquired.
  auto for_each_run = [&](auto&& fn) {
    Ring::Cursor c(ring_, first_key);
    int64_t k = first_key;
    const int64_t end = first_key + kept;
    while (k < end) {
      if (!acquired(k)) {
        ++k;
        c.Next();
        continue;
      }
      const int64_t key0 = k, slot0 = c.slot();
      int64_t n = 0;
      do {
        ++n;
        ++k;
        c.Next();
      } while (k < end && c.slot() == slot0 + n && acquired(k));
      fn(key0, slot0, n);
    }
  };
  if (sampler_->prioritized()) {
    // The slots are marked as being written and get their new priority under the writer
    // lock, so an update that checks a slot's stamp under the same lock never gives the new
    // item the old item's priority.
    std::optional<WriterLock> lock;
    if (!episode_lock) lock.emplace(*this);
    acquire_all();
    for_each_run([&](int64_t, int64_t slot, int64_t n) { sampler_->OnInsert(slot, n); });
  } else {
    acquire_all();
  }
  // Step 3: copy.
  for_each_run([&](int64_t key, int64_t slot, int64_t n) {
    CopyRows(values, skip + (key - first_key), slot, n);
  });
  if (episodes_.enabled()) WriteFlags(values, first, count, skip, all_acquired ? nullptr : &lapped);
  // Step 4: publish (each a release store, after all of this writer's bytes).
  Ring::Cursor c(ring_, first_key);
  for (int64_t k = first_key; k < first_key + kept; ++k, c.Next()) {
    if (all_acquired || acquired(k)) ring_.Publish(c.key(), c.slot());
  }
  ring_.CountCommitted(count);
  if (limiter_.enabled()) limiter_.Notify();
}

void ReplayBuffer::WriteFlags(const ArrayView* const* values, int64_t first, int64_t count,
                              int64_t skip, const std::vector<int64_t>* lapped) {
  // Input rows are whole env steps and every write claims whole steps, so `first` is a
  // multiple of num_envs: row i belongs to env i % num_envs. Bool inputs are one byte per
  // value whether typed or not (Validate).
  const auto* terminated = static_cast<const uint8_t*>(values[episodes_.terminated]->data);
  const auto* truncated = static_cast<const uint8_t*>(values[episodes_.truncated]->data);
  const int64_t envs = episodes_.num_envs;
  int64_t env = 0;
  Ring::Cursor c(ring_, first + skip);
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t f = RowFlagsAfter(streams_[env], terminated[i] != 0, truncated[i] != 0);
    streams_[env] = f;
    if (i >= skip) {
      const int64_t key = first + i;
      if (lapped == nullptr || !std::binary_search(lapped->begin(), lapped->end(), key)) {
        RacyCopy(flags_ + c.slot(), &f, 1);
      }
      c.Next();
    }
    env = env + 1 == envs ? 0 : env + 1;
  }
}

void ReplayBuffer::Write(const FieldInput* inputs, size_t n, bool batched) {
  constexpr size_t kInline = 16;
  const size_t fields = storage_.num_fields();
  const ArrayView* inline_values[kInline];
  std::vector<const ArrayView*> heap_values(fields > kInline ? fields : 0);
  const ArrayView** values = fields > kInline ? heap_values.data() : inline_values;
  int64_t count = 1;
  Validate(inputs, n, batched, values, &count);
  if (count == 0) return;
  WriteItems(values, count);
}

void ReplayBuffer::Add(const FieldInput* inputs, size_t n) {
  REVERIE_CHECK(episodes_.num_envs <= 1, "add() stores one row, but this buffer steps num_envs=",
                episodes_.num_envs, " envs together: use extend() with values of shape (",
                episodes_.num_envs, ", ...), one row per env");
  Write(inputs, n, /*batched=*/false);
}

void ReplayBuffer::Extend(const FieldInput* inputs, size_t n) { Write(inputs, n, /*batched=*/true); }

void ReplayBuffer::Resolve(const SampleRequest& request, int64_t i, uint32_t first_attempt,
                           int64_t* slots, int64_t* stamps) const {
  const int64_t range = request.draw_range();
  auto take = [&](int64_t slot) {
    if (slot < 0 || slot >= range) return false;
    const uint64_t stamp = ring_.LoadStamp(slot);  // acquire: pairs with Publish
    if (!Stamp::IsCommitted(stamp)) return false;
    slots[i] = slot;
    stamps[i] = static_cast<int64_t>(stamp);
    return true;
  };
  if (take(slots[i])) return;
  for (uint32_t attempt = first_attempt + 1; attempt <= first_attempt + kMaxRedraws; ++attempt) {
    if (take(sampler_->Redraw(request, i, attempt, slots))) return;
  }
  // Nearly every drawn slot is being written: a writer is stalled (descheduled, stopped or
  // killed) in the middle of a large extend. Probe the slots one by one from a random start
  // for a committed, drawable one. Only reached in that state, where it is slightly biased
  // toward the slots just after the stalled run; O(range).
  const int64_t start = std::max<int64_t>(0, sampler_->Redraw(request, i, first_attempt + kMaxRedraws + 1, slots));
  for (int64_t k = 0; k < range; ++k) {
    const int64_t slot = (start + k) % range;
    if (sampler_->Drawable(request, i, slot, slots) && take(slot)) return;
  }
  throw std::runtime_error(
      "could not draw a committed item: every stored item is being overwritten right now");
}

void ReplayBuffer::Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights) {
  REVERIE_CHECK(!episodes_.enabled(), "an episode buffer samples transitions or sequences "
                "(SampleTransitions, SampleSequences)");
  REVERIE_CHECK(batch > 0, "batch_size must be > 0, got ", batch);
  const SampleRequest request = BeginSample(batch, nullptr);
  // Keys hold the rows' stamps until the end.
  const std::unique_ptr<int64_t[]> slot_buffer(new int64_t[static_cast<size_t>(batch)]);
  int64_t* slots = slot_buffer.get();
  float* w = sampler_->prioritized() ? weights : nullptr;
  const bool split = sampler_->splittable();
  const auto& spec = storage_.spec();
  size_t row_bytes = 0;
  for (const FieldSpec& field : spec) row_bytes += field.row_bytes();
  // A file-backed buffer larger than the page cache: ask the kernel to read every row's
  // pages now, so the misses are read from disk together instead of one fault at a time.
  // That is a system call per row and field, so it is done only while calls meet major
  // page faults (rows read from disk): for kAdviseCalls calls after one that did.
  const bool from_file = region_.file_backed();
  const bool advise = from_file && advise_left_.load(std::memory_order_relaxed) > 0;
  if (advise) advise_left_.fetch_sub(1, std::memory_order_relaxed);
  const int64_t faults_before = from_file ? MajorFaults() : 0;
  struct FaultCheck {
    ReplayBuffer& buf;
    bool on;
    int64_t before;
    ~FaultCheck() {
      if (on && MajorFaults() > before) buf.advise_left_.store(kAdviseCalls, std::memory_order_relaxed);
    }
  } fault_check{*this, from_file, faults_before};
  auto gather = [&](int64_t begin, int64_t end) {
    if (advise) {
      for (size_t f = 0; f < spec.size(); ++f) {
        const size_t bytes = spec[f].row_bytes();
        for (int64_t i = begin; i < end; ++i) {
          if (slots[i] >= 0) region_.AdviseWillNeed(storage_.column(f) + static_cast<size_t>(slots[i]) * bytes, bytes);
        }
      }
    }
    for (size_t f = 0; f < spec.size(); ++f) {
      GatherRows(out[f], storage_.column(f), spec[f].row_bytes(), slots, begin, end);
    }
  };
  auto work = [&](int64_t begin, int64_t end) {
    if (split) sampler_->Draw(request, begin, end, slots);
    // Every stamp is a random cache miss: start them all before checking the first.
    for (int64_t i = begin; i < end; ++i) {
      if (slots[i] >= 0) ring_.PrefetchStamp(slots[i]);
    }
    for (int64_t i = begin; i < end; ++i) Resolve(request, i, 0, slots, keys);
    gather(begin, end);
    // The seqlock check of ring.h: a row whose stamp changed during the copy is redrawn
    // and copied again.
    std::atomic_thread_fence(std::memory_order_acquire);
    for (int64_t i = begin; i < end; ++i) {
      uint32_t attempt = kRecheckAttempts;
      while (static_cast<int64_t>(ring_.RecheckStamp(slots[i])) != keys[i]) {
        attempt += kMaxRedraws + 2;
        slots[i] = sampler_->Redraw(request, i, attempt, slots);
        Resolve(request, i, attempt, slots, keys);
        gather(i, i + 1);
        std::atomic_thread_fence(std::memory_order_acquire);
      }
    }
    if (w != nullptr) sampler_->Weights(slots, begin, end, w);
  };
  // Each piece draws its own slots and gathers its rows: the cache misses of the tree and of
  // the rows then run on every core. Large gathers are cut finer to balance the copying.
  ThreadPool& pool = ThreadPool::Shared();
  const int64_t threads = pool.workers() + 1;
  int64_t chunks = 1;
  if (!split) {
    // Without replacement a redraw reads the whole batch: one piece.
  } else if (row_bytes * static_cast<size_t>(batch) >= kParallelGatherBytes) {
    chunks = std::min<int64_t>(batch / kRowsPerChunk + 1, 4 * threads);
  } else if (batch >= kMinParallelRows) {
    chunks = threads;
  }
  // A tree rescale or rebuild (rare, milliseconds) while drawing: the call is drawn again.
  // The wait for one in progress is bounded: a process killed in the middle of one leaves
  // the epoch odd until the next writer repairs the tree, and must not hang us.
  auto stable_epoch = [&] {
    uint64_t epoch = sampler_->epoch();
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while ((epoch & 1) != 0 && std::chrono::steady_clock::now() < give_up) {
      sched_yield();
      epoch = sampler_->epoch();
    }
    return epoch;
  };

  // The quiet path (ring.h, "A quiet buffer"): no write in flight now, and none claimed by
  // the end of the copy, so every drawn slot is committed and no row changed under us; the
  // stamps are not read at all. Otherwise the same call is drawn again on the checked path.
  // After a miss the next calls go straight to the checked path, so steady concurrent
  // writing does not pay for the attempt every time.
  const int64_t committed0 = ring_.committed();
  const int64_t claimed0 = ring_.claimed();
  int skip = skip_quiet_.load(std::memory_order_relaxed);
  if (skip > 0) skip_quiet_.store(skip - 1, std::memory_order_relaxed);
  if (claimed0 == committed0 && skip == 0) {
    SampleRequest quiet = request;
    quiet.range = std::min(claimed0, capacity());
    std::atomic<bool> hole{false};
    auto quiet_work = [&](int64_t begin, int64_t end) {
      if (split) sampler_->Draw(quiet, begin, end, slots);
      for (int64_t i = begin; i < end; ++i) {
        if (slots[i] < 0) {  // a descent that raced a priority update: take the checked path
          hole.store(true, std::memory_order_relaxed);
          return;
        }
      }
      gather(begin, end);
      if (w != nullptr) sampler_->Weights(slots, begin, end, w);
    };
    const uint64_t epoch = stable_epoch();
    if (!split) sampler_->Draw(quiet, 0, batch, slots);
    pool.ParallelFor(batch, chunks, quiet_work);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (!hole.load(std::memory_order_relaxed) && ring_.RecheckClaimed() == claimed0 &&
        sampler_->epoch() == epoch) {
      ring_.KeysOfSlots(slots, keys, batch, claimed0);
      return;
    }
    skip_quiet_.store(kQuietBackoff, std::memory_order_relaxed);
  }

  for (;;) {
    const uint64_t epoch = stable_epoch();
    if (!split) sampler_->Draw(request, 0, batch, slots);
    pool.ParallelFor(batch, chunks, work);
    if (sampler_->epoch() == epoch) break;
  }
  for (int64_t i = 0; i < batch; ++i) keys[i] = Stamp::KeyOf(static_cast<uint64_t>(keys[i]));
}

void ReplayBuffer::Get(const int64_t* keys, int64_t n, uint8_t* const* out) const {
  const KeyCodec& codec = ring_.codec();
  for (int64_t i = 0; i < n; ++i) {
    if (!ring_.WasClaimed(keys[i])) throw std::out_of_range(BadKeyMessage(keys[i], i));
  }
  auto gone = [&](int64_t i) {
    return std::out_of_range(internal::Concat(
        "index ", keys[i], " at position ", i, " is no longer stored: slot ", codec.Slot(keys[i]),
        " has been written again since (keys name one item; a newer item has another key)"));
  };
  // The seqlock read of ring.h: each row must be committed with its key before the copy and
  // still after it.
  const std::unique_ptr<int64_t[]> slots(new int64_t[static_cast<size_t>(n)]);
  for (int64_t i = 0; i < n; ++i) {
    slots[i] = codec.Slot(keys[i]);
    if (ring_.LoadStamp(slots[i]) != Stamp::Committed(keys[i])) throw gone(i);
  }
  const auto& spec = storage_.spec();
  for (size_t f = 0; f < spec.size(); ++f) {
    GatherRows(out[f], storage_.column(f), spec[f].row_bytes(), slots.get(), 0, n);
  }
  std::atomic_thread_fence(std::memory_order_acquire);
  for (int64_t i = 0; i < n; ++i) {
    if (ring_.RecheckStamp(slots[i]) != Stamp::Committed(keys[i])) throw gone(i);
  }
}

int64_t ReplayBuffer::UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n) {
  sampler_->ValidatePriorities(priorities, n);
  for (int64_t k = 0; k < n; ++k) {
    if (!ring_.WasClaimed(keys[k])) throw std::out_of_range(BadKeyMessage(keys[k], k));
  }
  std::vector<int64_t> slots;
  std::vector<double> values;
  slots.reserve(static_cast<size_t>(n));
  values.reserve(static_cast<size_t>(n));
  {
    WriterLock lock(*this);
    // Under the lock, so a writer cannot mark a checked slot and give it a new priority
    // between the check and the update (see WriteItems).
    const KeyCodec& codec = ring_.codec();
    for (int64_t k = 0; k < n; ++k) ring_.PrefetchStamp(codec.Slot(keys[k]));
    for (int64_t k = 0; k < n; ++k) {
      const int64_t slot = codec.Slot(keys[k]);
      if (!ring_.Holds(keys[k], slot)) continue;
      slots.push_back(slot);
      values.push_back(priorities[k]);
    }
    sampler_->UpdatePriorities(slots.data(), values.data(), static_cast<int64_t>(slots.size()));
  }
  const int64_t stale = n - static_cast<int64_t>(slots.size());
  header_->stale.fetch_add(stale, std::memory_order_relaxed);
  return stale;
}

void ReplayBuffer::SlotsOf(const int64_t* keys, int64_t* slots, int64_t n) const {
  const KeyCodec& codec = ring_.codec();
  for (int64_t i = 0; i < n; ++i) {
    slots[i] = codec.WellFormed(keys[i], capacity()) ? codec.Slot(keys[i]) : -1;
  }
}

std::vector<int64_t> ReplayBuffer::StoredKeys() const {
  const int64_t written = ring_.committed();
  const int64_t oldest = std::max<int64_t>(0, written - capacity());
  std::vector<int64_t> keys;
  keys.reserve(static_cast<size_t>(written - oldest));
  Ring::Cursor c(ring_, oldest);
  for (int64_t n = oldest; n < written; ++n, c.Next()) keys.push_back(c.key());
  return keys;
}

void ReplayBuffer::InsertionsOf(const int64_t* keys, int64_t* out, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) out[i] = ring_.InsertionOfKey(keys[i]);
}

void ReplayBuffer::SetPriorityState(const PrioritizedSampler::State& state) {
  auto* sampler = dynamic_cast<PrioritizedSampler*>(sampler_.get());
  REVERIE_CHECK(sampler != nullptr, "this buffer has no prioritized sampler");
  REVERIE_CHECK(static_cast<int64_t>(state.leaves.size()) == capacity(), "priority state has ",
                state.leaves.size(), " leaves, the buffer has capacity ", capacity());
  int64_t held = 0;
  for (int64_t slot = 0; slot < capacity(); ++slot) {
    const bool holds = Stamp::IsCommitted(ring_.LoadStamp(slot));
    held += holds;
    REVERIE_CHECK(holds || state.leaves[static_cast<size_t>(slot)] == 0,
                  "priority state is inconsistent with its counters: slot ", slot,
                  " holds no item but has a priority (", held, " of ", capacity(),
                  " slots checked so far hold items)");
  }
  WithSampler([&](Sampler&) { sampler->SetState(state); });
}

std::string ReplayBuffer::BadKeyMessage(int64_t key, int64_t position) const {
  const KeyCodec& codec = ring_.codec();
  const std::string at = internal::Concat("index ", key, " at position ", position);
  const char* hint = " (use batch.indices from sample())";
  if (key < 0) return internal::Concat(at, " is negative: keys are >= 0", hint);
  if (codec.Shard(key) != codec.shard) {
    return internal::Concat(at, " belongs to shard ", codec.Shard(key), "; this buffer is shard ",
                            codec.shard, hint);
  }
  const int64_t slot = codec.Slot(key);
  if (slot >= capacity()) {
    return internal::Concat(at, " is not a key of this buffer: its slot ", slot,
                            " is beyond the capacity ", capacity(), hint);
  }
  return internal::Concat(at, " was never written: it is generation ", codec.Generation(key),
                          " of slot ", slot, ", and ", ring_.claimed(),
                          " items have been written in all", hint);
}

ReplayBuffer::Counters ReplayBuffer::GetCounters() const {
  return Counters{ring_.committed(), sample_calls(), stale_updates(), limiter_.sampled(),
                  limiter_.offset()};
}

void ReplayBuffer::SetCounters(const Counters& counters) {
  REVERIE_CHECK(counters.written >= 0, "written must be >= 0, got ", counters.written);
  REVERIE_CHECK(counters.stale_updates >= 0, "stale_updates must be >= 0, got ",
                counters.stale_updates);
  REVERIE_CHECK(counters.sampled >= 0, "sampled must be >= 0, got ", counters.sampled);
  REVERIE_CHECK(std::isfinite(counters.limiter_offset), "rate limiter offset must be finite, got ",
                counters.limiter_offset);
  header_->ring.claimed.store(counters.written, std::memory_order_relaxed);
  header_->ring.committed.store(counters.written, std::memory_order_relaxed);
  // The stored items are the last min(written, capacity) keys.
  const int64_t cap = capacity();
  const int64_t oldest = std::max<int64_t>(0, counters.written - cap);
  Ring::Cursor c(ring_, oldest);
  for (int64_t n = oldest; n < counters.written; ++n, c.Next()) ring_.Publish(c.key(), c.slot());
  header_->stale.store(counters.stale_updates, std::memory_order_relaxed);
  header_->calls.store(counters.sample_calls, std::memory_order_relaxed);
  limiter_.Restore(counters.sampled, counters.limiter_offset);
}

void ReplayBuffer::SetEpisodeState(const uint8_t* flags, size_t flags_bytes,
                                   const uint8_t* streams, size_t streams_bytes) {
  REVERIE_CHECK(episodes_.enabled(), "this buffer has no episode state");
  REVERIE_CHECK(flags_bytes == static_cast<size_t>(capacity()), "expected ", capacity(),
                " bytes of row flags, got ", flags_bytes);
  REVERIE_CHECK(streams_bytes == static_cast<size_t>(episodes_.num_envs), "expected ",
                episodes_.num_envs, " stream flags, got ", streams_bytes);
  std::memcpy(flags_, flags, flags_bytes);
  std::memcpy(streams_, streams, streams_bytes);
}

void ReplayBuffer::LoadColumn(size_t field, const void* data, size_t bytes) {
  REVERIE_CHECK(field < storage_.num_fields(), "no field number ", field);
  const FieldSpec& spec = storage_.spec()[field];
  const size_t expected = spec.row_bytes() * static_cast<size_t>(capacity());
  REVERIE_CHECK(bytes == expected, "field '", spec.name, "': expected ", expected,
                " bytes of column data, got ", bytes);
  std::memcpy(storage_.column(field), data, bytes);
}

}  // namespace reverie
