// C++ tests of the shared kernels (kernels.h) as the host backend runs them: the batched
// tree update and insert against SumTree's serial ones, draws and weights against
// PrioritizedSelector, the gather against memcpy, device-side input errors, and a device
// buffer used by several threads at once (TSan in CI).
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "harness.h"
#include "reverie/device_buffer.h"
#include "reverie/kernels.h"
#include "reverie/prioritized_selector.h"
#include "reverie/sum_tree.h"
#include "reverie/thread_team.h"

using namespace reverie;

namespace {

// The key of insertion n of a one-stream FIFO ring of `capacity` slots (key.h, ring.h): the
// test's own statement of the encoding.
int64_t FifoKey(int64_t capacity, int64_t n) { return KeyCodec(capacity, 0).Key(n / capacity, n % capacity); }

// One thread as the Block of the tree programs, for calling them directly.
struct HostBlock {
  int thread() const { return 0; }
  int threads() const { return 1; }
  void Sync() const {}
  int64_t Min(int64_t v) const { return v; }
  double Max(double v) const { return v; }
};

// A tree in plain vectors, viewed as the kernels see it.
struct Tree {
  explicit Tree(int64_t leaves)
      : sums(SumTree::SumsBytes(leaves) / 8, 0), mins(SumTree::MinsBytes(leaves) / 8 + 1, 0) {
    view.sums = sums.data();
    view.mins = mins.data();
    view.layout = MakeTreeLayout(leaves);
  }
  std::vector<uint64_t> sums, mins;
  TreeView view;
};

bool SameTree(const Tree& t, const SumTree& ref) {
  const TreeLayout& l = ref.layout();
  for (int64_t i = 0; i < l.total_nodes; ++i) {
    if (t.sums[static_cast<size_t>(i)] != ref.sums()[i]) return false;
  }
  for (int64_t i = 0; i < l.offset[l.depth]; ++i) {
    if (t.mins[static_cast<size_t>(i)] != ref.mins()[i]) return false;
  }
  return true;
}

}  // namespace

TEST(KernelUpdateEqualsSerialSetLeaves) {
  std::mt19937_64 rng(1);
  for (int64_t capacity : {1, 9, 64, 1000, 70000}) {
    Tree t(capacity);
    SumTree ref(capacity);
    std::vector<uint64_t> winner(static_cast<size_t>(capacity), 0);
    DeviceStatus status;
    status.scale_exp = 0;  // units = round(q): keeps the expected values easy to state
    // Fill every leaf with 1 unit both ways.
    InsertArgs ins;
    ins.tree = t.view;
    ins.status = &status;
    ins.first = 0;
    ins.n = capacity;
    ins.capacity = capacity;
    status.max_q = 1.0;
    InsertProgram(ins, HostBlock{});
    ref.FillRange(0, capacity, 1);
    CHECK(SameTree(t, ref));
    for (int round = 0; round < 20; ++round) {
      const int64_t n = 1 + static_cast<int64_t>(rng() % 300);
      std::vector<int64_t> keys(static_cast<size_t>(n));
      std::vector<double> prio(static_cast<size_t>(n));
      for (int64_t k = 0; k < n; ++k) {
        // Few distinct keys, so repeats are common.
        keys[static_cast<size_t>(k)] = static_cast<int64_t>(rng() % static_cast<uint64_t>(std::min<int64_t>(capacity, 40)));
        prio[static_cast<size_t>(k)] = static_cast<double>(rng() % 1000);
      }
      UpdateArgs up;
      up.tree = t.view;
      up.status = &status;
      up.winner = winner.data();
      up.keys = keys.data();
      up.priorities = prio.data();
      up.f64 = true;
      up.n = n;
      up.written = capacity;
      up.capacity = capacity;
      up.codec = KeyCodec(capacity, 0);  // one lap written: key = slot
      up.params.alpha = 1.0;
      up.params.eps = 0.0;
      up.params.unit_budget = 1e18;  // no rescale here
      UpdateProgram(up, HostBlock{});
      std::vector<uint64_t> units(prio.size());
      for (size_t k = 0; k < prio.size(); ++k) units[k] = static_cast<uint64_t>(prio[k]);
      ref.SetLeaves(keys.data(), units.data(), n);
      CHECK(SameTree(t, ref));
      for (uint64_t w : winner) CHECK(w == 0);  // marks cleared
    }
    CHECK(status.error == kErrorNone);
  }
}

TEST(KernelInsertWrapsLikeFillRange) {
  const int64_t capacity = 100;
  Tree t(capacity);
  SumTree ref(capacity);
  DeviceStatus status;
  status.max_q = 3.0;
  status.scale_exp = 2;  // 3 * 4 = 12 units
  InsertArgs ins;
  ins.tree = t.view;
  ins.status = &status;
  ins.first = 90;
  ins.n = 25;
  ins.capacity = capacity;
  InsertProgram(ins, HostBlock{});
  ref.FillRange(90, 10, 12);
  ref.FillRange(0, 15, 12);
  CHECK(SameTree(t, ref));
  CHECK(ref.total() == 25 * 12);
}

TEST(KernelUpdateRejectsBadInputAndChangesNothing) {
  const int64_t capacity = 50;
  Tree t(capacity);
  std::vector<uint64_t> winner(capacity, 0);
  DeviceStatus status;
  status.scale_exp = 0;
  InsertArgs ins{t.view, &status, 0, capacity, capacity};
  InsertProgram(ins, HostBlock{});
  const std::vector<uint64_t> before = t.sums;
  const std::vector<int64_t> keys = {1, 2, 3};
  for (auto [bad_key, bad_prio, code] :
       {std::tuple<int64_t, double, int64_t>{2, NAN, kErrorPriority},
        {2, -1.0, kErrorPriority},
        {2, INFINITY, kErrorPriority},
        {50, 1.0, kErrorKey},
        {-1, 1.0, kErrorKey}}) {
    std::vector<int64_t> k = keys;
    std::vector<float> p = {1.0f, 5.0f, 7.0f};
    k[1] = bad_key;
    p[1] = static_cast<float>(bad_prio);
    UpdateArgs up;
    up.tree = t.view;
    up.status = &status;
    up.winner = winner.data();
    up.keys = k.data();
    up.priorities = p.data();
    up.n = 3;
    up.written = capacity;
    up.capacity = capacity;
    up.codec = KeyCodec(capacity, 0);
    up.params.alpha = 1.0;
    up.params.unit_budget = 1e18;
    status.error = kErrorNone;
    UpdateProgram(up, HostBlock{});
    CHECK(status.error == code);
    CHECK(status.error_pos == 1);
    CHECK(status.error_key == bad_key);
    CHECK(t.sums == before);
  }
}

TEST(KernelRescaleMatchesPrioritizedSampler) {
  // The device program's rescale (a q beyond the fixed-point budget) gives the CPU
  // sampler's tree, leaf for leaf.
  const int64_t capacity = 300;
  PrioritizedConfig config{1.0, 0.4, 0.0};
  PrioritizedSelector cpu(capacity, config);
  DeviceReplay dev(capacity, {4}, true, config, 5, MakeHostBackend());
  std::vector<float> rows(capacity, 0.0f);
  const void* src[] = {rows.data()};
  dev.Add(src, capacity, 0);
  cpu.OnInsert(0, capacity);
  std::vector<int64_t> keys = {0, 7, 7, 299};
  std::vector<double> prio = {1e-3, 1e25, 4.0, 1e40};
  dev.UpdatePriorities(keys.data(), prio.data(), true, 4, 0);
  cpu.UpdatePriorities(keys.data(), prio.data(), 4);
  const std::vector<uint64_t> leaves = dev.ReadLeaves(0);
  for (int64_t i = 0; i < capacity; ++i) CHECK(leaves[static_cast<size_t>(i)] == cpu.tree().leaf(i));
  const DeviceStatus status = dev.ReadStatus(0, false);
  CHECK(status.max_q == 1e40);
  CHECK(status.scale_exp == cpu.GetState().scale_exp);
}

TEST(KernelDrawsAndWeightsMatchPrioritizedSampler) {
  const int64_t capacity = 5000;
  PrioritizedConfig config{0.6, 0.4, 1e-6};
  PrioritizedSelector cpu(capacity, config);
  DeviceReplay dev(capacity, {8}, true, config, 42, MakeHostBackend());
  std::vector<int64_t> rows(capacity);
  for (int64_t i = 0; i < capacity; ++i) rows[static_cast<size_t>(i)] = i * 10;
  const void* src[] = {rows.data()};
  dev.Add(src, capacity, 0);
  cpu.OnInsert(0, capacity);
  std::mt19937_64 rng(3);
  std::vector<int64_t> keys(777);
  std::vector<double> prio(777);
  for (size_t k = 0; k < keys.size(); ++k) {
    keys[k] = static_cast<int64_t>(rng() % capacity);
    prio[k] = static_cast<double>(rng() % 10000) / 100.0;
  }
  dev.UpdatePriorities(keys.data(), prio.data(), true, 777, 0);
  cpu.UpdatePriorities(keys.data(), prio.data(), 777);
  const int64_t batch = 1024;
  std::vector<int64_t> out(batch), got_keys(batch), slots(batch);
  std::vector<float> got_w(batch), want_w(batch);
  uint8_t* outs[] = {reinterpret_cast<uint8_t*>(out.data())};
  dev.Sample(batch, outs, got_keys.data(), got_w.data(), 0);
  SampleRequest request;
  request.seed = 42;
  request.call = 0;
  request.size = capacity;
  request.batch = batch;
  cpu.Sample(request, 0, batch, slots.data(), want_w.data());
  for (int64_t i = 0; i < batch; ++i) {
    const auto k = static_cast<size_t>(i);
    CHECK(got_keys[k] == slots[k]);
    CHECK(got_w[k] == want_w[k]);
    CHECK(out[k] == slots[k] * 10);
  }
}

TEST(KernelGatherCopiesEveryWidthAndAlignment) {
  // Rows of 1..40 bytes, at aligned and unaligned addresses, against memcpy.
  std::mt19937_64 rng(9);
  for (int64_t bytes = 1; bytes <= 40; ++bytes) {
    for (int shift : {0, 1, 4}) {
      const int64_t rows = 20, batch = 13;
      std::vector<uint8_t> column(static_cast<size_t>(rows * bytes + 16));
      for (auto& b : column) b = static_cast<uint8_t>(rng());
      std::vector<uint8_t> out(static_cast<size_t>(batch * bytes + 16), 0), want(out.size(), 0);
      const KeyCodec codec(rows, 0);
      std::vector<int64_t> keys(batch);
      for (auto& k : keys) {  // keys beyond one lap
        k = codec.Key(static_cast<int64_t>(rng() % 3), static_cast<int64_t>(rng() % rows));
      }
      GatherArgs g;
      g.keys = keys.data();
      g.batch = batch;
      g.capacity = rows;
      g.codec = codec;
      g.fields = 1;
      g.out[0] = out.data() + shift;
      g.column[0] = column.data() + shift;
      g.row_bytes[0] = bytes;
      for (int64_t i = 0; i < batch; ++i) {
        for (int lane = 0; lane < 3; ++lane) GatherPart(g, i, 0, lane, 3);  // 3 lanes split a row
        std::memcpy(want.data() + shift + i * bytes, column.data() + shift + codec.Slot(keys[static_cast<size_t>(i)]) * bytes,
                    static_cast<size_t>(bytes));
      }
      CHECK(out == want);
    }
  }
}

TEST(DeviceReplayOnHostFromManyThreads) {
  // Writers, samplers and updaters on one host-backend device buffer: the calls are
  // serialised, every gathered row is one that was written whole (TSan in CI).
  const int64_t capacity = 512;
  DeviceReplay dev(capacity, {16}, true, PrioritizedConfig{}, 1, MakeHostBackend());
  std::vector<int64_t> seed_rows(capacity * 2);
  for (int64_t i = 0; i < capacity; ++i) seed_rows[static_cast<size_t>(2 * i)] = seed_rows[static_cast<size_t>(2 * i + 1)] = i;
  const void* src[] = {seed_rows.data()};
  dev.Add(src, capacity, 0);
  std::vector<std::thread> threads;
  std::atomic<int> torn{0};
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::vector<int64_t> rows(64 * 2);
      for (int r = 0; r < 200; ++r) {
        for (int64_t i = 0; i < 64; ++i) rows[static_cast<size_t>(2 * i)] = rows[static_cast<size_t>(2 * i + 1)] = w * 100000 + r * 64 + i;
        const void* s[] = {rows.data()};
        dev.Add(s, 64, 0);
      }
    });
  }
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      std::vector<int64_t> out(128 * 2), keys(128);
      std::vector<float> w(128);
      std::vector<double> prio(128, 2.5);
      for (int r = 0; r < 200; ++r) {
        uint8_t* o[] = {reinterpret_cast<uint8_t*>(out.data())};
        dev.Sample(128, o, keys.data(), w.data(), 0);
        for (int64_t i = 0; i < 128; ++i) {
          if (out[static_cast<size_t>(2 * i)] != out[static_cast<size_t>(2 * i + 1)]) torn.fetch_add(1);
        }
        dev.UpdatePriorities(keys.data(), prio.data(), true, 128, 0);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(torn.load() == 0);
  CHECK(dev.written() == capacity + 2 * 200 * 64);
  CHECK(dev.sample_calls() == 400);
  CHECK(dev.ReadStatus(0, false).error == kErrorNone);
}

// ---- The host backend as a GPU runs the kernels ------------------------------------------
// MakeHostBackend(T > 1) runs the tree programs on a block of T threads with real barriers
// and block reductions (SharedBlock, BlockReduce: the code the CUDA block runs), and sample
// and gather over CUDA's grid. Every output must equal the one-thread backend's, which the
// tests above hold to the CPU sampler. Under TSan in CI, an access that a barrier fails to
// order is a reported race.

namespace {

struct Step {
  std::vector<int64_t> keys;
  std::vector<double> priorities;
};

// Equal states: leaves, status, and a sample of `batch` (keys, weights, rows).
void CheckSame(DeviceReplay& a, DeviceReplay& b, int64_t batch, const std::vector<int64_t>& row_bytes) {
  CHECK(a.ReadLeaves(0) == b.ReadLeaves(0));
  const DeviceStatus sa = a.ReadStatus(0, true), sb = b.ReadStatus(0, true);
  CHECK(sa.max_q == sb.max_q);
  CHECK(sa.scale_exp == sb.scale_exp);
  CHECK(sa.stale == sb.stale);
  CHECK(sa.error == sb.error);
  CHECK(sa.error_pos == sb.error_pos);
  CHECK(sa.error_key == sb.error_key);
  std::vector<std::vector<uint8_t>> out_a, out_b;
  std::vector<uint8_t*> pa, pb;
  for (int64_t bytes : row_bytes) {
    out_a.emplace_back(static_cast<size_t>(batch * bytes), 0);
    out_b.emplace_back(static_cast<size_t>(batch * bytes), 1);
    pa.push_back(out_a.back().data());
    pb.push_back(out_b.back().data());
  }
  std::vector<int64_t> ka(static_cast<size_t>(batch)), kb(static_cast<size_t>(batch));
  std::vector<float> wa(static_cast<size_t>(batch)), wb(static_cast<size_t>(batch));
  a.Sample(batch, pa.data(), ka.data(), wa.data(), 0);
  b.Sample(batch, pb.data(), kb.data(), wb.data(), 0);
  CHECK(ka == kb);
  CHECK(wa == wb);
  CHECK(out_a == out_b);
}

}  // namespace

TEST(TeamBlocksRunTheKernelsAsOneThreadDoes) {
  struct Config {
    int64_t capacity;
    std::vector<int64_t> row_bytes;  // 3 bytes: unaligned words; 1500: a block per row
  };
  const Config configs[] = {{5, {8, 3}}, {1000, {8, 1500}}, {20000, {8, 3}}};
  for (int threads : {2, 8, 64, 512}) {
    for (const Config& c : configs) {
      PrioritizedConfig config{0.6, 0.4, 1e-6};
      DeviceReplay one(c.capacity, c.row_bytes, true, config, 17, MakeHostBackend(1));
      DeviceReplay team(c.capacity, c.row_bytes, true, config, 17, MakeHostBackend(threads));
      std::mt19937_64 rng(static_cast<uint64_t>(threads * 31 + c.capacity));
      int64_t written = 0;
      for (int round = 0; round < 8; ++round) {
        // Adds that wrap the ring, sometimes more than the capacity at once.
        const int64_t n = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(c.capacity + c.capacity / 3 + 1));
        std::vector<std::vector<uint8_t>> cols;
        std::vector<const void*> src;
        for (int64_t bytes : c.row_bytes) {
          cols.emplace_back(static_cast<size_t>(n * bytes));
          for (auto& v : cols.back()) v = static_cast<uint8_t>(rng());
          src.push_back(cols.back().data());
        }
        one.Add(src.data(), n, 0);
        team.Add(src.data(), n, 0);
        written += n;
        // An update over recent keys: repeats, stale keys, zeros; in round 4 a priority far
        // beyond the fixed-point budget (a rescale of every leaf).
        const int64_t m = 1 + static_cast<int64_t>(rng() % 1500);
        Step step;
        const int64_t span = std::min<int64_t>(written, c.capacity + c.capacity / 4 + 1);
        for (int64_t k = 0; k < m; ++k) {
          step.keys.push_back(FifoKey(c.capacity, written - 1 - static_cast<int64_t>(rng() % static_cast<uint64_t>(span))));
          const double choices[] = {0.0, 0.5, 3.0, static_cast<double>(rng() % 100000) / 7.0};
          step.priorities.push_back(choices[rng() % 4]);
        }
        if (round == 4) step.priorities[static_cast<size_t>(rng() % static_cast<uint64_t>(m))] = 1e30;
        one.UpdatePriorities(step.keys.data(), step.priorities.data(), true, m, 0);
        team.UpdatePriorities(step.keys.data(), step.priorities.data(), true, m, 0);
        CheckSame(one, team, 1 + static_cast<int64_t>(rng() % 700), c.row_bytes);
        // A bad update (a NaN and an unwritten key, far apart): the first bad position is
        // reported (a block-wide min) and nothing changes.
        if (m >= 2) {
          Step bad = step;
          const auto p = static_cast<size_t>(rng() % static_cast<uint64_t>(m));
          const auto q = static_cast<size_t>(rng() % static_cast<uint64_t>(m));
          bad.priorities[p] = NAN;
          bad.keys[q] = FifoKey(c.capacity, written);  // the next insertion's: never written
          const std::vector<uint64_t> before = team.ReadLeaves(0);
          one.UpdatePriorities(bad.keys.data(), bad.priorities.data(), true, m, 0);
          team.UpdatePriorities(bad.keys.data(), bad.priorities.data(), true, m, 0);
          CHECK(team.ReadLeaves(0) == before);
          const DeviceStatus s = team.ReadStatus(0, false);
          CHECK(s.error_pos == static_cast<int64_t>(std::min(p, q)));
          CHECK(s.error == (q <= p ? kErrorKey : kErrorPriority));
          CheckSame(one, team, 64, c.row_bytes);  // also clears both errors
        }
      }
    }
  }
}

TEST(TeamGridsSampleAndGatherAsOneThreadDoes) {
  // Uniform draws over 20 fields (two gathers: 16 fields with a 1500-byte one, a block per
  // row; then 4 small ones, a warp per row), and an all-zero prioritized sample (every
  // thread of the grid records the error at once).
  std::vector<int64_t> row_bytes;
  for (int f = 0; f < 20; ++f) row_bytes.push_back(f == 5 ? 1500 : 1 + (f * 7) % 40);
  const int64_t capacity = 300;
  for (int threads : {4, 64}) {
    DeviceReplay one(capacity, row_bytes, false, PrioritizedConfig{}, 5, MakeHostBackend(1));
    DeviceReplay team(capacity, row_bytes, false, PrioritizedConfig{}, 5, MakeHostBackend(threads));
    std::mt19937_64 rng(8);
    std::vector<std::vector<uint8_t>> cols;
    std::vector<const void*> src;
    for (int64_t bytes : row_bytes) {
      cols.emplace_back(static_cast<size_t>(450 * bytes));
      for (auto& v : cols.back()) v = static_cast<uint8_t>(rng());
      src.push_back(cols.back().data());
    }
    one.Add(src.data(), 450, 0);
    team.Add(src.data(), 450, 0);
    for (int64_t batch : {1, 7, 8, 9, 257, 1000}) CheckSame(one, team, batch, row_bytes);

    DeviceReplay zero(16, {8}, true, PrioritizedConfig{1.0, 0.4, 0.0}, 5, MakeHostBackend(threads));
    std::vector<int64_t> rows(16, 3), keys(16), out(600), got(600);
    std::iota(keys.begin(), keys.end(), 0);
    const void* s1[] = {rows.data()};
    zero.Add(s1, 16, 0);
    std::vector<double> zeros(16, 0.0);
    zero.UpdatePriorities(keys.data(), zeros.data(), true, 16, 0);
    std::vector<float> w(600);
    uint8_t* o[] = {reinterpret_cast<uint8_t*>(out.data())};
    zero.Sample(600, o, got.data(), w.data(), 0);
    const DeviceStatus st = zero.ReadStatus(0, true);
    CHECK(st.error == kErrorAllZero);
    CHECK(st.error_pos >= 0 && st.error_pos < 600);  // whichever draw claimed it first
    for (int64_t k : got) CHECK(k == -1);
    CHECK(zero.ReadStatus(0, false).error == kErrorNone);  // cleared by the read
  }
}

TEST(BlockReduceOnATeamGivesEveryThreadTheResult) {
  // Back-to-back reductions over the same shared array, as a CUDA block runs them: each
  // thread must get every result (and under TSan, no step may race with the next).
  for (int size : {1, 2, 16, 128}) {
    ThreadTeam team(size);
    std::vector<int64_t> ints(static_cast<size_t>(size));
    std::vector<double> doubles(static_cast<size_t>(size));
    std::atomic<int> wrong{0};
    team.Run([&](int t) {
      const SharedBlock<TeamLanes> b{TeamLanes{&team, t}, ints.data(), doubles.data()};
      for (int round = 0; round < 20; ++round) {
        // Thread t holds (t * 7 + round) % size: min 0, max size - 1, at a thread that moves.
        const int64_t v = (t * 7 + round) % size;
        if (b.Min(v + round) != round) wrong.fetch_add(1);
        if (b.Min(size - v) != 1) wrong.fetch_add(1);
        if (b.Max(static_cast<double>(v) / 2) != static_cast<double>(size - 1) / 2) wrong.fetch_add(1);
      }
    });
    CHECK(wrong.load() == 0);
  }
}

TEST(ThreadTeamReportsDivergentBarriersInsteadOfHanging) {
  ThreadTeam team(8);
  std::atomic<int> after{0};
  // Thread 3 returns early, the others wait at a barrier it never reaches.
  CHECK_THROWS(team.Run([&](int t) {
    if (t == 3) return;
    team.Barrier();
    team.Barrier();
    after.fetch_add(1);
  }), std::logic_error);
  CHECK(after.load() == 7);  // the others ran to their end
  // The team is whole again for the next program.
  std::atomic<int> rounds{0};
  team.Run([&](int) {
    for (int i = 0; i < 5; ++i) {
      team.Barrier();
      rounds.fetch_add(1);
    }
  });
  CHECK(rounds.load() == 40);
}

TEST(HostBackendBlockThreadsMustBeACudaBlockSize) {
  CHECK_THROWS(MakeHostBackend(0), std::invalid_argument);
  CHECK_THROWS(MakeHostBackend(3), std::invalid_argument);
  CHECK_THROWS(MakeHostBackend(2048), std::invalid_argument);
  CHECK(MakeHostBackend(1024) != nullptr);
}
