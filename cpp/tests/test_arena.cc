// Tests of ragged fields (arena.h, table_ragged.cc): byte-bounded eviction with exact
// accounting, packed and padded copies, refusals that change nothing, and writers racing
// samplers (every sampled token must belong to its item: no torn or foreign block), also
// under ASan/UBSan and TSan.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "buffer_helpers.h"
#include "harness.h"
#include "reverie/table.h"

using namespace reverie;
using reverie_test::conc::MakeInput;

namespace {

// Whether fn throws an invalid_argument whose message contains `what`.
template <typename Fn>
bool ThrowsWith(Fn&& fn, const std::string& what) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find(what) != std::string::npos;
  }
  return false;
}

// Items: fixed "id" (int64), ragged "tok" (int64, group "seq": token t of item i is
// i * 100000 + t) and "w" (float32 pairs, same group).
ConfigValue ArenaConfig(int64_t capacity, int64_t bytes, int64_t max_times = 0) {
  ConfigValue extra = ConfigValue::MakeMap();
  ConfigValue ragged = ConfigValue::MakeMap();
  ragged.Set("bytes", ConfigValue::Int(bytes));
  ragged.Set("groups", ConfigValue::MakeList({ConfigValue::String("seq")}));
  ragged.Set("fields", ConfigValue::MakeList({
      ConfigValue::MakeList({ConfigValue::String("tok"), ConfigValue::String("int64"), ConfigValue::MakeList(),
                             ConfigValue::String("seq")}),
      ConfigValue::MakeList({ConfigValue::String("w"), ConfigValue::String("float32"),
                             ConfigValue::MakeList({ConfigValue::Int(2)}), ConfigValue::String("seq")})}));
  extra.Set("ragged", ragged);
  if (max_times > 0) extra.Set("max_times_sampled", ConfigValue::Int(max_times));
  return reverie_test::TableConfig(capacity, {FieldSpec{"id", DType::kInt64, {}}},
                                   reverie_test::conc::UniformSampling(), 11, {}, extra);
}

int64_t Block(int64_t len) { return std::max<int64_t>(8, len * 8 + (len * 8 + 7) / 8 * 8); }

// Writes items ids[i] with lengths lens[i] in one Extend.
int64_t Write(Table& t, const std::vector<int64_t>& ids, const std::vector<int64_t>& lens) {
  std::vector<int64_t> tok;
  std::vector<float> w;
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t k = 0; k < lens[i]; ++k) {
      tok.push_back(ids[i] * 100000 + k);
      w.push_back(static_cast<float>(ids[i]));
      w.push_back(static_cast<float>(k));
    }
  }
  const auto n = static_cast<int64_t>(ids.size());
  std::vector<FieldInput> in = {MakeInput("id", ids.data(), DType::kInt64, {}, n),
                                MakeInput("tok", tok.data(), DType::kInt64, {}, static_cast<int64_t>(tok.size())),
                                MakeInput("w", w.data(), DType::kFloat32, {2}, static_cast<int64_t>(tok.size()))};
  in[1].lengths = lens.data();
  in[1].num_lengths = n;
  in[2].lengths = lens.data();
  in[2].num_lengths = n;
  return t.Extend(in.data(), in.size());
}

class VectorSink final : public RaggedSink {
 public:
  uint8_t* Allocate(int output, DType dtype, const int64_t* shape, int ndim) override {
    size_t bytes = DTypeSize(dtype);
    for (int d = 0; d < ndim; ++d) bytes *= static_cast<size_t>(shape[d]);
    if (outputs.size() <= static_cast<size_t>(output)) outputs.resize(static_cast<size_t>(output) + 1);
    outputs[static_cast<size_t>(output)].assign(bytes + 8, 0);
    return outputs[static_cast<size_t>(output)].data();
  }
  template <typename T>
  const T* As(int output) const {
    return reinterpret_cast<const T*>(outputs[static_cast<size_t>(output)].data());
  }
  std::vector<std::vector<uint8_t>> outputs;
};

RaggedLayout Layout(bool padded) {
  RaggedLayout l;
  l.padded = padded;
  l.left = {0};
  l.pad = {std::vector<uint8_t>(8, 0xff), std::vector<uint8_t>(4, 0)};
  return l;
}

// Samples n items packed and checks every token against its item's id.
void SampleAndCheck(Table& t, int64_t n, bool padded, std::atomic<int64_t>* bad) {
  std::vector<int64_t> ids(static_cast<size_t>(n)), keys(static_cast<size_t>(n)), lens(static_cast<size_t>(n));
  uint8_t* out[] = {reinterpret_cast<uint8_t*>(ids.data())};
  VectorSink sink;
  const RaggedLayout layout = Layout(padded);
  const int64_t got = t.SampleRagged(n, out, keys.data(), nullptr, nullptr, layout, lens.data(), sink);
  const int64_t* tok = sink.As<int64_t>(0);
  const float* w = sink.As<float>(1);
  const int32_t* cu = sink.As<int32_t>(2);
  int64_t width = 0;
  for (int64_t i = 0; i < got; ++i) width = std::max(width, lens[static_cast<size_t>(i)]);
  for (int64_t i = 0; i < got; ++i) {
    const int64_t start = padded ? i * width : cu[i];
    if (!padded && cu[i + 1] - cu[i] != lens[static_cast<size_t>(i)]) bad->fetch_add(1);
    for (int64_t k = 0; k < lens[static_cast<size_t>(i)]; ++k) {
      const int64_t at = start + k;
      if (tok[at] != ids[static_cast<size_t>(i)] * 100000 + k || w[2 * at] != static_cast<float>(ids[static_cast<size_t>(i)]) ||
          w[2 * at + 1] != static_cast<float>(k)) {
        bad->fetch_add(1);
        break;
      }
    }
    if (padded) {
      for (int64_t k = lens[static_cast<size_t>(i)]; k < width; ++k) {
        if (tok[i * width + k] != -1) bad->fetch_add(1);
      }
    }
  }
}

}  // namespace

TEST(ArenaEvictsWholeItemsAndAccountsExactly) {
  std::mt19937_64 rng(3);
  const int64_t bytes = 4096;
  Table t(ArenaConfig(64, bytes), {});
  int64_t next = 0;
  for (int round = 0; round < 300; ++round) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 4);
    std::vector<int64_t> ids, lens;
    for (int64_t i = 0; i < n; ++i) {
      ids.push_back(next++);
      lens.push_back(static_cast<int64_t>(rng() % 120));
    }
    CHECK(Write(t, ids, lens) == n);
    const TokenArena& arena = *t.arena();
    CHECK(arena.used_bytes() <= bytes);
    // The held items are the newest ones, whole, and their bytes are what the arena counts.
    const std::vector<int64_t> keys = t.StoredKeys();
    std::vector<int64_t> got(keys.size());
    uint8_t* out[] = {reinterpret_cast<uint8_t*>(got.data())};
    t.Get(keys.data(), static_cast<int64_t>(keys.size()), out);
    int64_t held = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      int64_t offset = 0, len = 0, position = 0;
      CHECK(arena.Handle(t.codec().Slot(keys[i]), &offset, &len, &position));
      held += Block(len);
      if (i > 0) CHECK(got[i] > got[i - 1]);  // oldest first, in insertion order
    }
    CHECK(held == arena.held_bytes());
    CHECK(got.back() == next - 1);  // the newest is always held
  }
  CHECK(t.arena()->evicted_items() > 0);
}

TEST(ArenaPackedAndPaddedCopies) {
  Table t(ArenaConfig(16, 1 << 14), {});
  CHECK(Write(t, {0, 1, 2}, {3, 0, 5}) == 3);
  const std::vector<int64_t> keys = t.StoredKeys();
  std::vector<int64_t> ids(3), lens(3);
  uint8_t* out[] = {reinterpret_cast<uint8_t*>(ids.data())};
  VectorSink packed;
  RaggedLayout layout = Layout(false);
  layout.multiple = 5;
  t.GetRagged(keys.data(), 3, out, nullptr, layout, lens.data(), packed);
  const int32_t* cu = packed.As<int32_t>(2);
  // 8 tokens padded to 10: the 2 pad tokens are one more cu_seqlens entry.
  CHECK(cu[0] == 0 && cu[1] == 3 && cu[2] == 3 && cu[3] == 8 && cu[4] == 10);
  const int64_t* pos = packed.As<int64_t>(3);
  CHECK(pos[0] == 0 && pos[2] == 2 && pos[3] == 0 && pos[7] == 4 && pos[8] == 0 && pos[9] == 1);
  CHECK(packed.As<int64_t>(0)[8] == -1 && packed.As<int64_t>(0)[9] == -1);
  VectorSink padded;
  t.GetRagged(keys.data(), 3, out, nullptr, Layout(true), lens.data(), padded);
  const int64_t* tok = padded.As<int64_t>(0);
  const int64_t* mask = padded.As<int64_t>(3);
  CHECK(tok[0] == 0 && tok[2] == 2 && tok[3] == -1 && tok[5] == -1 && tok[10] == 200000 && tok[14] == 200004);
  CHECK(mask[0] == 1 && mask[3] == 0 && mask[5] == 0 && mask[14] == 1);
}

TEST(ArenaRefusalsChangeNothing) {
  Table t(ArenaConfig(8, 1024), {});
  CHECK(Write(t, {0, 1}, {3, 4}) == 2);
  const int64_t used = t.arena()->used_bytes(), held = t.arena()->held_bytes();
  // Too large for the whole arena.
  CHECK(ThrowsWith([&] { Write(t, {2, 3}, {2, 100}); }, "more than the whole arena"));
  // Lengths that differ inside the group.
  std::vector<int64_t> ids = {5}, tok = {1, 2}, l1 = {2}, l2 = {1};
  std::vector<float> w = {0, 0};
  std::vector<FieldInput> in = {MakeInput("id", ids.data(), DType::kInt64, {}, 1),
                                MakeInput("tok", tok.data(), DType::kInt64, {}, 2),
                                MakeInput("w", w.data(), DType::kFloat32, {2}, 1)};
  in[1].lengths = l1.data();
  in[1].num_lengths = 1;
  in[2].lengths = l2.data();
  in[2].num_lengths = 1;
  CHECK(ThrowsWith([&] { t.Extend(in.data(), in.size()); }, "share their lengths"));
  CHECK(t.size() == 2 && t.arena()->used_bytes() == used && t.arena()->held_bytes() == held);
  CHECK(ThrowsWith([&] { t.Pin(nullptr, 0, true); }, "cannot pin"));
}

TEST(ArenaMaxTimesSampledCopiesItemsItRemoves) {
  Table t(ArenaConfig(32, 1 << 14, /*max_times=*/1), {});
  CHECK(Write(t, {0, 1, 2, 3}, {5, 6, 7, 8}) == 4);
  std::atomic<int64_t> bad{0};
  SampleAndCheck(t, 4, false, &bad);
  CHECK(bad.load() == 0);
  CHECK(t.size() == 0 && t.arena()->held_bytes() == 0);
}

TEST(ArenaWritersRaceSamplers) {
  // A small arena turns over hundreds of times while two samplers copy: every sampled item
  // must be whole and its own.
  Table t(ArenaConfig(256, 65536), {});
  CHECK(Write(t, {0}, {10}) == 1);
  const int64_t rounds = 3000 / reverie_test::conc::kWorkDivisor;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> bad{0}, samples{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(static_cast<uint64_t>(w) + 1);
      for (int64_t r = 0; r < rounds; ++r) {
        const int64_t n = 1 + static_cast<int64_t>(rng() % 3);
        std::vector<int64_t> ids, lens;
        for (int64_t i = 0; i < n; ++i) {
          ids.push_back((w + 1) * 1000000 + r * 4 + i);
          lens.push_back(1 + static_cast<int64_t>(rng() % 200));
        }
        Write(t, ids, lens);
      }
    });
  }
  for (int s = 0; s < 2; ++s) {
    threads.emplace_back([&, s] {
      while (!stop.load()) {
        SampleAndCheck(t, 8, s == 1, &bad);
        samples.fetch_add(1);
      }
    });
  }
  threads[0].join();
  threads[1].join();
  stop.store(true);
  threads[2].join();
  threads[3].join();
  CHECK(bad.load() == 0);
  CHECK(samples.load() > 0);
  CHECK(t.arena()->used_bytes() <= 65536);
  CHECK(t.arena()->evicted_items() > 100);
}

TEST(ArenaWithAKeyedArchiveKeepsItsIndexThroughEvictions) {
  // A keyed archive of trajectories (key "id" = the prompt, score "score"): the byte bound
  // evicts entries; the archive's index and heap must follow (every held item found by its
  // key, no key twice).
  ConfigValue extra = ConfigValue::MakeMap();
  ConfigValue ragged = ConfigValue::MakeMap();
  ragged.Set("bytes", ConfigValue::Int(2048));
  ragged.Set("groups", ConfigValue::MakeList({ConfigValue::String("seq")}));
  ragged.Set("fields", ConfigValue::MakeList({ConfigValue::MakeList(
      {ConfigValue::String("tok"), ConfigValue::String("int64"), ConfigValue::MakeList(), ConfigValue::String("seq")})}));
  extra.Set("ragged", ragged);
  ConfigValue writer = ConfigValue::MakeMap();
  writer.Set("kind", ConfigValue::String("keyed_archive"));
  writer.Set("key", ConfigValue::String("id"));
  writer.Set("score", ConfigValue::String("score"));
  extra.Set("writer", writer);
  Table t(reverie_test::TableConfig(6, {FieldSpec{"id", DType::kInt64, {}}, FieldSpec{"score", DType::kFloat64, {}}},
                                    reverie_test::conc::UniformSampling(), 3, {}, extra),
          {});
  std::mt19937_64 rng(9);
  for (int round = 0; round < 400; ++round) {
    std::vector<int64_t> id = {static_cast<int64_t>(rng() % 9)}, len = {static_cast<int64_t>(rng() % 60)};
    std::vector<double> score = {static_cast<double>(rng() % 5)};
    std::vector<int64_t> tok(static_cast<size_t>(len[0]), id[0]);
    std::vector<FieldInput> in = {MakeInput("id", id.data(), DType::kInt64, {}, 1),
                                  MakeInput("score", score.data(), DType::kFloat64, {}, 1),
                                  MakeInput("tok", tok.data(), DType::kInt64, {}, len[0])};
    in[2].lengths = len.data();
    in[2].num_lengths = 1;
    t.Extend(in.data(), in.size());
    const std::vector<int64_t> keys = t.StoredKeys();
    std::vector<int64_t> ids(keys.size());
    std::vector<double> scores(keys.size());
    uint8_t* out[] = {reinterpret_cast<uint8_t*>(ids.data()), reinterpret_cast<uint8_t*>(scores.data())};
    t.Get(keys.data(), static_cast<int64_t>(keys.size()), out);
    std::vector<int64_t> found(keys.size());
    t.Lookup(ids.data(), static_cast<int64_t>(ids.size()), found.data());
    for (size_t i = 0; i < keys.size(); ++i) CHECK(found[i] == keys[i]);
    std::vector<int64_t> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
    CHECK(t.arena()->used_bytes() <= 2048);
  }
  CHECK(t.arena()->evicted_items() > 0);
}
