// C++ tests of the core (run by ctest; also built with sanitizers in CI).
// `reverie_tests --bench-tree` instead times the tree (README, "Design notes").
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "buffer_helpers.h"
#include "harness.h"
#include "reverie/dtype.h"
#include "reverie/philox.h"
#include "reverie/prioritized_selector.h"
#include "reverie/table.h"
#include "reverie/sum_tree.h"
#include "reverie/thread_pool.h"
#include "reverie/uniform_selector.h"

#include <sys/wait.h>
#include <unistd.h>

using namespace reverie;
using reverie_test::TestTable;
using reverie_test::conc::TreeAgreesWithLeaves;
using reverie_test::conc::UniformSampling;

namespace {

// Brute force: the leaf whose prefix interval holds u.
int64_t BruteDescend(const std::vector<uint64_t>& leaves, uint64_t u) {
  uint64_t prefix = 0;
  for (size_t i = 0; i < leaves.size(); ++i) {
    prefix += leaves[i];
    if (u < prefix) return static_cast<int64_t>(i);
  }
  return -1;
}

uint64_t BruteMinPositive(const std::vector<uint64_t>& leaves) {
  uint64_t best = 0;
  for (uint64_t v : leaves) {
    if (v != 0 && (best == 0 || v < best)) best = v;
  }
  return best;
}

// A whole batch in one piece.
void SampleAll(const Selector& sampler, const SampleRequest& request, int64_t* slots, float* weights) {
  sampler.Sample(request, 0, request.batch, slots, weights);
}

reverie_test::SamplerConfig Per(PrioritizedConfig c) {
  return reverie_test::conc::PrioritizedSampling(c.alpha, c.beta, c.eps);
}

std::vector<FieldSpec> TwoFieldSpec() {
  return {FieldSpec{"id", DType::kInt64, {}}, FieldSpec{"obs", DType::kFloat32, {3}}};
}

FieldInput Scalar(const char* name, const int64_t* v) {
  FieldInput in;
  in.name = name;
  in.value.data = v;
  in.value.dtype = DType::kInt64;
  in.value.ndim = 0;
  return in;
}

FieldInput Vec3(const char* name, const float* v) {
  FieldInput in;
  in.name = name;
  in.value.data = v;
  in.value.dtype = DType::kFloat32;
  in.value.ndim = 1;
  in.value.shape[0] = 3;
  return in;
}

void AddItem(TestTable& buf, int64_t id) {
  const float obs[3] = {static_cast<float>(id), static_cast<float>(id) + 0.5f, -static_cast<float>(id)};
  FieldInput in[2] = {Scalar("id", &id), Vec3("obs", obs)};
  buf.Add(in, 2);
}

struct Drawn {
  std::vector<int64_t> ids, keys;
  std::vector<float> obs, weights;
};

Drawn Draw(TestTable& buf, int64_t batch) {
  Drawn d;
  d.ids.resize(static_cast<size_t>(batch));
  d.obs.resize(static_cast<size_t>(batch) * 3);
  d.keys.resize(static_cast<size_t>(batch));
  d.weights.resize(static_cast<size_t>(batch));
  uint8_t* out[2] = {reinterpret_cast<uint8_t*>(d.ids.data()), reinterpret_cast<uint8_t*>(d.obs.data())};
  buf.Sample(batch, out, d.keys.data(), d.weights.data());
  return d;
}

}  // namespace

TEST(LayoutShapes) {
  for (int64_t n : {1, 2, 7, 8, 9, 63, 64, 65, 1000, 1000000}) {
    const TreeLayout l = MakeTreeLayout(n);
    CHECK(l.count[0] == 1);
    CHECK(l.count[l.depth] == n);
    CHECK(l.depth >= 1);
    for (int d = 0; d <= l.depth; ++d) CHECK(l.offset[d] % kTreeFanout == 0);
    for (int d = 0; d < l.depth; ++d) CHECK(l.count[d] == (l.count[d + 1] + 7) / 8);
  }
  CHECK_THROWS(MakeTreeLayout(0), std::invalid_argument);
}

TEST(PickChildSkipsZeros) {
  const uint64_t children[8] = {0, 3, 0, 0, 5, 0, 1, 0};
  std::vector<int> hits(8, 0);
  for (uint64_t u0 = 0; u0 < 9; ++u0) {
    uint64_t u = u0;
    const int c = PickChild(children, &u);
    ++hits[static_cast<size_t>(c)];
    CHECK(u < children[c]);
  }
  CHECK(hits[0] == 0 && hits[2] == 0 && hits[3] == 0 && hits[5] == 0 && hits[7] == 0);
  CHECK(hits[1] == 3 && hits[4] == 5 && hits[6] == 1);
}

TEST(TreeMatchesBruteForceAndRebuild) {
  std::mt19937_64 rng(7);
  for (int64_t n : {1, 5, 8, 9, 100, 777}) {
    SumTree tree(n);
    std::vector<uint64_t> leaves(static_cast<size_t>(n), 0);
    for (int round = 0; round < 300; ++round) {
      if (round % 3 == 0) {
        const int64_t first = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
        const int64_t count = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(n - first));
        const uint64_t v = rng() % 1000;
        tree.FillRange(first, count, v);
        std::fill(leaves.begin() + first, leaves.begin() + first + count, v);
      } else {
        std::vector<int64_t> idx(4);
        std::vector<uint64_t> val(4);
        for (int k = 0; k < 4; ++k) {
          idx[k] = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
          val[k] = rng() % 4 == 0 ? 0 : rng() % (uint64_t{1} << 40);
        }
        tree.SetLeaves(idx.data(), val.data(), 4);
        for (int k = 0; k < 4; ++k) leaves[static_cast<size_t>(idx[k])] = val[k];  // last wins
      }
      uint64_t total = 0;
      for (uint64_t v : leaves) total += v;
      CHECK(tree.total() == total);
      CHECK(tree.min_positive() == BruteMinPositive(leaves));
      if (total > 0) {
        std::vector<uint64_t> us(16);
        std::vector<int64_t> got(16);
        for (auto& u : us) u = rng() % total;
        tree.DescendBatch(us.data(), got.data(), 16);
        for (int k = 0; k < 16; ++k) CHECK(got[k] == BruteDescend(leaves, us[k]));
        for (int k = 0; k < 16; ++k) CHECK(Descend(tree.sums(), tree.layout(), us[k]) == got[k]);
      }
    }
    CHECK(TreeAgreesWithLeaves(tree));
    // No drift: after all those updates the tree equals a rebuild bit for bit.
    std::vector<uint64_t> before(tree.sums(), tree.sums() + tree.layout().total_nodes);
    tree.Rebuild();
    CHECK(std::equal(before.begin(), before.end(), tree.sums()));
  }
}

TEST(LargeBatchUpdatesMatchSerialSemantics) {
  // Batches large enough for the two-thread update (split by subtree), with repeated
  // indices: the tree must equal the brute force (last write wins) and a rebuild.
  std::mt19937_64 rng(11);
  for (int64_t n : {777, 5000, 70000}) {
    SumTree tree(n);
    std::vector<uint64_t> leaves(static_cast<size_t>(n), 0);
    for (int round = 0; round < 20; ++round) {
      const int64_t batch = 128 + static_cast<int64_t>(rng() % 300);
      std::vector<int64_t> idx(static_cast<size_t>(batch));
      std::vector<uint64_t> val(static_cast<size_t>(batch));
      for (int64_t k = 0; k < batch; ++k) {
        idx[k] = k % 5 == 0 && k > 0 ? idx[k - 1] : static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
        val[k] = rng() % 3 == 0 ? 0 : rng() % (uint64_t{1} << 40);
      }
      tree.SetLeaves(idx.data(), val.data(), batch);
      for (int64_t k = 0; k < batch; ++k) leaves[static_cast<size_t>(idx[k])] = val[k];
      uint64_t total = 0;
      for (uint64_t v : leaves) total += v;
      CHECK(tree.total() == total);
      CHECK(tree.min_positive() == BruteMinPositive(leaves));
      for (int64_t i = 0; i < n; i += 97) CHECK(tree.leaf(i) == leaves[static_cast<size_t>(i)]);
    }
    CHECK(TreeAgreesWithLeaves(tree));
    std::vector<uint64_t> before(tree.sums(), tree.sums() + tree.layout().total_nodes);
    tree.Rebuild();
    CHECK(std::equal(before.begin(), before.end(), tree.sums()));
  }
}

TEST(PrioritizedDistributionMatchesPriorities) {
  // 1e6 draws from 50 leaves with priorities 1..50 (alpha=1, eps=0); every count within
  // 5 standard deviations of its expectation, and the chi-square statistic below the
  // p=1e-6 critical value for 49 degrees of freedom (~103).
  const int64_t n = 50;
  PrioritizedSelector sampler(n, PrioritizedConfig{1.0, 0.0, 0.0});
  sampler.OnInsert(0, n);
  std::vector<int64_t> slots(static_cast<size_t>(n));
  std::vector<double> pr(static_cast<size_t>(n));
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    slots[i] = i;
    pr[i] = static_cast<double>(i + 1);
    total += pr[i];
  }
  sampler.UpdatePriorities(slots.data(), pr.data(), n);
  std::vector<int64_t> counts(static_cast<size_t>(n), 0);
  const int64_t batch = 1000;
  std::vector<int64_t> out(batch);
  for (uint64_t call = 0; call < 1000; ++call) {
    SampleAll(sampler, SampleRequest{123, call, n, batch}, out.data(), nullptr);
    for (int64_t s : out) ++counts[static_cast<size_t>(s)];
  }
  double chi2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double expected = 1e6 * pr[i] / total;
    const double diff = static_cast<double>(counts[i]) - expected;
    chi2 += diff * diff / expected;
    CHECK(std::fabs(diff) < 5 * std::sqrt(expected));
  }
  CHECK(chi2 < 103.0);
}

TEST(ZeroNeverSampledTinyAlwaysCan) {
  const int64_t n = 1000;
  PrioritizedSelector sampler(n, PrioritizedConfig{1.0, 1.0, 0.0});
  sampler.OnInsert(0, n);
  std::vector<int64_t> slots(n);
  std::vector<double> pr(n, 0.0);
  for (int64_t i = 0; i < n; ++i) slots[i] = i;
  pr[10] = 1e300;   // forces a rescale: everything else is tiny next to it
  pr[500] = 1e-300;  // positive: rounds up to one unit, still samplable
  sampler.UpdatePriorities(slots.data(), pr.data(), n);
  CHECK(sampler.tree().leaf(500) >= 1);
  for (int64_t i = 0; i < n; ++i) {
    if (i != 10 && i != 500) CHECK(sampler.tree().leaf(i) == 0);
  }
  std::vector<int64_t> out(256);
  std::vector<float> w(256);
  SampleAll(sampler, SampleRequest{1, 0, n, 256}, out.data(), w.data());
  for (int64_t s : out) CHECK(s == 10 || s == 500);
  // Alone, the tiny one is all that is drawn.
  const int64_t ten = 10;
  const double zero = 0.0;
  sampler.UpdatePriorities(&ten, &zero, 1);
  SampleAll(sampler, SampleRequest{1, 1, n, 64}, out.data(), w.data());
  for (int i = 0; i < 64; ++i) CHECK(out[i] == 500 && w[i] == 1.0f);
  // All zero: sampling is refused cleanly.
  const int64_t five_hundred = 500;
  sampler.UpdatePriorities(&five_hundred, &zero, 1);
  CHECK_THROWS(sampler.ValidateSample(SampleRequest{1, 2, n, 4}), std::invalid_argument);
}

TEST(RescaleKeepsRatios) {
  const int64_t n = 4;
  PrioritizedSelector sampler(n, PrioritizedConfig{1.0, 0.0, 0.0});
  sampler.OnInsert(0, n);
  const int64_t slots[4] = {0, 1, 2, 3};
  const double pr[4] = {1.0, 2.0, 3.0, 4.0};
  sampler.UpdatePriorities(slots, pr, 4);
  const int64_t big_slot = 3;
  const double big = 1e12;
  sampler.UpdatePriorities(&big_slot, &big, 1);
  CHECK(std::fabs(sampler.StoredPriority(1) / sampler.StoredPriority(0) - 2.0) < 1e-9);
  CHECK(std::fabs(sampler.StoredPriority(3) / 1e12 - 1.0) < 1e-9);
}

TEST(RescaleInterruptedByADeadWriterIsFinishedByRepair) {
  // A writer killed halfway through a rescale leaves half the leaves shifted; the next lock
  // holder's Repair finishes the shift from the recorded progress and adopts the new scale.
  const int64_t n = 64;
  PriorityState state;
  std::vector<uint64_t> sums(SumTree::SumsBytes(n) / 8), mins(SumTree::MinsBytes(n) / 8 + 1);
  PrioritizedSelector sampler(n, PrioritizedConfig{1.0, 0.0, 0.0}, &state, sums.data(), mins.data(), true);
  sampler.OnInsert(0, n);
  std::vector<int64_t> slots(n);
  std::vector<double> pr(n);
  for (int64_t i = 0; i < n; ++i) {
    slots[i] = i;
    pr[i] = static_cast<double>(i + 1);
  }
  sampler.UpdatePriorities(slots.data(), pr.data(), n);
  const int old_scale = state.scale_exp.load();
  // What Reserve records before it shifts, then a death after the first half of the leaves.
  state.rescale_target.store(old_scale - 5);
  state.rescale_shift.store(5);
  state.rescale_next.store(n / 2);
  const TreeLayout& layout = sampler.tree().layout();
  for (int64_t i = 0; i < n / 2; ++i) sums[layout.offset[layout.depth] + i] >>= 5;
  state.epoch.fetch_add(1);  // odd: the dead writer was inside WithEpoch
  sampler.Repair();
  CHECK(state.rescale_shift.load() == 0 && state.scale_exp.load() == old_scale - 5);
  CHECK((state.epoch.load() & 1) == 0);
  for (int64_t i = 0; i < n; ++i) CHECK(std::fabs(sampler.StoredPriority(i) - pr[i]) < 1e-6 * pr[i]);
  CHECK(TreeAgreesWithLeaves(sampler.tree()));
}

TEST(ImportanceWeights) {
  const int64_t n = 3;
  PrioritizedSelector sampler(n, PrioritizedConfig{1.0, 0.5, 0.0});
  sampler.OnInsert(0, n);
  const int64_t slots[3] = {0, 1, 2};
  const double pr[3] = {1.0, 4.0, 16.0};
  sampler.UpdatePriorities(slots, pr, 3);
  std::vector<int64_t> out(30);
  std::vector<float> w(30);
  SampleAll(sampler, SampleRequest{9, 0, n, 30}, out.data(), w.data());
  for (int i = 0; i < 30; ++i) {
    const double expected = std::pow(1.0 / pr[out[i]], 0.5);  // (p_min / p_i)^beta
    CHECK(std::fabs(w[i] - expected) < 1e-6);
  }
}

TEST(EmptyAndBadRequests) {
  PrioritizedSelector p(10, PrioritizedConfig{});
  CHECK_THROWS(p.ValidateSample(SampleRequest{0, 0, 0, 4}), std::invalid_argument);
  UniformSelector u(false, false, 1 << 20);
  CHECK_THROWS(u.ValidateSample(SampleRequest{0, 0, 0, 4}), std::invalid_argument);
  CHECK_THROWS(u.ValidateSample(SampleRequest{0, 0, 3, 4}), std::invalid_argument);
  CHECK_THROWS(PrioritizedSelector(0, PrioritizedConfig{}), std::invalid_argument);
  CHECK_THROWS(PrioritizedSelector(5, (PrioritizedConfig{-1.0, 0.4, 0.0})), std::invalid_argument);
  CHECK_THROWS(PrioritizedSelector(5, (PrioritizedConfig{0.6, NAN, 0.0})), std::invalid_argument);
  const double bad[2] = {1.0, NAN};
  CHECK_THROWS(p.ValidatePriorities(bad, 2), std::invalid_argument);
  const double neg = -1.0;
  CHECK_THROWS(p.ValidatePriorities(&neg, 1), std::invalid_argument);
}

TEST(PiecesEqualWholeBatch) {
  // Filling a batch in pieces (as the thread pool does) gives the same draws as one piece.
  PrioritizedSelector p(1000, PrioritizedConfig{});
  p.OnInsert(0, 1000);
  std::vector<int64_t> slots(1000);
  std::vector<double> pr(1000);
  for (int64_t i = 0; i < 1000; ++i) {
    slots[i] = i;
    pr[i] = 0.1 + static_cast<double>(i % 17);
  }
  p.UpdatePriorities(slots.data(), pr.data(), 1000);
  UniformSelector u(true, false, 1 << 20);
  for (const Selector* s : {static_cast<const Selector*>(&p), static_cast<const Selector*>(&u)}) {
    const SampleRequest req{77, 5, 1000, 300};
    std::vector<int64_t> whole(300), pieces(300);
    std::vector<float> ww(300), wp(300);
    SampleAll(*s, req, whole.data(), ww.data());
    s->Sample(req, 0, 7, pieces.data(), wp.data());
    s->Sample(req, 7, 160, pieces.data(), wp.data());
    s->Sample(req, 160, 300, pieces.data(), wp.data());
    CHECK(whole == pieces);
    if (s == &p) CHECK(ww == wp);
  }
}

TEST(UniformWithoutReplacementDistinct) {
  UniformSelector u(false, false, 1 << 20);
  std::vector<int64_t> out(50);
  for (uint64_t call = 0; call < 100; ++call) {
    SampleAll(u, SampleRequest{3, call, 50, 50}, out.data(), nullptr);
    std::vector<int64_t> sorted = out;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 50; ++i) CHECK(sorted[i] == i);
  }
}

TEST(RingStampsAndKeys) {
  std::atomic<uint64_t> stamps[5] = {};
  RingCounters counters;
  const KeyCodec codec(5, 0);
  Ring ring(5, stamps, &counters, codec);
  CHECK(codec.slot_bits == 3);
  CHECK(ring.Claim(12) == 0 && ring.claimed() == 12 && ring.size() == 0 && ring.range() == 5);
  const uint32_t pid = CurrentPid();
  Ring::Cursor c(ring, 0);
  for (int64_t n = 0; n < 12; ++n, c.Next()) {
    // Insertion n: slot n % 5, generation n / 5, key (generation << 3) | slot.
    CHECK(c.slot() == n % 5 && c.key() == ((n / 5) << 3 | (n % 5)));
    CHECK(ring.KeyOfInsertion(n) == c.key() && ring.InsertionOfKey(c.key()) == n);
    CHECK(ring.Acquire(c.key(), c.slot(), pid));
    CHECK(Stamp::IsWriting(ring.LoadStamp(c.slot())));
    ring.Publish(c.key(), c.slot());
  }
  ring.CountCommitted(12);
  CHECK(ring.size() == 5);
  // insertions 7..11 are stored in slots 2,3,4,0,1
  const int64_t k6 = codec.Key(1, 1), k7 = codec.Key(1, 2), k11 = codec.Key(2, 1), k12 = codec.Key(2, 2);
  CHECK(Stamp::KeyOf(ring.LoadStamp(2)) == k7 && Stamp::KeyOf(ring.LoadStamp(1)) == k11);
  CHECK(ring.Holds(k7) && !ring.Holds(k6) && !ring.Holds(k12));
  CHECK(ring.WasClaimed(k6) && ring.WasClaimed(k11) && !ring.WasClaimed(k12));
  // Keys that are no keys of this ring: a slot beyond the capacity, another shard, negative.
  CHECK(ring.InsertionOfKey(codec.Key(0, 5)) == -1 && !ring.WasClaimed(codec.Key(0, 6)));
  CHECK(ring.InsertionOfKey(KeyCodec(5, 1).Key(0, 1)) == -1 && ring.InsertionOfKey(-1) == -1);
  CHECK(!ring.Acquire(k6, 1, pid));  // a writer lapped by a newer item skips the slot
  CHECK(Stamp::KeyOf(ring.LoadStamp(1)) == k11);
}

TEST(StreamMajorKeysAndTheirInverse) {
  // 3 streams of 4 rows: insertion n is row (n / 3) % 4 of stream n % 3, generation n / 12.
  std::atomic<uint64_t> stamps[12] = {};
  RingCounters counters;
  const KeyCodec codec(12, 0);
  Ring ring(12, stamps, &counters, codec, 3);
  Ring::Cursor c(ring, 5);
  for (int64_t n = 5; n < 60; ++n, c.Next()) {
    const int64_t slot = (n % 3) * 4 + (n / 3) % 4;
    CHECK(c.slot() == slot && ring.SlotOfInsertion(n) == slot);
    CHECK(c.key() == codec.Key(n / 12, slot) && ring.InsertionOfKey(c.key()) == n);
  }
}

TEST(DeadWritersSlotIsTakenOver) {
  // A stamp left WRITING by a process that no longer exists is taken over, not waited on.
  std::atomic<uint64_t> stamps[2] = {};
  RingCounters counters;
  Ring ring(2, stamps, &counters, KeyCodec(2, 0));
  const pid_t child = fork();
  if (child == 0) _exit(0);
  int status = 0;
  waitpid(child, &status, 0);
  stamps[0].store(Stamp::Writing(static_cast<uint32_t>(child)));
  const int64_t key = ring.KeyOfInsertion(2);
  CHECK(ring.Acquire(key, 0, CurrentPid()));
  ring.Publish(key, 0);
  CHECK(ring.Holds(key));
}

TEST(BufferAddSampleEvict) {
  TestTable buf(4, TwoFieldSpec(), UniformSampling(), 42);
  for (int64_t id = 0; id < 6; ++id) AddItem(buf, id);
  CHECK(buf.size() == 4 && buf.written() == 6);
  const Drawn d = Draw(buf, 64);
  for (int i = 0; i < 64; ++i) {
    CHECK(d.ids[i] >= 2 && d.ids[i] <= 5);   // 0 and 1 were evicted
    CHECK(d.keys[i] == ((d.ids[i] / 4) << 2 | d.ids[i] % 4));  // (generation, slot)
    CHECK(d.obs[3 * i] == static_cast<float>(d.ids[i]));
    CHECK(d.obs[3 * i + 2] == -static_cast<float>(d.ids[i]));
  }
}

TEST(BufferSeededDeterminism) {
  auto make = [](uint64_t seed) {
    auto buf = std::make_unique<TestTable>(100, TwoFieldSpec(),
                                              Per(PrioritizedConfig{}), seed);
    for (int64_t id = 0; id < 150; ++id) AddItem(*buf, id);
    return buf;
  };
  auto a = make(5), b = make(5), c = make(6);
  for (int round = 0; round < 5; ++round) {
    const Drawn da = Draw(*a, 32), db = Draw(*b, 32), dc = Draw(*c, 32);
    CHECK(da.keys == db.keys && da.weights == db.weights);
    CHECK(da.keys != dc.keys);
    std::vector<double> pr(32, 0.5 + round);
    a->UpdatePriorities(da.keys.data(), pr.data(), 32);
    b->UpdatePriorities(db.keys.data(), pr.data(), 32);
  }
}

TEST(BufferBadInputChangesNothing) {
  TestTable buf(8, TwoFieldSpec(), Per(PrioritizedConfig{}), 1);
  for (int64_t id = 0; id < 5; ++id) AddItem(buf, id);
  const int64_t id = 9;
  const float obs[3] = {1, 2, 3};
  FieldInput missing[1] = {Scalar("id", &id)};
  CHECK_THROWS(buf.Add(missing, 1), std::invalid_argument);
  FieldInput unknown[3] = {Scalar("id", &id), Vec3("obs", obs), Scalar("nope", &id)};
  CHECK_THROWS(buf.Add(unknown, 3), std::invalid_argument);
  FieldInput wrong_type[2] = {Scalar("id", &id), Vec3("obs", obs)};
  wrong_type[1].value.dtype = DType::kFloat64;
  CHECK_THROWS(buf.Add(wrong_type, 2), reverie::TypeError);
  FieldInput wrong_shape[2] = {Scalar("id", &id), Vec3("obs", obs)};
  wrong_shape[1].value.shape[0] = 4;
  CHECK_THROWS(buf.Add(wrong_shape, 2), std::invalid_argument);
  const int64_t keys[2] = {1, 99};
  const double pr[2] = {1.0, 1.0};
  CHECK_THROWS(buf.UpdatePriorities(keys, pr, 2), std::out_of_range);
  const double nan_pr[2] = {1.0, NAN};
  const int64_t ok_keys[2] = {1, 2};
  CHECK_THROWS(buf.UpdatePriorities(ok_keys, nan_pr, 2), std::invalid_argument);
  CHECK(buf.size() == 5 && buf.written() == 5 && buf.stale_updates() == 0);
  const auto* p = dynamic_cast<const PrioritizedSelector*>(&buf.selector());
  for (int64_t s = 0; s < 5; ++s) CHECK(p->StoredPriority(s) == 1.0);
  CHECK(buf.sample_calls() == 0);
  CHECK_THROWS(Draw(buf, 0), std::invalid_argument);
  CHECK(buf.sample_calls() == 0);
}

TEST(StaleUpdatesIgnoredAndCounted) {
  TestTable buf(4, TwoFieldSpec(), Per(PrioritizedConfig{1.0, 0.4, 0.0}), 1);
  for (int64_t id = 0; id < 4; ++id) AddItem(buf, id);
  AddItem(buf, 4);  // overwrites key 0 in slot 0
  const int64_t keys[2] = {0, 1};
  const double pr[2] = {7.0, 3.0};
  CHECK(buf.UpdatePriorities(keys, pr, 2) == 1);
  CHECK(buf.stale_updates() == 1);
  const auto* p = dynamic_cast<const PrioritizedSelector*>(&buf.selector());
  CHECK(p->StoredPriority(0) == 1.0);  // the new occupant keeps its priority
  CHECK(std::fabs(p->StoredPriority(1) - 3.0) < 1e-9);
}

TEST(HalfAndBFloat16Conversion) {
  CHECK(FloatToHalf(1.0f) == 0x3C00);
  CHECK(FloatToHalf(-2.0f) == 0xC000);
  CHECK(FloatToHalf(65504.0f) == 0x7BFF);
  CHECK(FloatToHalf(1e6f) == 0x7C00);
  CHECK(FloatToHalf(5.960464477539063e-08f) == 0x0001);  // smallest subnormal
  CHECK(FloatToHalf(1.0009765625f) == 0x3C01);
  CHECK((FloatToHalf(NAN) & 0x7C00) == 0x7C00 && (FloatToHalf(NAN) & 0x3FF) != 0);
  CHECK(FloatToBFloat16(1.0f) == 0x3F80);
  CHECK(FloatToBFloat16(-1.5f) == 0xBFC0);
  CHECK(FloatToBFloat16(1.00390625f) == 0x3F80);  // a tie rounds to even
  int64_t bad = 0;
  const int64_t values[3] = {0, 255, 256};
  CHECK(!IntegersFitIn(values, 3, DType::kUInt8, &bad) && bad == 256);
  CHECK(IntegersFitIn(values, 3, DType::kInt16, &bad));
}

TEST(ThreadPoolCoversRangeOnce) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(1000);
  pool.ParallelFor(1000, 7, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (auto& h : hits) CHECK(h.load() == 1);
  CHECK_THROWS(pool.ParallelFor(10, 4, [](int64_t, int64_t) { throw std::runtime_error("x"); }),
               std::runtime_error);
}

TEST(ConcurrentWritersSamplersUpdaters) {
  // Writers add rows whose fields all encode writer*1e6+seq; samplers check no row is torn;
  // an updater changes priorities of sampled keys. At the end nothing is lost.
  const int64_t capacity = 4096;
  TestTable buf(capacity, TwoFieldSpec(),
                   Per(PrioritizedConfig{}), 3);
  constexpr int kWriters = 3, kPerWriter = 3000;
  std::atomic<bool> done{false};
  std::atomic<int64_t> torn{0}, sampled{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int64_t s = 0; s < kPerWriter; ++s) AddItem(buf, w * 1000000 + s);
    });
  }
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      while (!done.load()) {
        if (buf.size() == 0) continue;
        Drawn d = Draw(buf, 64);
        for (int i = 0; i < 64; ++i) {
          const float id = static_cast<float>(d.ids[i]);
          if (d.obs[3 * i] != id || d.obs[3 * i + 1] != id + 0.5f || d.obs[3 * i + 2] != -id) ++torn;
        }
        sampled += 64;
        if (r == 0) {
          std::vector<double> pr(64, 2.0);
          buf.UpdatePriorities(d.keys.data(), pr.data(), 64);
        }
      }
    });
  }
  for (int w = 0; w < kWriters; ++w) threads[static_cast<size_t>(w)].join();
  done = true;
  for (size_t t = kWriters; t < threads.size(); ++t) threads[t].join();
  CHECK(torn.load() == 0);
  CHECK(buf.written() == kWriters * kPerWriter);
  CHECK(buf.size() == capacity);
  // Every one of the last `capacity` rows is a distinct (writer, seq).
  std::map<int64_t, int> seen;
  const auto* ids = reinterpret_cast<const int64_t*>(buf.storage().column(0));
  for (int64_t s = 0; s < capacity; ++s) ++seen[ids[s]];
  CHECK(static_cast<int64_t>(seen.size()) == capacity);
  std::printf("  (%lld rows sampled concurrently)\n", static_cast<long long>(sampled.load()));
}

// ---- --bench-tree -------------------------------------------------------------------------

namespace {

// The same 8-wide descent over float64 sums, for the number-format comparison.
int PickChildDouble(const double* children, double* u) {
  double prefix = 0, below = 0;
  int child = 0;
  for (int k = 0; k < kTreeFanout - 1; ++k) {
    prefix += children[k];
    const bool passed = *u >= prefix;
    child += passed;
    below += passed ? children[k] : 0.0;
  }
  *u -= below;
  return child;
}

// Best (minimum) time per round over several repeats, in microseconds: the machine's noise
// only ever adds time.
template <typename Fn>
double BestOf(int repeats, int rounds, Fn&& fn) {
  double best = 1e300;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < rounds; ++i) fn(i);
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::micro>(t1 - t0).count() / rounds);
  }
  return best;
}

void BenchTree() {
  const int64_t n = 1000000, batch = 256;
  const int rounds = 200, repeats = 15;
  SumTree tree(n);
  std::mt19937_64 rng(1);
  std::vector<int64_t> all(n);
  std::vector<uint64_t> units(n);
  for (int64_t i = 0; i < n; ++i) {
    all[i] = i;
    units[i] = 1 + rng() % (uint64_t{1} << 30);
  }
  tree.SetLeaves(all.data(), units.data(), n);
  const TreeLayout& l = tree.layout();
  std::vector<double> dsums(static_cast<size_t>(l.total_nodes));
  for (int64_t i = 0; i < l.total_nodes; ++i) dsums[i] = static_cast<double>(tree.sums()[i]);
  // Inputs drawn up front so only the tree is timed. (Totals change a little with the
  // updates; u stays below the smallest total by drawing below half of it.)
  std::vector<uint64_t> u(static_cast<size_t>(batch) * rounds), upd(u.size());
  for (auto& v : u) v = rng() % (tree.total() / 2);
  for (auto& v : upd) v = 1 + rng() % (uint64_t{1} << 30);
  std::vector<int64_t> leaf(static_cast<size_t>(batch));
  const double descend = BestOf(repeats, rounds, [&](int i) {
    tree.DescendBatch(u.data() + i * batch, leaf.data(), batch);
  });
  const double both = BestOf(repeats, rounds, [&](int i) {
    tree.DescendBatch(u.data() + i * batch, leaf.data(), batch);
    tree.SetLeaves(leaf.data(), upd.data() + i * batch, batch);
  });
  const double both_serial = BestOf(repeats, rounds, [&](int i) {
    tree.DescendBatch(u.data() + i * batch, leaf.data(), batch);
    for (int64_t q = 0; q < batch; q += 64) {  // pieces below the two-thread threshold
      tree.SetLeaves(leaf.data() + q, upd.data() + i * batch + q, 64);
    }
  });
  // float64 twin: the same interleaved descent and a delta update of the sums only.
  std::vector<double> du(static_cast<size_t>(batch));
  const double both_double = BestOf(repeats, rounds, [&](int i) {
    for (int64_t q = 0; q < batch; ++q) {
      du[q] = static_cast<double>(u[i * batch + q]);
      leaf[q] = 0;
    }
    for (int level = 0; level < l.depth; ++level) {
      for (int64_t q = 0; q < batch; ++q) {
        const double* c = dsums.data() + l.offset[level + 1] + leaf[q] * kTreeFanout;
        leaf[q] = leaf[q] * kTreeFanout + PickChildDouble(c, &du[q]);
        if (level + 2 <= l.depth) __builtin_prefetch(dsums.data() + l.offset[level + 2] + leaf[q] * kTreeFanout);
      }
    }
    for (int64_t q = 0; q < batch; ++q) {
      double* slot = dsums.data() + l.offset[l.depth] + leaf[q];
      const double delta = static_cast<double>(upd[i * batch + q]) - *slot;
      *slot += delta;
      int64_t node = leaf[q];
      for (int level = l.depth - 1; level >= 0; --level) {
        node /= kTreeFanout;
        dsums[static_cast<size_t>(l.offset[level] + node)] += delta;
      }
    }
  });
  std::printf("1M leaves, best of %d x %d rounds: sample(256) descent %.1f us; sample(256)+update(256):"
              " fixed-point uint64 with min-tree %.1f us (update on one thread %.1f us);"
              " float64 sum-tree only, one thread %.1f us\n",
              repeats, rounds, descend, both, both_serial, both_double);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench-tree") == 0) {
    BenchTree();
    return 0;
  }
  int failed_cases = 0;
  for (const auto& c : reverie_test::Registry()) {
    const int before = reverie_test::Failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  unexpected exception: %s\n", e.what());
      ++reverie_test::Failures();
    }
    const bool ok = reverie_test::Failures() == before;
    failed_cases += ok ? 0 : 1;
    std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", c.name.c_str());
  }
  const size_t total = reverie_test::Registry().size();
  std::printf("%zu passed, %d failed\n", total - static_cast<size_t>(failed_cases), failed_cases);
  return failed_cases == 0 ? 0 : 1;
}
