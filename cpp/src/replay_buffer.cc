#include "reverie/replay_buffer.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "reverie/common.h"
#include "reverie/gather.h"
#include "reverie/thread_pool.h"

namespace reverie {
namespace {

constexpr size_t kParallelGatherBytes = size_t{256} << 10;  // large rows: cut finer above this
constexpr int64_t kRowsPerChunk = 16;
constexpr int64_t kMinParallelRows = 64;  // below this a second thread costs more than it saves

std::string FieldNames(const std::vector<FieldSpec>& spec) {
  std::string out;
  for (size_t i = 0; i < spec.size(); ++i) out += (i ? ", " : "") + spec[i].name;
  return out;
}

}  // namespace

ReplayBuffer::ReplayBuffer(int64_t capacity, std::vector<FieldSpec> spec,
                           std::unique_ptr<Sampler> sampler, uint64_t seed)
    : storage_(capacity, std::move(spec)), sampler_(std::move(sampler)), seed_(seed) {
  REVERIE_CHECK(sampler_ != nullptr, "a buffer needs a sampler");
  ring_.capacity = capacity;
}

int64_t ReplayBuffer::size() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return ring_.size();
}

int64_t ReplayBuffer::written() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return ring_.written;
}

int64_t ReplayBuffer::stale_updates() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return stale_updates_;
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
    const int skip = batched ? 1 : 0;
    bool shape_ok = v.ndim == item_dims + skip;
    for (int d = 0; shape_ok && d < item_dims; ++d) shape_ok = v.shape[d + skip] == field.shape[d];
    if (!shape_ok) {
      const std::string expected = ShapeString(field.shape.data(), item_dims);
      throw std::invalid_argument(internal::Concat(
          "field '", field.name, "': expected ", batched ? "shape (n, *" : "shape ", expected,
          batched ? ") for a batch" : " for one item", ", got ", ShapeString(v.shape, v.ndim)));
    }
    if (batched) {
      if (*leading < 0) {
        *leading = v.shape[0];
      } else {
        REVERIE_CHECK(v.shape[0] == *leading, "field '", field.name, "' has ", v.shape[0],
                      " items but '", spec[0].name, "' has ", *leading,
                      "; every field needs the same leading length");
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

void ReplayBuffer::WriteRows(const ArrayView* const* values, int64_t count) {
  // Only the last `capacity` items survive; write just those.
  const int64_t cap = ring_.capacity;
  const int64_t skip = std::max<int64_t>(0, count - cap);
  const int64_t kept = count - skip;
  const int64_t first_slot = (ring_.written + skip) % cap;
  const auto& spec = storage_.spec();
  for (size_t f = 0; f < spec.size(); ++f) {
    const ArrayView& v = *values[f];
    const size_t elems = static_cast<size_t>(spec[f].item_elements());
    const size_t row = spec[f].row_bytes();
    const size_t src_row = elems * DTypeSize(v.dtype);
    const auto* src = static_cast<const uint8_t*>(v.data) + static_cast<size_t>(skip) * src_row;
    int64_t done = 0;
    while (done < kept) {  // at most two pieces: up to the end of the ring, then from slot 0
      const int64_t slot = (first_slot + done) % cap;
      const int64_t piece = std::min(kept - done, cap - slot);
      uint8_t* dst = storage_.column(f) + static_cast<size_t>(slot) * row;
      const uint8_t* from = src + static_cast<size_t>(done) * src_row;
      if (v.typed) {
        std::memcpy(dst, from, static_cast<size_t>(piece) * row);
      } else {
        ConvertUntyped(from, v.dtype, dst, spec[f].dtype, static_cast<size_t>(piece) * elems);
      }
      done += piece;
    }
  }
  sampler_->OnInsert(first_slot, kept);
  ring_.written += count;
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
  std::unique_lock<std::shared_mutex> lock(mu_);
  WriteRows(values, count);
}

void ReplayBuffer::Add(const FieldInput* inputs, size_t n) { Write(inputs, n, /*batched=*/false); }

void ReplayBuffer::Extend(const FieldInput* inputs, size_t n) { Write(inputs, n, /*batched=*/true); }

void ReplayBuffer::Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  SampleRequest request;
  request.seed = seed_;
  request.size = ring_.size();
  request.batch = batch;
  sampler_->ValidateSample(request);
  request.call = calls_.fetch_add(1, std::memory_order_relaxed);
  // Slots go to `keys` first and become keys after the gather.
  float* w = sampler_->prioritized() ? weights : nullptr;
  const bool split = sampler_->splittable();
  if (!split) sampler_->Sample(request, 0, batch, keys, w);

  const auto& spec = storage_.spec();
  size_t row_bytes = 0;
  for (const FieldSpec& field : spec) row_bytes += field.row_bytes();
  auto work = [&](int64_t begin, int64_t end) {
    if (split) sampler_->Sample(request, begin, end, keys, w);
    for (size_t f = 0; f < spec.size(); ++f) {
      GatherRows(out[f], storage_.column(f), spec[f].row_bytes(), keys, begin, end);
    }
  };
  // Each piece draws its own slots and gathers its rows: the cache misses of the tree and of
  // the rows then run on every core. Large gathers are cut finer to balance the copying.
  ThreadPool& pool = ThreadPool::Shared();
  const int64_t threads = pool.workers() + 1;
  int64_t chunks = 1;
  if (row_bytes * static_cast<size_t>(batch) >= kParallelGatherBytes) {
    chunks = std::min<int64_t>(batch / kRowsPerChunk + 1, 4 * threads);
  } else if (batch >= kMinParallelRows) {
    chunks = threads;
  }
  pool.ParallelFor(batch, chunks, work);
  ring_.SlotsToKeys(keys, batch);
}

int64_t ReplayBuffer::UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n) {
  sampler_->ValidatePriorities(priorities, n);
  std::unique_lock<std::shared_mutex> lock(mu_);
  for (int64_t k = 0; k < n; ++k) {
    REVERIE_CHECK_INDEX(ring_.was_written(keys[k]), "index ", keys[k], " at position ", k,
                        " was never written: valid keys are 0 .. ", ring_.written - 1,
                        " (use batch.indices from sample())");
  }
  std::vector<int64_t> slots;
  std::vector<double> values;
  slots.reserve(static_cast<size_t>(n));
  values.reserve(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    if (!ring_.is_stored(keys[k])) continue;
    slots.push_back(ring_.slot_of(keys[k]));
    values.push_back(priorities[k]);
  }
  const int64_t stale = n - static_cast<int64_t>(slots.size());
  sampler_->UpdatePriorities(slots.data(), values.data(), static_cast<int64_t>(slots.size()));
  stale_updates_ += stale;
  return stale;
}

ReplayBuffer::Counters ReplayBuffer::GetCounters() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return Counters{ring_.written, calls_.load(std::memory_order_relaxed), stale_updates_};
}

void ReplayBuffer::SetCounters(const Counters& counters) {
  REVERIE_CHECK(counters.written >= 0, "written must be >= 0, got ", counters.written);
  REVERIE_CHECK(counters.stale_updates >= 0, "stale_updates must be >= 0, got ",
                counters.stale_updates);
  std::unique_lock<std::shared_mutex> lock(mu_);
  ring_.written = counters.written;
  stale_updates_ = counters.stale_updates;
  calls_.store(counters.sample_calls, std::memory_order_relaxed);
}

void ReplayBuffer::LoadColumn(size_t field, const void* data, size_t bytes) {
  REVERIE_CHECK(field < storage_.num_fields(), "no field number ", field);
  const FieldSpec& spec = storage_.spec()[field];
  const size_t expected = spec.row_bytes() * static_cast<size_t>(capacity());
  REVERIE_CHECK(bytes == expected, "field '", spec.name, "': expected ", expected,
                " bytes of column data, got ", bytes);
  std::unique_lock<std::shared_mutex> lock(mu_);
  std::memcpy(storage_.column(field), data, bytes);
}

}  // namespace reverie
