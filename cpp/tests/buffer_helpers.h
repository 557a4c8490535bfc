// Helpers for the concurrency tests (test_concurrency.cc): rows whose every field encodes
// (writer, sequence number) so a torn row is detectable, sampling buffers, a watchdog that
// turns a deadlock into a failure, shared-memory names and a sum-tree consistency check;
// and a table's saved state as a checkpoint holds it (test_parts.cc).
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <future>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "reverie/config.h"
#include "reverie/episodes.h"
#include "reverie/prioritized_selector.h"
#include "reverie/table.h"
#include "reverie/sum_tree.h"

namespace reverie_test {
namespace conc {

// Work per stress test is divided by this: ThreadSanitizer runs 5-15x slower. (ASan+UBSan,
// ~2x, needs no cut.)
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
inline constexpr int64_t kWorkDivisor = 4;
#else
inline constexpr bool kThreadSanitizer = false;
inline constexpr int64_t kWorkDivisor = 1;
#endif

inline double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace conc

// ---- Tables as the tests make them -----------------------------------------------------------

// A sampler as the tests state it; turned into the table configuration's "selector".
struct SamplerConfig {
  enum class Kind { kUniform, kPrioritized };
  Kind kind = Kind::kUniform;
  bool replacement = true;
  reverie::PrioritizedConfig prioritized;
};

// The configuration (config.h) of a table of `capacity` items of `spec`, drawn by `sampler`,
// with an episode view when `episodes` is enabled, and any `extra` settings (writer, ...).
inline reverie::ConfigValue TableConfig(int64_t capacity, const std::vector<reverie::FieldSpec>& spec,
                                        const SamplerConfig& sampler, uint64_t seed,
                                        const reverie::EpisodeConfig& episodes = {},
                                        const reverie::ConfigValue& extra = reverie::ConfigValue()) {
  using reverie::ConfigValue;
  ConfigValue c = ConfigValue::MakeMap();
  c.Set("capacity", ConfigValue::Int(capacity));
  ConfigValue fields = ConfigValue::MakeList();
  for (const reverie::FieldSpec& f : spec) {
    ConfigValue shape = ConfigValue::MakeList();
    for (int64_t d : f.shape) shape.Append(ConfigValue::Int(d));
    fields.Append(ConfigValue::MakeList({ConfigValue::String(f.name),
                                         ConfigValue::String(reverie::DTypeName(f.dtype)), shape}));
  }
  c.Set("spec", fields);
  c.Set("seed", ConfigValue::UInt(seed));
  ConfigValue sel = ConfigValue::MakeMap();
  if (sampler.kind == SamplerConfig::Kind::kUniform) {
    sel.Set("kind", ConfigValue::String("uniform"));
    sel.Set("replacement", ConfigValue::Bool(sampler.replacement));
  } else {
    sel.Set("kind", ConfigValue::String("prioritized"));
    sel.Set("alpha", ConfigValue::Double(sampler.prioritized.alpha));
    sel.Set("beta", ConfigValue::Double(sampler.prioritized.beta));
    sel.Set("eps", ConfigValue::Double(sampler.prioritized.eps));
  }
  c.Set("selector", sel);
  if (episodes.enabled()) {
    ConfigValue v = ConfigValue::MakeMap();
    v.Set("kind", ConfigValue::String("episodes"));
    v.Set("num_envs", ConfigValue::Int(episodes.num_envs));
    v.Set("frame_stack", ConfigValue::Int(episodes.frame_stack));
    auto name = [&](int i) { return ConfigValue::String(spec[static_cast<size_t>(i)].name); };
    v.Set("reward", name(episodes.reward));
    v.Set("terminated", name(episodes.terminated));
    v.Set("truncated", name(episodes.truncated));
    ConfigValue obs = ConfigValue::MakeList();
    for (int o : episodes.obs) obs.Append(name(o));
    v.Set("obs", obs);
    c.Set("view", v);
  }
  if (extra.is_map()) {
    for (const auto& [k, value] : extra.AsMap("extra")) c.Set(k, value);
  }
  return c;
}

// A table made from the tests' arguments, with the episode samplers at hand.
class TestTable : public reverie::Table {
 public:
  TestTable(int64_t capacity, std::vector<reverie::FieldSpec> spec, const SamplerConfig& sampler,
            uint64_t seed, const reverie::StorageConfig& storage = {},
            const reverie::EpisodeConfig& episodes = {},
            const reverie::ConfigValue& extra = reverie::ConfigValue())
      : Table(TableConfig(capacity, spec, sampler, seed, episodes, extra), storage) {}

  void SampleTransitions(int64_t batch, int n_step, double gamma, uint8_t* const* out,
                         uint8_t* const* next_out, float* returns, float* discounts,
                         int64_t* keys, float* weights) {
    episodes()->SampleTransitions(*this, batch, n_step, gamma, out, next_out, returns, discounts,
                                  keys, weights);
  }
  void SampleSequences(int64_t batch, int64_t burn_in, int64_t length, bool drop,
                       uint8_t* const* out, uint8_t* mask, int64_t* keys, float* weights) {
    episodes()->SampleSequences(*this, batch, burn_in, length, drop, out, mask, keys, weights);
  }
};

// ---- Saved state, as a checkpoint holds it ---------------------------------------------------

// Copies of every state array of a table (by name) and its scalars (table.h, "State").
struct SavedState {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> arrays;
  reverie::ConfigValue scalars;
};

// The state of an idle table. O(size of its arrays).
inline SavedState SaveState(reverie::Table& table) {
  SavedState saved;
  for (const reverie::StateArray& a : table.StateArrays()) {
    saved.arrays.emplace_back(a.name, std::vector<uint8_t>(a.data, a.data + a.bytes()));
  }
  saved.scalars = table.Scalars();
  return saved;
}

// Writes `saved` into an idle table of the same configuration and restores it, as a
// checkpoint load does. Throws std::invalid_argument when an array is missing or its size
// differs (or Restore refuses the state).
inline void LoadState(reverie::Table& table, const SavedState& saved) {
  std::vector<reverie::StateArray> arrays = table.StateArrays();
  if (arrays.size() != saved.arrays.size()) {
    throw std::invalid_argument("saved state has " + std::to_string(saved.arrays.size()) +
                                " arrays, the table " + std::to_string(arrays.size()));
  }
  for (const reverie::StateArray& a : arrays) {
    const auto it = std::find_if(saved.arrays.begin(), saved.arrays.end(),
                                 [&](const auto& s) { return s.first == a.name; });
    if (it == saved.arrays.end() || it->second.size() != a.bytes()) {
      throw std::invalid_argument("saved state does not fit array '" + a.name + "'");
    }
    std::memcpy(a.data, it->second.data(), a.bytes());
  }
  table.Restore(saved.scalars);
}

namespace conc {

inline SamplerConfig UniformSampling(bool replacement = true) {
  SamplerConfig c;
  c.replacement = replacement;
  return c;
}

inline SamplerConfig PrioritizedSampling(double alpha, double beta, double eps) {
  SamplerConfig c;
  c.kind = SamplerConfig::Kind::kPrioritized;
  c.prioritized = reverie::PrioritizedConfig{alpha, beta, eps};
  return c;
}

// An input for field `name`: `leading` items (batched) or one item (leading < 0) of the given
// per-item shape.
inline reverie::FieldInput MakeInput(std::string_view name, const void* data,
                                     reverie::DType dtype, std::vector<int64_t> item_shape,
                                     int64_t leading) {
  reverie::FieldInput in;
  in.name = name;
  in.value.data = data;
  in.value.dtype = dtype;
  int d = 0;
  if (leading >= 0) in.value.shape[d++] = leading;
  for (int64_t s : item_shape) in.value.shape[d++] = s;
  in.value.ndim = d;
  return in;
}

// ---- Stress rows: every field a function of (writer w, sequence number seq) -----------------

inline int64_t StressTag(int w, int64_t seq) { return (static_cast<int64_t>(w) << 32) | seq; }
inline constexpr int64_t kStressBytes = 13;

// Five fields; the last, "blob", is `blob` words wide: a wider row takes longer to copy, so
// more of the samplers' reads meet a row being written.
inline std::vector<reverie::FieldSpec> StressSpec(int64_t blob) {
  using reverie::DType;
  return {reverie::FieldSpec{"tag", DType::kInt64, {}},
          reverie::FieldSpec{"pair", DType::kInt32, {2}},
          reverie::FieldSpec{"mix", DType::kFloat64, {3}},
          reverie::FieldSpec{"bytes", DType::kUInt8, {kStressBytes}},
          reverie::FieldSpec{"blob", DType::kInt64, {blob}}};
}

// n rows in the stress spec's layout: inputs for Add/Extend, or outputs of Sample.
struct StressRows {
  int64_t blob_words;
  std::vector<int64_t> tag;
  std::vector<int32_t> pair;
  std::vector<double> mix;
  std::vector<uint8_t> bytes;
  std::vector<int64_t> blob;

  StressRows(int64_t n, int64_t blob_width)
      : blob_words(blob_width),
        tag(static_cast<size_t>(n)),
        pair(static_cast<size_t>(n) * 2),
        mix(static_cast<size_t>(n) * 3),
        bytes(static_cast<size_t>(n) * kStressBytes),
        blob(static_cast<size_t>(n * blob_width)) {}

  static int64_t BlobOf(int64_t tag) {
    return static_cast<int64_t>(static_cast<uint64_t>(tag) * 0x9E3779B97F4A7C15ull ^
                                0xA5A5A5A5A5A5A5A5ull);
  }

  static uint8_t ByteOf(int w, int64_t seq, int64_t j) {
    return static_cast<uint8_t>((seq * 131 + w * 29 + j * 7) & 0xff);
  }

  void Set(int64_t i, int w, int64_t seq) {
    const auto r = static_cast<size_t>(i);
    tag[r] = StressTag(w, seq);
    pair[2 * r] = w;
    pair[2 * r + 1] = static_cast<int32_t>(seq);
    mix[3 * r] = static_cast<double>(seq) + 0.25;
    mix[3 * r + 1] = -(static_cast<double>(w) + 1.0);
    mix[3 * r + 2] = static_cast<double>(tag[r]) * 0.5;
    for (int64_t j = 0; j < kStressBytes; ++j) bytes[r * kStressBytes + j] = ByteOf(w, seq, j);
    std::fill(blob.begin() + i * blob_words, blob.begin() + (i + 1) * blob_words, BlobOf(tag[r]));
  }

  // Whether row i is one whole (w, seq) row; if so, stores w and seq.
  bool Consistent(int64_t i, int* w_out, int64_t* seq_out) const {
    const auto r = static_cast<size_t>(i);
    const int w = pair[2 * r];
    const int64_t seq = pair[2 * r + 1];
    if (w < 0 || seq < 0 || tag[r] != StressTag(w, seq)) return false;
    if (mix[3 * r] != static_cast<double>(seq) + 0.25 ||
        mix[3 * r + 1] != -(static_cast<double>(w) + 1.0) ||
        mix[3 * r + 2] != static_cast<double>(tag[r]) * 0.5) {
      return false;
    }
    for (int64_t j = 0; j < kStressBytes; ++j) {
      if (bytes[r * kStressBytes + j] != ByteOf(w, seq, j)) return false;
    }
    const int64_t b = BlobOf(tag[r]);
    for (int64_t j = 0; j < blob_words; ++j) {
      if (blob[static_cast<size_t>(i * blob_words + j)] != b) return false;
    }
    *w_out = w;
    *seq_out = seq;
    return true;
  }

  // Inputs for the first n rows: batched (Extend) or, with batched false, row 0 alone (Add).
  std::array<reverie::FieldInput, 5> Inputs(int64_t n, bool batched) const {
    using reverie::DType;
    const int64_t lead = batched ? n : -1;
    return {MakeInput("tag", tag.data(), DType::kInt64, {}, lead),
            MakeInput("pair", pair.data(), DType::kInt32, {2}, lead),
            MakeInput("mix", mix.data(), DType::kFloat64, {3}, lead),
            MakeInput("bytes", bytes.data(), DType::kUInt8, {kStressBytes}, lead),
            MakeInput("blob", blob.data(), DType::kInt64, {blob_words}, lead)};
  }

  std::array<uint8_t*, 5> Outputs() {
    return {reinterpret_cast<uint8_t*>(tag.data()), reinterpret_cast<uint8_t*>(pair.data()),
            reinterpret_cast<uint8_t*>(mix.data()), bytes.data(),
            reinterpret_cast<uint8_t*>(blob.data())};
  }

  // Copies the row stored in `slot` of `buf` (a stress-spec buffer) into row i. Only for a
  // buffer no thread writes any more.
  void LoadStored(const reverie::Table& buf, int64_t slot, int64_t i) {
    const auto r = static_cast<size_t>(i);
    const auto s = static_cast<size_t>(slot);
    const reverie::Storage& st = buf.storage();
    std::memcpy(&tag[r], st.column(0) + s * 8, 8);
    std::memcpy(&pair[2 * r], st.column(1) + s * 8, 8);
    std::memcpy(&mix[3 * r], st.column(2) + s * 24, 24);
    std::memcpy(&bytes[r * kStressBytes], st.column(3) + s * kStressBytes, kStressBytes);
    const size_t blob_bytes = static_cast<size_t>(blob_words) * 8;
    std::memcpy(&blob[r * static_cast<size_t>(blob_words)], st.column(4) + s * blob_bytes,
                blob_bytes);
  }
};

// One Sample call's output buffers for a stress-spec buffer.
struct StressDraw {
  StressRows rows;
  std::vector<int64_t> keys;
  std::vector<float> weights;

  StressDraw(int64_t batch, int64_t blob_width)
      : rows(batch, blob_width),
        keys(static_cast<size_t>(batch)),
        weights(static_cast<size_t>(batch)) {}

  void From(reverie::Table& buf, int64_t batch) {
    std::fill(weights.begin(), weights.begin() + batch, -1.0f);
    auto out = rows.Outputs();
    buf.Sample(batch, out.data(), keys.data(), weights.data());
  }
};

// ---- Watchdog ------------------------------------------------------------------------------

// Runs fn on a thread of its own and waits at most `seconds` for it. An exception from fn is
// rethrown here. A call that does not finish in time (a deadlock) cannot be recovered: the
// message names it, `on_timeout` runs (e.g. to unlink a shared segment) and the process
// exits with status 3.
template <typename Fn>
void FinishWithin(const char* what, double seconds, Fn&& fn,
                  const std::function<void()>& on_timeout = {}) {
  auto promise = std::make_shared<std::promise<void>>();
  std::future<void> done = promise->get_future();
  std::thread worker([promise, &fn] {
    try {
      fn();
      promise->set_value();
    } catch (...) {
      promise->set_exception(std::current_exception());
    }
  });
  if (done.wait_for(std::chrono::duration<double>(seconds)) != std::future_status::ready) {
    std::fprintf(stderr, "  FATAL: %s did not finish in %.0f s (deadlock?)\n", what, seconds);
    std::fflush(stderr);
    if (on_timeout) on_timeout();
    std::_Exit(3);
  }
  worker.join();
  done.get();
}

// ---- Shared memory -------------------------------------------------------------------------

inline std::string SegmentPrefix() { return "reverie-test-" + std::to_string(getpid()) + "-"; }
inline std::string SegmentName(const char* what) { return SegmentPrefix() + what; }

// Entries of /dev/shm made by this process's tests (SegmentName) that still exist.
inline int LeftoverSegments() {
  const std::string prefix = SegmentPrefix();
  int count = 0;
  if (DIR* dir = opendir("/dev/shm")) {
    while (const dirent* e = readdir(dir)) {
      if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) {
        std::fprintf(stderr, "  leftover /dev/shm/%s\n", e->d_name);
        ++count;
      }
    }
    closedir(dir);
  }
  return count;
}

// ---- Sum tree --------------------------------------------------------------------------------

// Whether every internal sum and min of `tree` agrees with its children, and the root with
// the sum of the leaves. O(leaves). Only for a tree no thread changes.
inline bool TreeAgreesWithLeaves(const reverie::SumTree& tree) {
  using reverie::kTreeFanout;
  const reverie::TreeLayout& l = tree.layout();
  for (int level = 0; level < l.depth; ++level) {
    for (int64_t node = 0; node < l.count[level]; ++node) {
      const uint64_t* c = tree.sums() + l.offset[level + 1] + node * kTreeFanout;
      uint64_t s = 0;
      for (int k = 0; k < kTreeFanout; ++k) s += c[k];
      if (tree.sums()[l.offset[level] + node] != s) return false;
      const uint64_t* cm =
          level + 1 == l.depth ? c : tree.mins() + l.offset[level + 1] + node * kTreeFanout;
      if (tree.mins()[l.offset[level] + node] != reverie::MinPositive(cm)) return false;
    }
  }
  uint64_t leaves = 0;
  for (int64_t i = 0; i < tree.leaves(); ++i) leaves += tree.leaf(i);
  return leaves == tree.total();
}

}  // namespace conc
}  // namespace reverie_test
