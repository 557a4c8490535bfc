// Tests of the continual-learning parts (issue 14): in-place field updates (with samplers
// racing an updater), the class-balanced reservoir, ... References are stated here, apart
// from the core: plain counting and a model of each rule.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "buffer_helpers.h"
#include "harness.h"
#include "reverie/table.h"

using namespace reverie;
using reverie_test::SamplerConfig;
using reverie_test::TableConfig;
using reverie_test::conc::FinishWithin;
using reverie_test::conc::MakeInput;

namespace {

constexpr int64_t kWidth = 64;  // floats per row of the race tests: several cache lines

std::vector<FieldSpec> RowSpec() {
  return {FieldSpec{"id", DType::kInt64, {}}, FieldSpec{"v", DType::kFloat32, {kWidth}}};
}

// Fills a table of RowSpec with ids 0..n-1, every element of v = 0.
void Fill(Table& t, int64_t n) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = i;
  std::vector<float> v(static_cast<size_t>(n * kWidth), 0.0f);
  const std::array<FieldInput, 2> in = {MakeInput("id", ids.data(), DType::kInt64, {}, n),
                                        MakeInput("v", v.data(), DType::kFloat32, {kWidth}, n)};
  t.Extend(in.data(), in.size());
}

struct Rows {
  std::vector<int64_t> id;
  std::vector<float> v;
  explicit Rows(int64_t n) : id(static_cast<size_t>(n)), v(static_cast<size_t>(n * kWidth)) {}
  std::array<uint8_t*, 2> out() {
    return {reinterpret_cast<uint8_t*>(id.data()), reinterpret_cast<uint8_t*>(v.data())};
  }
  bool Whole(int64_t i) const {  // every element of row i one value
    const float* r = v.data() + i * kWidth;
    return std::all_of(r, r + kWidth, [&](float x) { return x == r[0]; });
  }
};

}  // namespace

TEST(UpdateFieldsOverwritesOnlyTheGivenFieldOfHeldItems) {
  Table t(TableConfig(8, RowSpec(), SamplerConfig{}, 3), {});
  Fill(t, 8);
  const std::vector<int64_t> keys = t.StoredKeys();
  std::vector<float> v(static_cast<size_t>(3 * kWidth));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i / kWidth + 1);
  const FieldInput in = MakeInput("v", v.data(), DType::kFloat32, {kWidth}, 3);
  const std::vector<int64_t> three = {keys[1], keys[5], keys[1]};  // key 1 twice: the last wins
  CHECK(t.UpdateFields(three.data(), 3, &in, 1) == 0);
  Rows got(8);
  auto out = got.out();
  t.Get(keys.data(), 8, out.data());
  for (int64_t i = 0; i < 8; ++i) {
    CHECK(got.id[static_cast<size_t>(i)] == i);
    const float want = i == 1 ? 3.0f : i == 5 ? 2.0f : 0.0f;
    CHECK(got.v[static_cast<size_t>(i * kWidth)] == want && got.Whole(i));
  }
  // One item's shape for every key; a stale key skipped and counted.
  Fill(t, 1);  // slot 0 written again: keys[0] is stale
  const float one[kWidth] = {7.0f};
  const FieldInput all = MakeInput("v", one, DType::kFloat32, {kWidth}, -1);
  const std::vector<int64_t> two = {keys[0], keys[2]};
  CHECK(t.UpdateFields(two.data(), 2, &all, 1) == 1);
  CHECK(t.stale_updates() == 1);
  t.Get(&keys[2], 1, out.data());
  CHECK(got.v[0] == 7.0f && got.v[1] == 0.0f);
}

TEST(UpdateFieldsRefusesBadInputAndChangesNothing) {
  Table t(TableConfig(8, RowSpec(), SamplerConfig{}, 3), {});
  Fill(t, 8);
  const std::vector<int64_t> keys = t.StoredKeys();
  std::vector<float> v(static_cast<size_t>(2 * kWidth), 5.0f);
  const FieldInput good = MakeInput("v", v.data(), DType::kFloat32, {kWidth}, 2);
  const FieldInput wrong_shape = MakeInput("v", v.data(), DType::kFloat32, {kWidth / 2}, 4);
  const FieldInput wrong_type = MakeInput("v", v.data(), DType::kInt32, {kWidth}, 2);
  const FieldInput unknown = MakeInput("w", v.data(), DType::kFloat32, {kWidth}, 2);
  const std::vector<int64_t> bad_key = {keys[0], int64_t{1} << 30};
  CHECK_THROWS(t.UpdateFields(keys.data(), 2, &wrong_shape, 1), std::invalid_argument);
  CHECK_THROWS(t.UpdateFields(keys.data(), 2, &wrong_type, 1), std::invalid_argument);
  CHECK_THROWS(t.UpdateFields(keys.data(), 2, &unknown, 1), std::invalid_argument);
  CHECK_THROWS(t.UpdateFields(bad_key.data(), 2, &good, 1), std::out_of_range);
  const std::array<FieldInput, 2> twice = {good, good};
  CHECK_THROWS(t.UpdateFields(keys.data(), 2, twice.data(), 2), std::invalid_argument);
  Rows got(8);
  auto out = got.out();
  t.Get(keys.data(), 8, out.data());
  for (float x : got.v) CHECK(x == 0.0f);
  CHECK(t.stale_updates() == 0);
}

// Samplers and Get racing an updater that rewrites whole rows: no copy mixes two updates.
TEST(UpdateFieldsIsNeverSeenHalfDone) {
  constexpr int64_t kCap = 256;
  Table t(TableConfig(kCap, RowSpec(), SamplerConfig{}, 9), {});
  Fill(t, kCap);
  const std::vector<int64_t> keys = t.StoredKeys();
  std::atomic<bool> stop{false};
  std::atomic<int64_t> torn{0}, updates{0};
  FinishWithin("update-fields race", 60, [&] {
    std::thread updater([&] {
      float value = 0.0f;
      std::vector<float> row(kWidth);
      while (!stop.load()) {
        value += 1.0f;
        std::fill(row.begin(), row.end(), value);
        const FieldInput in = MakeInput("v", row.data(), DType::kFloat32, {kWidth}, -1);
        t.UpdateFields(keys.data(), kCap, &in, 1);
        updates.fetch_add(1);
      }
    });
    std::vector<std::thread> readers;
    for (int r = 0; r < 2; ++r) {
      readers.emplace_back([&, r] {
        Rows got(64);
        std::vector<int64_t> drawn(64);
        auto out = got.out();
        for (int i = 0; i < 300; ++i) {
          if ((i + r) % 2 == 0) {
            t.Sample(64, out.data(), drawn.data(), nullptr);
          } else {
            t.Get(keys.data() + (i % 4) * 64, 64, out.data());
          }
          for (int64_t j = 0; j < 64; ++j) torn.fetch_add(got.Whole(j) ? 0 : 1);
        }
      });
    }
    for (auto& th : readers) th.join();
    stop.store(true);
    updater.join();
  });
  CHECK(torn.load() == 0);
  CHECK(updates.load() > 0);
  CHECK(t.stale_updates() == 0);
}
