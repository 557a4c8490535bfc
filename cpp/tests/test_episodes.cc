// C++ tests of episodes (episodes.h): the shared row logic on a hand-made row source, the
// stream-major ring, and an episode buffer sampled while a writer thread runs (TSan in CI).
#include <atomic>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include "buffer_helpers.h"
#include "harness.h"
#include "reverie/episodes.h"
#include "reverie/table.h"
#include "reverie/ring.h"

using namespace reverie;
using reverie_test::TestTable;
using reverie_test::conc::MakeInput;

namespace {

// One stream (N = 1) of rows 0..flags.size()-1 in a ring of `rows` slots (row r at slot
// r % rows); rows below `oldest` count as overwritten.
struct FakeRows {
  std::vector<uint8_t> flags;
  std::vector<double> reward;
  int64_t oldest = 0;
  int64_t rows = 1000;

  RowPos At(int64_t key) const { return RowPos{key, key % rows, 0}; }
  RowPos Next(RowPos p) const { return RowPos{p.key + 1, p.slot + 1 == rows ? 0 : p.slot + 1, 0}; }
  RowPos Prev(RowPos p) const { return RowPos{p.key - 1, p.slot == 0 ? rows - 1 : p.slot - 1, 0}; }
  bool Present(RowPos p) const {
    return p.key >= oldest && p.key < static_cast<int64_t>(flags.size());
  }
  uint8_t Flags(RowPos p) const { return flags[static_cast<size_t>(p.key)]; }
  double Reward(RowPos p) const { return reward[static_cast<size_t>(p.key)]; }
};

// Rows from (terminated, truncated) per step, flags as a writer computes them.
FakeRows Stream(const std::vector<std::pair<bool, bool>>& steps) {
  FakeRows rows;
  uint8_t prev = kStreamStart;
  for (size_t i = 0; i < steps.size(); ++i) {
    prev = RowFlagsAfter(prev, steps[i].first, steps[i].second);
    rows.flags.push_back(prev);
    rows.reward.push_back(static_cast<double>(i + 1));
  }
  return rows;
}

constexpr std::pair<bool, bool> kStep{false, false}, kTerm{true, false}, kTrunc{false, true};

}  // namespace

TEST(RowFlagsMarkFinalAndFirstRows) {
  // Episode A: rows 0-2 (2 terminated), 3 its final observation; B: 4-5 (5 truncated), 6 final;
  // C: 7.
  const FakeRows r = Stream({kStep, kStep, kTerm, kStep, kStep, kTrunc, kTerm, kStep});
  CHECK(r.flags[0] == kFirstRow);
  CHECK(r.flags[2] == kTerminated);
  CHECK(r.flags[3] == kFinalRow);  // its own flags (none here) are ignored
  CHECK(r.flags[4] == kFirstRow);
  CHECK(r.flags[5] == kTruncated);
  CHECK(r.flags[6] == kFinalRow);  // terminated=true in the reset step is ignored
  CHECK(r.flags[7] == kFirstRow);
}

TEST(NStepStopsAtTerminationTruncationAndHead) {
  const FakeRows r = Stream({kStep, kStep, kTerm, kStep, kStep, kTrunc, kStep, kStep, kStep});
  const double g = 0.5;
  NStepResult n = NStep(r, r.At(0), 5, g);  // rewards 1, 2, 3; terminated at row 2
  CHECK(n.steps == 3 && n.discount == 0.0 && n.boot.key == 3);
  CHECK(std::fabs(n.ret - (1 + 0.5 * 2 + 0.25 * 3)) < 1e-12);
  n = NStep(r, r.At(4), 5, g);  // rows 4, 5; truncated at 5: bootstrap from row 6
  CHECK(n.steps == 2 && n.boot.key == 6 && std::fabs(n.discount - 0.25) < 1e-12);
  CHECK(std::fabs(n.ret - (5 + 0.5 * 6)) < 1e-12);
  n = NStep(r, r.At(7), 5, g);  // row 8 is the newest: one step, bootstrap from it
  CHECK(n.steps == 1 && n.boot.key == 8 && std::fabs(n.discount - 0.5) < 1e-12);
  n = NStep(r, r.At(8), 5, g);  // no next row: not a start
  CHECK(n.steps == 0);
  n = NStep(r, r.At(0), 2, g);  // n limits before the episode ends
  CHECK(n.steps == 2 && n.boot.key == 2 && std::fabs(n.discount - 0.25) < 1e-12);
}

TEST(FrameStacksRepeatTheFirstFrameAndNoticeOverwrittenRows) {
  FakeRows r = Stream({kStep, kTerm, kStep, kStep, kStep, kStep});  // episode B starts at 3
  RowPos out[4];
  CHECK(StackRows(r, r.At(4), 4, out));
  CHECK(out[0].key == 3 && out[1].key == 3 && out[2].key == 3 && out[3].key == 4);
  CHECK(StackRows(r, r.At(2), 3, out));  // the final-observation row stacks its episode
  CHECK(out[0].key == 0 && out[1].key == 1 && out[2].key == 2);
  CHECK(StackBottom(r, r.At(5), 4).key == 3);
  r.oldest = 1;  // row 0 overwritten: row 2's stack of 3 needs it
  CHECK(!StackRows(r, r.At(2), 3, out));
  CHECK(out[0].key == 1 && out[1].key == 1 && out[2].key == 2);  // still stored rows
  CHECK(StackBottom(r, r.At(2), 3).key == -1);
  CHECK(StackBottom(r, r.At(2), 2).key == 1);
}

TEST(SequenceWindowsPadDropAndBurnIn) {
  // A: 0-3 (3 terminated), 4 final; B: 5-9 (newest 9).
  FakeRows r = Stream({kStep, kStep, kStep, kTerm, kStep, kStep, kStep, kStep, kStep, kStep});
  int64_t slots[8];
  uint8_t mask[8];
  // Start 1, burn-in 2, length 5: positions = rows -1, 0 | 1, 2, 3, 4(final), 5(other episode).
  WindowResult w = SequenceWindow(r, r.At(1), 2, 5, false, 1, slots, mask);
  CHECK(w.ok && w.lo.key == 0 && w.hi.key == 4);
  const int64_t want_slots[7] = {-1, 0, 1, 2, 3, 4, -1};
  const uint8_t want_mask[7] = {0, 1, 1, 1, 1, 0, 0};
  for (int t = 0; t < 7; ++t) CHECK(slots[t] == want_slots[t] && mask[t] == want_mask[t]);
  CHECK(!SequenceWindow(r, r.At(1), 2, 5, true, 1, slots, mask).ok);  // drop: crosses the end
  CHECK(SequenceWindow(r, r.At(1), 0, 3, true, 1, slots, mask).ok);    // 1, 2, 3 fit
  // At the write head: start 8, length 3: rows 8, 9, then nothing.
  w = SequenceWindow(r, r.At(8), 0, 3, false, 1, slots, mask);
  CHECK(w.ok && w.hi.key == 9 && slots[2] == -1 && mask[0] == 1 && mask[1] == 1 && mask[2] == 0);
  CHECK(!SequenceWindow(r, r.At(8), 0, 3, true, 1, slots, mask).ok);
  // Burn-in past the oldest stored row, and frame stacks (k = 2) that lack a frame there.
  r.oldest = 6;
  w = SequenceWindow(r, r.At(8), 3, 1, false, 2, slots, mask);
  // positions: rows 5 (overwritten), 6 (stack needs 5: zeros), 7, | 8.
  CHECK(w.ok && slots[0] == -1 && slots[1] == -1 && mask[1] == 0 && mask[2] == 1 && w.lo.key == 6);
}

TEST(StreamMajorRingCursorMatchesSlotOf) {
  for (int64_t streams : {1, 3, 8}) {
    const int64_t cap = streams * 5;
    std::vector<std::atomic<uint64_t>> stamps(static_cast<size_t>(cap));
    RingCounters counters;
    Ring ring(cap, stamps.data(), &counters, KeyCodec(cap, 0), streams);
    std::vector<int> hits(static_cast<size_t>(cap), 0);
    for (int64_t n0 : {int64_t{0}, streams * 3, streams * 7}) {
      Ring::Cursor c(ring, n0);
      for (int64_t n = n0; n < n0 + 3 * cap; ++n, c.Next()) {
        CHECK(c.slot() == ring.SlotOfInsertion(n));
        CHECK(ring.InsertionOfKey(c.key()) == n);
        // Env e's rows are adjacent: insertion n + streams is the next slot of the same stream.
        const int64_t next = ring.SlotOfInsertion(n + streams);
        const int64_t row = ring.SlotOfInsertion(n) % (cap / streams);
        CHECK(next == (row + 1 == cap / streams ? ring.SlotOfInsertion(n) - row : ring.SlotOfInsertion(n) + 1));
        if (n < n0 + cap) ++hits[static_cast<size_t>(c.slot())];
      }
    }
    for (int h : hits) CHECK(h == 3);  // each window of `cap` insertions covers every slot once
  }
}

namespace {

constexpr int64_t kEnvs = 3;

std::vector<FieldSpec> EpisodeSpec() {
  return {FieldSpec{"obs", DType::kFloat32, {2}}, FieldSpec{"reward", DType::kFloat32, {}},
          FieldSpec{"terminated", DType::kBool, {}}, FieldSpec{"truncated", DType::kBool, {}}};
}

EpisodeConfig Episodes(int frame_stack = 1) {
  EpisodeConfig e;
  e.num_envs = kEnvs;
  e.reward = 1;
  e.terminated = 2;
  e.truncated = 3;
  e.obs = {0};
  e.frame_stack = frame_stack;
  return e;
}

// One step of all envs: obs (env, t); env e's episodes end every 7 + e steps (terminated,
// or truncated every other time).
void WriteStep(TestTable& buf, int64_t t) {
  float obs[kEnvs][2];
  float reward[kEnvs];
  uint8_t term[kEnvs], trunc[kEnvs];
  for (int64_t e = 0; e < kEnvs; ++e) {
    obs[e][0] = static_cast<float>(e);
    obs[e][1] = static_cast<float>(t);
    reward[e] = 1.0f;
    const bool end = (t + 1) % (7 + e) == 0;
    term[e] = end && ((t + 1) / (7 + e)) % 2 == 0;
    trunc[e] = end && !term[e];
  }
  FieldInput in[4] = {MakeInput("obs", obs, DType::kFloat32, {2}, kEnvs),
                      MakeInput("reward", reward, DType::kFloat32, {}, kEnvs),
                      MakeInput("terminated", term, DType::kBool, {}, kEnvs),
                      MakeInput("truncated", trunc, DType::kBool, {}, kEnvs)};
  buf.Extend(in, 4);
}

// Env and step of a key of a buffer of kEnvs streams and `capacity` rows: the inverse of the
// stream-major key encoding of ring.h, written out here as the test's own reference.
struct StepOf {
  int64_t capacity;
  int64_t Insertion(int64_t key) const {
    const KeyCodec codec(capacity, 0);
    const int64_t rows = capacity / kEnvs, slot = codec.Slot(key);
    return (codec.Generation(key) * rows + slot % rows) * kEnvs + slot / rows;
  }
  float env(int64_t key) const { return static_cast<float>(Insertion(key) % kEnvs); }
  float t(int64_t key) const { return static_cast<float>(Insertion(key) / kEnvs); }
};

// Checks a transition batch against the data's encoding; returns failures.
int CheckTransitions(const StepOf& of, const std::vector<float>& obs, const std::vector<float>& next,
                     const std::vector<float>& disc, const std::vector<int64_t>& keys, int64_t batch) {
  int bad = 0;
  for (int64_t i = 0; i < batch; ++i) {
    const float env = obs[2 * i], t = obs[2 * i + 1];
    bad += env != of.env(keys[i]) || t != of.t(keys[i]);
    bad += next[2 * i] != env;                    // the same env's stream
    bad += !(next[2 * i + 1] > t && next[2 * i + 1] <= t + 3);  // 1..n steps later
    bad += !(disc[i] >= 0.0f && disc[i] <= 1.0f);
  }
  return bad;
}

}  // namespace

TEST(EpisodeBufferTransitionsAndSequences) {
  TestTable buf(kEnvs * 20, EpisodeSpec(), reverie_test::conc::UniformSampling(), 7, {},
                   Episodes());
  for (int64_t t = 0; t < 45; ++t) WriteStep(buf, t);  // wraps each stream twice
  const int64_t batch = 64;
  std::vector<float> obs(2 * batch), next(2 * batch), reward(batch), ret(batch), disc(batch);
  std::vector<uint8_t> term(batch), trunc(batch);
  std::vector<int64_t> keys(batch);
  uint8_t* out[4] = {reinterpret_cast<uint8_t*>(obs.data()), reinterpret_cast<uint8_t*>(reward.data()),
                     term.data(), trunc.data()};
  uint8_t* next_out[1] = {reinterpret_cast<uint8_t*>(next.data())};
  buf.SampleTransitions(batch, 3, 0.9, out, next_out, ret.data(), disc.data(), keys.data(), nullptr);
  const StepOf of{kEnvs * 20};
  CHECK(CheckTransitions(of, obs, next, disc, keys, batch) == 0);
  for (int64_t i = 0; i < batch; ++i) CHECK(of.Insertion(keys[i]) >= 45 * kEnvs - 20 * kEnvs);  // stored
  // Sequences: consecutive steps of one env wherever the mask is set.
  const int64_t len = 6;
  std::vector<float> sobs(2 * batch * len), srew(batch * len);
  std::vector<uint8_t> sterm(batch * len), strunc(batch * len), mask(batch * len);
  uint8_t* sout[4] = {reinterpret_cast<uint8_t*>(sobs.data()), reinterpret_cast<uint8_t*>(srew.data()),
                      sterm.data(), strunc.data()};
  buf.SampleSequences(batch, 2, len - 2, false, sout, mask.data(), keys.data(), nullptr);
  for (int64_t i = 0; i < batch; ++i) {
    CHECK(mask[i * len + 2] == 1);  // the start
    CHECK(sobs[2 * (i * len + 2) + 1] == of.t(keys[i]));
    for (int64_t t = 0; t < len; ++t) {
      if (!mask[i * len + t]) continue;
      CHECK(sobs[2 * (i * len + t)] == of.env(keys[i]));
      CHECK(sobs[2 * (i * len + t) + 1] == of.t(keys[i]) + static_cast<float>(t - 2));
    }
  }
  // Bad arguments are refused before anything happens.
  bool threw = false;
  try {
    buf.SampleSequences(batch, 0, 21, false, sout, mask.data(), keys.data(), nullptr);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}

TEST(EpisodeSamplingWhileAWriterRuns) {
  // One writer steps the envs while two threads sample transitions and sequences: every
  // sampled row must be whole and of the right env and step (the seqlock of ring.h).
  // Short streams (16 rows): the writer laps them constantly, so samples meet rows that are
  // being overwritten.
  TestTable buf(kEnvs * 16, EpisodeSpec(), reverie_test::conc::UniformSampling(), 3, {},
                   Episodes(2));
  for (int64_t t = 0; t < 20; ++t) WriteStep(buf, t);
  const StepOf of{kEnvs * 16};
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<int64_t> batches{0};
  const int64_t want = 4000 / reverie_test::conc::kWorkDivisor;
  std::thread writer([&] {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t t = 20; batches < want && reverie_test::conc::SecondsSince(t0) < 20; ++t) {
      WriteStep(buf, t);
    }
    stop = true;
  });
  auto sampler = [&](bool sequences) {
    const int64_t batch = 16, len = 8;
    std::vector<float> obs(2 * 2 * batch * len), next(2 * 2 * batch), other(batch * len), disc(batch);
    std::vector<uint8_t> f1(batch * len), f2(batch * len), mask(batch * len);
    std::vector<int64_t> keys(batch);
    uint8_t* out[4] = {reinterpret_cast<uint8_t*>(obs.data()), reinterpret_cast<uint8_t*>(other.data()),
                       f1.data(), f2.data()};
    while (!stop) {
      if (sequences) {
        buf.SampleSequences(batch, 0, len, false, out, mask.data(), keys.data(), nullptr);
        for (int64_t i = 0; i < batch; ++i) {
          for (int64_t t = 0; t < len; ++t) {
            if (!mask[i * len + t]) continue;
            const float* row = &obs[4 * (i * len + t)];  // stack of 2 frames (env, t)
            bad += row[2] != of.env(keys[i]) ||
                   row[3] != of.t(keys[i]) + static_cast<float>(t) || row[0] != row[2] ||
                   !(row[1] == row[3] || row[1] == row[3] - 1);
          }
        }
      } else {
        uint8_t* next_out[1] = {reinterpret_cast<uint8_t*>(next.data())};
        buf.SampleTransitions(batch, 3, 0.9, out, next_out, other.data(), disc.data(), keys.data(), nullptr);
        for (int64_t i = 0; i < batch; ++i) {
          const float* row = &obs[4 * i];
          const float* nrow = &next[4 * i];
          bad += row[2] != of.env(keys[i]) ||
                 row[3] != of.t(keys[i]) || nrow[2] != row[2] ||
                 !(nrow[3] > row[3] && nrow[3] <= row[3] + 3);
        }
      }
      ++batches;
    }
  };
  std::thread a(sampler, true), b(sampler, false);
  writer.join();
  a.join();
  b.join();
  CHECK(bad == 0);
  CHECK(batches >= want);
}

TEST(EpisodeWritersTakeTurns) {
  // Two writer threads on one episode buffer (they take the writer lock in turn) and a
  // sampler: no race on the streams' flags (TSan in CI), every step whole.
  TestTable buf(kEnvs * 32, EpisodeSpec(), reverie_test::conc::UniformSampling(), 9, {},
                   Episodes());
  for (int64_t t = 0; t < 8; ++t) WriteStep(buf, t);
  const StepOf of{kEnvs * 32};
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  auto writer = [&] {
    for (int64_t t = 0; t < 2000 / reverie_test::conc::kWorkDivisor; ++t) WriteStep(buf, 8 + t);
  };
  std::thread sampler([&] {
    const int64_t batch = 16;
    std::vector<float> obs(2 * batch), next(2 * batch), other(batch), disc(batch);
    std::vector<uint8_t> f1(batch), f2(batch);
    std::vector<int64_t> keys(batch);
    uint8_t* out[4] = {reinterpret_cast<uint8_t*>(obs.data()), reinterpret_cast<uint8_t*>(other.data()),
                       f1.data(), f2.data()};
    uint8_t* next_out[1] = {reinterpret_cast<uint8_t*>(next.data())};
    while (!stop) {
      buf.SampleTransitions(batch, 2, 0.9, out, next_out, other.data(), disc.data(), keys.data(), nullptr);
      for (int64_t i = 0; i < batch; ++i) bad += obs[2 * i] != of.env(keys[i]) || next[2 * i] != obs[2 * i];
    }
  });
  std::thread a(writer), b(writer);
  a.join();
  b.join();
  stop = true;
  sampler.join();
  CHECK(bad == 0);
  CHECK(buf.written() == kEnvs * (8 + 2 * (2000 / reverie_test::conc::kWorkDivisor)));
}
