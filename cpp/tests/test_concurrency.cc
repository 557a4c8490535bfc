// Concurrency stress tests of the replay buffer (issue 3): writers, samplers and priority
// updaters at once; a ring that wraps many times under them; the rate limiter across
// threads; processes that die holding the writer lock or in the middle of a write. CI runs
// them plain, under ASan+UBSan and under ThreadSanitizer (where the fork() tests skip).
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "buffer_helpers.h"
#include "harness.h"
#include "reverie/prioritized_selector.h"
#include "reverie/table.h"

using namespace reverie;
using reverie_test::TestTable;
using namespace reverie_test::conc;

namespace {

constexpr int kWriters = 3;
// Width of the stress rows' "blob" field (8-byte words): 64 bytes where every row is kept,
// 2 KiB where the ring wraps, so more reads meet a row being overwritten (under TSan, where
// every byte copied is an atomic access, a quarter of that does the same).
constexpr int64_t kNoWrapBlob = 8, kWrapBlob = kThreadSanitizer ? 64 : 256;

int64_t BlobWidth(const TestTable& buf) { return buf.spec().back().shape[0]; }

// What a sampler saw: the key Sample reported with a row, and the row's tag.
struct Seen {
  int64_t key;
  int64_t tag;
};

// Counts the threads keep; the main thread checks them after joining.
struct Tally {
  std::atomic<int64_t> torn{0};         // sampled rows that were not one whole (w, seq) row
  std::atomic<int64_t> bad_rows{0};     // whole rows with a writer or seq never written
  std::atomic<int64_t> bad_weights{0};  // importance weights outside (0, 1]
  std::atomic<int64_t> errors{0};       // exceptions where none may come
  std::atomic<int64_t> sampled{0};      // rows sampled
  std::atomic<int64_t> stale{0};        // sum of what UpdatePriorities returned
};

void Report(Tally* tally, const char* who, const std::exception& e) {
  std::fprintf(stderr, "  %s threw: %s\n", who, e.what());
  ++tally->errors;
}

// Stores rows (w, 0 .. rows-1) in order: a third by Add, the rest by Extend batches of
// 1 .. max_batch items.
void WriteRows(TestTable* buf, int w, int64_t rows, int64_t max_batch, Tally* tally) {
  try {
    std::mt19937_64 rng(1000 + static_cast<uint64_t>(w));
    StressRows batch(max_batch, BlobWidth(*buf));
    for (int64_t seq = 0; seq < rows;) {
      const bool single = rng() % 3 == 0;
      int64_t n = single ? 1 : 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(max_batch));
      n = std::min(n, rows - seq);
      for (int64_t i = 0; i < n; ++i) batch.Set(i, w, seq + i);
      const auto in = batch.Inputs(n, !single);
      if (single) {
        buf->Add(in.data(), in.size());
      } else {
        buf->Extend(in.data(), in.size());
      }
      seq += n;
    }
  } catch (const std::exception& e) {
    Report(tally, "writer", e);
  }
}

// Samples batches of 1..96 rows until `stop`, then a few more. Checks every row (and, when
// prioritized, every weight) and records (key, tag). With `update`, also gives the sampled
// keys new priorities (keys overwritten meanwhile are skipped and counted as stale).
void SampleRows(TestTable* buf, int id, const std::atomic<bool>* stop, int64_t rows_per_writer,
                bool update, Tally* tally, std::vector<Seen>* seen) {
  try {
    std::mt19937_64 rng(77 + static_cast<uint64_t>(id));
    const bool weighted = buf->selector().prioritized();
    constexpr int64_t kMaxBatch = 96;
    StressDraw d(kMaxBatch, BlobWidth(*buf));
    std::vector<double> pr(kMaxBatch);
    for (int extra = 3; extra > 0;) {
      if (stop->load()) --extra;
      if (buf->size() == 0) {
        std::this_thread::yield();
        continue;
      }
      const int64_t batch = 1 + static_cast<int64_t>(rng() % kMaxBatch);
      d.From(*buf, batch);
      for (int64_t i = 0; i < batch; ++i) {
        int w = 0;
        int64_t seq = 0;
        if (!d.rows.Consistent(i, &w, &seq)) {
          ++tally->torn;
          continue;
        }
        if (w >= kWriters || seq >= rows_per_writer) {
          ++tally->bad_rows;
          continue;
        }
        const float wt = d.weights[static_cast<size_t>(i)];
        if (weighted && !(wt > 0.0f && wt <= 1.0f)) ++tally->bad_weights;
        seen->push_back({d.keys[static_cast<size_t>(i)], d.rows.tag[static_cast<size_t>(i)]});
      }
      tally->sampled += batch;
      if (update) {
        for (int64_t i = 0; i < batch; ++i) pr[i] = 0.5 + static_cast<double>(rng() % 32) * 0.25;
        tally->stale += buf->UpdatePriorities(d.keys.data(), pr.data(), batch);
      }
    }
  } catch (const std::exception& e) {
    Report(tally, "sampler", e);
  }
}

// Until `stop` (then a few rounds more) gives batches of the keys k with k % 3 == 0 that
// were written new priorities, and records in `last` the value each key was last given by a
// call that did not skip it. Priorities are multiples of 1/8 in [0.5, 8.4]: exact in the
// tree's fixed point, and below 16, so the tree is never rescaled.
void UpdateOwnKeys(TestTable* buf, const std::atomic<bool>* stop, Tally* tally,
                   std::unordered_map<int64_t, double>* last) {
  try {
    std::mt19937_64 rng(5);
    constexpr int64_t kBatch = 32;
    std::vector<int64_t> keys(kBatch);
    std::vector<double> pr(kBatch);
    for (int extra = 3; extra > 0;) {
      if (stop->load()) --extra;
      const int64_t owned = buf->written() / 3;  // keys 0, 3, .., 3 * (owned - 1) are claimed
      if (owned == 0) {
        std::this_thread::yield();
        continue;
      }
      for (int64_t i = 0; i < kBatch; ++i) {
        keys[i] = 3 * static_cast<int64_t>(rng() % static_cast<uint64_t>(owned));
        pr[i] = 0.5 + static_cast<double>(rng() % 64) * 0.125;
      }
      const int64_t stale = buf->UpdatePriorities(keys.data(), pr.data(), kBatch);
      tally->stale += stale;
      for (int64_t i = 0; i < kBatch; ++i) {
        if (stale == 0) {
          (*last)[keys[i]] = pr[i];
          continue;
        }
        // Some key was claimed but not yet committed: find out which, one by one. (Without
        // overwrites a key applied above is applied again here, with the same value.)
        const int64_t s = buf->UpdatePriorities(&keys[i], &pr[i], 1);
        tally->stale += s;
        if (s == 0) (*last)[keys[i]] = pr[i];
      }
    }
  } catch (const std::exception& e) {
    Report(tally, "updater", e);
  }
}

// Until `stop` (then a few rounds more) gives random written keys new priorities; under
// wrap-around many are stale by then and are skipped, but none may throw.
void UpdateRandomKeys(TestTable* buf, const std::atomic<bool>* stop, Tally* tally) {
  try {
    std::mt19937_64 rng(6);
    constexpr int64_t kBatch = 16;
    std::vector<int64_t> keys(kBatch);
    std::vector<double> pr(kBatch);
    for (int extra = 3; extra > 0;) {
      if (stop->load()) --extra;
      const int64_t written = buf->written();
      if (written == 0) {
        std::this_thread::yield();
        continue;
      }
      for (int64_t i = 0; i < kBatch; ++i) {
        // Mostly recent keys (likely still stored), some old ones (stale).
        const uint64_t back = rng() % 4 == 0 ? static_cast<uint64_t>(written) : 128;
        const int64_t k = written - 1 - static_cast<int64_t>(rng() % back);
        keys[i] = std::max<int64_t>(0, k);
        pr[i] = 0.5 + static_cast<double>(rng() % 64) * 0.125;
      }
      tally->stale += buf->UpdatePriorities(keys.data(), pr.data(), kBatch);
    }
  } catch (const std::exception& e) {
    Report(tally, "updater", e);
  }
}

bool IsPrioritized(const reverie_test::SamplerConfig& s) { return s.kind == reverie_test::SamplerConfig::Kind::kPrioritized; }

// kWriters writer threads (batches of at most max_batch rows) and 2 sampler threads (the
// first checking weights when `weighted_first`), plus `updater` on a thread of its own; the
// samplers and the updater run until the writers are done (the flag they are given).
void RunStress(TestTable& buf, int64_t rows, int64_t max_batch, bool weighted_first,
               Tally* tally, std::vector<std::vector<Seen>>* seen,
               const std::function<void(const std::atomic<bool>*)>& updater) {
  std::atomic<bool> writers_done{false};
  std::vector<std::thread> writers, others;
  for (int w = 0; w < kWriters; ++w) writers.emplace_back(WriteRows, &buf, w, rows, max_batch, tally);
  for (int r = 0; r < 2; ++r) {
    others.emplace_back(SampleRows, &buf, r, &writers_done, rows, weighted_first && r == 0, tally,
                        &(*seen)[static_cast<size_t>(r)]);
  }
  others.emplace_back(updater, &writers_done);
  for (auto& t : writers) t.join();
  writers_done = true;
  for (auto& t : others) t.join();
}

void CheckTally(const Tally& t) {
  CHECK(t.torn.load() == 0);
  CHECK(t.bad_rows.load() == 0);
  CHECK(t.bad_weights.load() == 0);
  CHECK(t.errors.load() == 0);
  CHECK(t.sampled.load() > 0);
}

// ---- 1. Writers, samplers and an updater; capacity for every row ---------------------------

void WritersSamplersUpdaters(const reverie_test::SamplerConfig& sampling, const char* label) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t rows = 100000 / kWorkDivisor;  // per writer
  const int64_t total = kWriters * rows;
  const int64_t capacity = total + 5;
  const bool prioritized = IsPrioritized(sampling);
  TestTable buf(capacity, StressSpec(kNoWrapBlob), sampling, 11);
  Tally tally;
  std::vector<std::vector<Seen>> seen(2);
  std::unordered_map<int64_t, double> last;
  RunStress(buf, rows, 24, false, &tally, &seen, [&](const std::atomic<bool>* done) {
    if (prioritized) UpdateOwnKeys(&buf, done, &tally, &last);
  });
  CheckTally(tally);
  CHECK(buf.written() == total);
  CHECK(buf.size() == total);
  // Every (w, seq) stored exactly once; nothing wrapped, so slot s holds key s, and each
  // writer's keys grow with its sequence numbers.
  StressRows stored(total, kNoWrapBlob);
  std::vector<std::vector<int64_t>> slot_of(kWriters, std::vector<int64_t>(rows, -1));
  int64_t bad_stored = 0, duplicated = 0, missing = 0, out_of_order = 0;
  for (int64_t slot = 0; slot < total; ++slot) {
    stored.LoadStored(buf, slot, slot);
    int w = 0;
    int64_t seq = 0;
    if (!stored.Consistent(slot, &w, &seq) || w >= kWriters || seq >= rows) {
      ++bad_stored;
      continue;
    }
    if (slot_of[w][seq] >= 0) ++duplicated;
    slot_of[w][seq] = slot;
  }
  for (int w = 0; w < kWriters; ++w) {
    int64_t previous = -1;
    for (int64_t seq = 0; seq < rows; ++seq) {
      const int64_t slot = slot_of[w][seq];
      if (slot < 0) {
        ++missing;
        continue;
      }
      if (slot <= previous) ++out_of_order;
      previous = slot;
    }
  }
  CHECK(bad_stored == 0);
  CHECK(duplicated == 0);
  CHECK(missing == 0);
  CHECK(out_of_order == 0);
  // The key Sample reported with each row is exact: key k is the item stored in slot k.
  int64_t wrong_keys = 0;
  for (const auto& v : seen) {
    for (const Seen& s : v) {
      if (s.key < 0 || s.key >= total || stored.tag[s.key] != s.tag) ++wrong_keys;
    }
  }
  CHECK(wrong_keys == 0);
  const PrioritizedSelector* per = dynamic_cast<const PrioritizedSelector*>(&buf.selector());
  if (prioritized) {
    // Each updated key holds (p + eps)^alpha = p of the last update it got.
    int64_t wrong_priority = 0;
    for (const auto& [key, p] : last) {
      if (!(std::fabs(per->StoredPriority(key) - p) <= 1e-9 * p)) ++wrong_priority;
    }
    CHECK(!last.empty());
    CHECK(wrong_priority == 0);
    int64_t zero = 0;
    for (int64_t slot = 0; slot < total; ++slot) zero += per->tree().leaf(slot) == 0;
    CHECK(zero == 0);
    CHECK(TreeAgreesWithLeaves(per->tree()));
    CHECK(buf.stale_updates() == tally.stale.load());
  }
  // Still usable: a sample and a priority update.
  StressDraw d(256, kNoWrapBlob);
  d.From(buf, 256);
  int64_t bad_final = 0;
  for (int64_t i = 0; i < 256; ++i) {
    int w = 0;
    int64_t seq = 0;
    const int64_t key = d.keys[i];
    if (!d.rows.Consistent(i, &w, &seq) || key < 0 || key >= total ||
        stored.tag[key] != d.rows.tag[i]) {
      ++bad_final;
    }
  }
  CHECK(bad_final == 0);
  const std::vector<double> two(256, 2.0);
  if (prioritized) {
    CHECK(buf.UpdatePriorities(d.keys.data(), two.data(), 256) == 0);
    int64_t wrong = 0;
    for (int64_t key : d.keys) wrong += std::fabs(per->StoredPriority(key) - 2.0) > 2e-9;
    CHECK(wrong == 0);
    CHECK(TreeAgreesWithLeaves(per->tree()));
  } else {
    CHECK_THROWS(buf.UpdatePriorities(d.keys.data(), two.data(), 256), std::invalid_argument);
  }
  std::printf("  (%s: %.2f s; %lld rows by %d writers, %lld sampled, %zu priorities checked)\n",
              label, SecondsSince(t0), static_cast<long long>(total), kWriters,
              static_cast<long long>(tally.sampled.load()), last.size());
}

// ---- 2. The same with a ring that wraps many times -------------------------------------------

void WrapAround(const reverie_test::SamplerConfig& sampling, const char* label) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t capacity = 64;
  const int64_t rows = 100000 / kWorkDivisor;  // per writer
  const int64_t total = kWriters * rows;
  const bool prioritized = IsPrioritized(sampling);
  TestTable buf(capacity, StressSpec(kWrapBlob), sampling, 12);
  Tally tally;
  std::vector<std::vector<Seen>> seen(2);
  // Batches of at most 8: three writers then hold at most 24 of the 64 slots at once, so a
  // sampler always finds committed rows.
  RunStress(buf, rows, 8, prioritized, &tally, &seen, [&](const std::atomic<bool>* done) {
    if (prioritized) UpdateRandomKeys(&buf, done, &tally);
  });
  CheckTally(tally);
  CHECK(buf.written() == total);
  CHECK(buf.size() == capacity);
  // Every item was committed, so slot s holds the one key k in [total - capacity, total) with
  // k % capacity == s; the stored rows are distinct, and each writer's stored rows are the
  // last ones it wrote (its keys grow with its sequence numbers).
  StressRows stored(capacity, kWrapBlob);
  std::map<int64_t, int64_t> key_of_tag;
  std::vector<std::vector<int64_t>> seqs(kWriters);
  int64_t bad_stored = 0;
  for (int64_t slot = 0; slot < capacity; ++slot) {
    stored.LoadStored(buf, slot, slot);
    int w = 0;
    int64_t seq = 0;
    if (!stored.Consistent(slot, &w, &seq) || w >= kWriters || seq >= rows) {
      ++bad_stored;
      continue;
    }
    const int64_t key =
        total - capacity + ((slot - total % capacity) % capacity + capacity) % capacity;
    key_of_tag[stored.tag[slot]] = key;
    seqs[w].push_back(seq);
  }
  CHECK(bad_stored == 0);
  CHECK(static_cast<int64_t>(key_of_tag.size()) == capacity);
  int64_t not_last = 0;
  for (auto& s : seqs) {
    std::sort(s.begin(), s.end());
    for (size_t j = 0; j < s.size(); ++j) {
      not_last += s[j] != rows - static_cast<int64_t>(s.size()) + static_cast<int64_t>(j);
    }
  }
  CHECK(not_last == 0);
  // Keys seen while the ring wrapped: each writer's keys grow with its sequence numbers, one
  // key per row, and rows still stored were reported with their stored key.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> by_writer(kWriters);  // (seq, key)
  int64_t wrong_keys = 0;
  for (const auto& v : seen) {
    for (const Seen& s : v) {
      if (s.key < 0 || s.key >= total) ++wrong_keys;
      const auto it = key_of_tag.find(s.tag);
      if (it != key_of_tag.end() && it->second != s.key) ++wrong_keys;
      by_writer[static_cast<size_t>(s.tag >> 32)].push_back({s.tag & 0xffffffff, s.key});
    }
  }
  for (auto& v : by_writer) {
    std::sort(v.begin(), v.end());
    for (size_t j = 1; j < v.size(); ++j) {
      const bool same_row = v[j].first == v[j - 1].first;
      if (same_row ? v[j].second != v[j - 1].second : v[j].second <= v[j - 1].second) ++wrong_keys;
    }
  }
  CHECK(wrong_keys == 0);
  // Still usable.
  StressDraw d(128, kWrapBlob);
  d.From(buf, 128);
  int64_t bad_final = 0;
  for (int64_t i = 0; i < 128; ++i) {
    int w = 0;
    int64_t seq = 0;
    const auto it = key_of_tag.find(d.rows.tag[i]);
    if (!d.rows.Consistent(i, &w, &seq) || it == key_of_tag.end() || it->second != d.keys[i]) {
      ++bad_final;
    }
  }
  CHECK(bad_final == 0);
  if (prioritized) {
    const std::vector<double> pr(128, 1.5);
    CHECK(buf.UpdatePriorities(d.keys.data(), pr.data(), 128) == 0);
    const auto& per = dynamic_cast<const PrioritizedSelector&>(buf.selector());
    int64_t zero = 0;
    for (int64_t slot = 0; slot < capacity; ++slot) zero += per.tree().leaf(slot) == 0;
    CHECK(zero == 0);
    CHECK(TreeAgreesWithLeaves(per.tree()));
    CHECK(buf.stale_updates() == tally.stale.load());
    CHECK(tally.stale.load() > 0);  // the ring did overwrite keys under the updaters
  }
  std::printf("  (%s: %.2f s; %lld rows through %lld slots, %lld sampled, %lld stale updates)\n",
              label, SecondsSince(t0), static_cast<long long>(total),
              static_cast<long long>(capacity), static_cast<long long>(tally.sampled.load()),
              static_cast<long long>(tally.stale.load()));
}

// ---- 3. Rate limiter -------------------------------------------------------------------------

std::vector<FieldSpec> TagSpec() { return {FieldSpec{"tag", DType::kInt64, {}}}; }

void AddTag(TestTable& buf, int64_t tag) {
  const FieldInput in = MakeInput("tag", &tag, DType::kInt64, {}, -1);
  buf.Add(&in, 1);
}

// Samples `batch` tags (and their keys) from a TagSpec buffer.
void SampleTags(TestTable& buf, int64_t batch, std::vector<int64_t>* tags,
                std::vector<int64_t>* keys, std::vector<float>* weights = nullptr) {
  tags->resize(static_cast<size_t>(batch));
  keys->resize(static_cast<size_t>(batch));
  uint8_t* out[1] = {reinterpret_cast<uint8_t*>(tags->data())};
  buf.Sample(batch, out, keys->data(), weights != nullptr ? weights->data() : nullptr);
}

RateLimitConfig Limit(int64_t min_size, double spi, double tolerance, double timeout) {
  return RateLimitConfig{true, min_size, spi, tolerance, timeout};
}

// Waits up to `seconds` for flag to become true.
bool WaitFor(const std::atomic<bool>& flag, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!flag.load() && SecondsSince(t0) < seconds) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return flag.load();
}

// One inserter and one sampler under samples_per_insert = 2 with waits that never time out.
void RatioBetweenThreads() {
  const auto t0 = std::chrono::steady_clock::now();
  TestTable buf(256, TagSpec(), UniformSampling(), 3);
  const int64_t min_size = 64, batch = 16;
  const double spi = 2.0, tolerance = 64.0;
  buf.rate_limiter().Configure(Limit(min_size, spi, tolerance, -1.0));
  const int64_t inserts = 100000 / kWorkDivisor;
  // All that one sampler can take once every insert is in: D = 2 * inserts - S must stay
  // >= spi * min_size - tolerance = 64 before each sample.
  const int64_t target = (2 * inserts - 64) / batch * batch;
  // The band, as seen after each call (a call is checked before it runs, so it may overshoot
  // by its own size): D <= 2 * 64 + 64 + 2 after an insert, D >= 64 - 16 after a sample.
  const double most = spi * min_size + tolerance + spi, least = spi * min_size - tolerance - batch;
  std::atomic<int64_t> ahead{0}, behind{0}, bad_tags{0}, errors{0};
  std::atomic<bool> inserter_done{false}, sampler_done{false};
  std::thread inserter([&] {
    try {
      for (int64_t i = 0; i < inserts; ++i) {
        AddTag(buf, i);
        const double d = spi * static_cast<double>(buf.written()) -
                         static_cast<double>(buf.rate_limiter().sampled());
        if (d > most) ++ahead;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  inserter threw: %s\n", e.what());
      ++errors;
    }
    inserter_done = true;
  });
  std::thread sampler([&] {
    try {
      std::vector<int64_t> tags, keys;
      for (int64_t s = 0; s < target; s += batch) {
        SampleTags(buf, batch, &tags, &keys);
        const double d = spi * static_cast<double>(buf.written()) -
                         static_cast<double>(buf.rate_limiter().sampled());
        if (d < least) ++behind;
        for (int64_t i = 0; i < batch; ++i) {
          // One writer: item k has key k and was given tag k.
          if (tags[i] != keys[i] || tags[i] < 0 || tags[i] >= inserts) ++bad_tags;
        }
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  sampler threw: %s\n", e.what());
      ++errors;
    }
    sampler_done = true;
  });
  const bool finished = WaitFor(inserter_done, 30.0) && WaitFor(sampler_done, 10.0);
  if (!finished) {
    std::fprintf(stderr, "  inserter/sampler stuck at %lld inserted, %lld sampled\n",
                 static_cast<long long>(buf.written()),
                 static_cast<long long>(buf.rate_limiter().sampled()));
    RateLimitConfig off;
    buf.rate_limiter().Configure(off);  // lets both return
  }
  inserter.join();
  sampler.join();
  CHECK(finished);
  CHECK(errors.load() == 0);
  CHECK(ahead.load() == 0);
  CHECK(behind.load() == 0);
  CHECK(bad_tags.load() == 0);
  CHECK(buf.written() == inserts);
  CHECK(buf.rate_limiter().sampled() == target);
  const double ratio = static_cast<double>(buf.rate_limiter().sampled()) /
                       static_cast<double>(buf.written());
  CHECK(std::fabs(ratio - spi) <= 0.05 * spi);
  std::printf("  (ratio: %.2f s; %lld inserted, %lld sampled, ratio %.4f)\n", SecondsSince(t0),
              static_cast<long long>(inserts), static_cast<long long>(target), ratio);
}

void Timeouts() {
  // Under-filled (10 < min_size 64): timeout 0 refuses at once, 0.05 s after 0.05 s.
  TestTable buf(64, TagSpec(), UniformSampling(), 4);
  for (int64_t i = 0; i < 10; ++i) AddTag(buf, i);
  std::vector<int64_t> tags, keys;
  buf.rate_limiter().Configure(Limit(64, 0.0, 0.0, 0.0));
  CHECK(!buf.rate_limiter().CanSample());
  CHECK_THROWS(SampleTags(buf, 1, &tags, &keys), reverie::TimeoutError);
  buf.rate_limiter().Configure(Limit(64, 0.0, 0.0, 0.05));
  const auto t0 = std::chrono::steady_clock::now();
  bool thrown = false;
  try {
    SampleTags(buf, 1, &tags, &keys);
  } catch (const reverie::TimeoutError&) {
    thrown = true;
  }
  const double waited = SecondsSince(t0);
  CHECK(thrown);
  CHECK(waited >= 0.05 - 1e-9);
  CHECK(buf.rate_limiter().sampled() == 0);  // refused samples are not counted
  CHECK(buf.sample_calls() == 0);
  // Inserts: spi 1, tolerance 0, min_size 1 allow two inserts ahead of sampling.
  TestTable ins(64, TagSpec(), UniformSampling(), 4);
  ins.rate_limiter().Configure(Limit(1, 1.0, 0.0, 0.0));
  AddTag(ins, 0);
  AddTag(ins, 1);
  CHECK_THROWS(AddTag(ins, 2), reverie::TimeoutError);
  CHECK(ins.written() == 2);
}

void ChangesWakeWaiters() {
  // A sampler blocked by the ratio is woken by a samples_per_insert change from another
  // thread (to 0: ratio control off, which admits it whatever the limiter does with the
  // history when the ratio changes).
  TestTable buf(64, TagSpec(), UniformSampling(), 5);
  for (int64_t i = 0; i < 10; ++i) AddTag(buf, i);
  RateLimitConfig rl = Limit(1, 1.0, 0.0, -1.0);
  buf.rate_limiter().Configure(rl);
  std::vector<int64_t> tags, keys;
  SampleTags(buf, 10, &tags, &keys);  // D = 10 - 0 >= 1: allowed; now D = 0
  CHECK(!buf.rate_limiter().CanSample());
  std::atomic<bool> sampled{false};
  std::atomic<int> errors{0};
  std::thread sampler([&] {
    try {
      std::vector<int64_t> t, k;
      SampleTags(buf, 4, &t, &k);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  blocked sampler threw: %s\n", e.what());
      ++errors;
    }
    sampled = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(!sampled.load());  // D = 0 < 1: it cannot have been admitted
  rl.samples_per_insert = 0.0;
  buf.rate_limiter().Configure(rl);
  const bool woke = WaitFor(sampled, 10.0);
  if (!woke) buf.rate_limiter().Configure(RateLimitConfig{});  // release it
  sampler.join();
  CHECK(woke);
  CHECK(errors.load() == 0);
  CHECK(buf.rate_limiter().sampled() == 14);

  // An insert blocked by the ratio is woken by a wider tolerance (D - D0 = 1 <= 10).
  TestTable ins(64, TagSpec(), UniformSampling(), 5);
  rl = Limit(1, 1.0, 0.0, -1.0);
  ins.rate_limiter().Configure(rl);
  AddTag(ins, 0);
  AddTag(ins, 1);
  std::atomic<bool> inserted{false};
  std::thread inserter([&] {
    try {
      AddTag(ins, 2);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  blocked inserter threw: %s\n", e.what());
      ++errors;
    }
    inserted = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(!inserted.load() && ins.written() == 2);
  rl.tolerance = 10.0;
  ins.rate_limiter().Configure(rl);
  const bool woke_insert = WaitFor(inserted, 10.0);
  if (!woke_insert) ins.rate_limiter().Configure(RateLimitConfig{});
  inserter.join();
  CHECK(woke_insert);
  CHECK(errors.load() == 0);
  CHECK(ins.written() == 3);
}

// ---- 4, 5. Processes that die in the middle -------------------------------------------------

void SkipUnderTsan(const char* what) {
  std::printf("  (%s skipped under ThreadSanitizer: fork() with threads running)\n", what);
}

// A row of 512 KiB: copying one takes long enough for a SIGKILL to land in the middle.
constexpr int64_t kBigElements = int64_t{1} << 16;

std::vector<FieldSpec> BigSpec() {
  return {FieldSpec{"tag", DType::kInt64, {}}, FieldSpec{"obs", DType::kFloat64, {kBigElements}}};
}

struct BigRows {
  std::vector<int64_t> tag;
  std::vector<double> obs;

  explicit BigRows(int64_t n)
      : tag(static_cast<size_t>(n)), obs(static_cast<size_t>(n * kBigElements)) {}
  void Set(int64_t i, int64_t t) {
    tag[i] = t;
    std::fill(obs.begin() + i * kBigElements, obs.begin() + (i + 1) * kBigElements,
              static_cast<double>(t));
  }
  bool Consistent(int64_t i) const {
    const double t = static_cast<double>(tag[i]);
    return std::all_of(obs.begin() + i * kBigElements, obs.begin() + (i + 1) * kBigElements,
                       [t](double v) { return v == t; });
  }
  std::array<FieldInput, 2> Inputs(int64_t n, bool batched) const {
    const int64_t lead = batched ? n : -1;
    return {MakeInput("tag", tag.data(), DType::kInt64, {}, lead),
            MakeInput("obs", obs.data(), DType::kFloat64, {kBigElements}, lead)};
  }
  void Sample(TestTable& buf, int64_t batch, int64_t* keys, float* weights) {
    uint8_t* out[2] = {reinterpret_cast<uint8_t*>(tag.data()),
                       reinterpret_cast<uint8_t*>(obs.data())};
    buf.Sample(batch, out, keys, weights);
  }
};

struct AfterDeath {
  bool recovered = false;  // the parent's first locked call repaired the tree
  bool tree_before = false, tree_after = false;
  size_t distinct = 0;      // priority values among the child's keys
  int64_t foreign = 0;      // priorities the child never set
  bool sum_matches = false;  // sum of StoredPriority == the tree's total
  int64_t bad_draws = 0;
  int64_t stale = -1;
};

void LockHolderDies() {
  // A process attached to a shared prioritized buffer updates every priority over and over
  // (about 0.1 s per round, nearly all of it under the writer lock) and exits in the middle
  // of its second round: the lock's holder is gone. The parent must carry on (no deadlock),
  // with the tree rebuilt from its leaves, each leaf being one round's value or the next's.
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t capacity = int64_t{1} << 20;
  const std::string name = SegmentName("lock");
  const reverie_test::SamplerConfig sampling = PrioritizedSampling(1.0, 0.4, 0.0);
  const uint64_t seed = 21;
  const auto unlink_segment = [&] { shm_unlink(("/" + name).c_str()); };
  auto round_value = [](int64_t round) { return 1.0 + static_cast<double>(round % 40 + 1) * 0.25; };
  int attempts = 0;
  bool recovered = false;
  {
    TestTable buf(capacity, TagSpec(), sampling, seed,
                     StorageConfig{StorageConfig::Kind::kCreateShared, name});
    const auto& per = dynamic_cast<const PrioritizedSelector&>(buf.selector());
    std::vector<int64_t> order(static_cast<size_t>(capacity));
    std::iota(order.begin(), order.end(), int64_t{0});
    {
      const FieldInput in = MakeInput("tag", order.data(), DType::kInt64, {}, capacity);
      buf.Extend(&in, 1);  // item k has tag k (and key k)
    }
    std::shuffle(order.begin(), order.end(), std::mt19937_64(3));  // the child's update order
    // The child may exit between rounds (not holding the lock): try again then.
    for (; attempts < 4 && !recovered; ++attempts) {
      const uint64_t epoch_before = per.epoch();
      std::fflush(stdout);
      std::fflush(stderr);
      const pid_t child = fork();
      if (child == 0) {
        try {
          TestTable att(capacity, TagSpec(), sampling, seed,
                           StorageConfig{StorageConfig::Kind::kAttachShared, name});
          std::atomic<int64_t> rounds{0}, first_ns{0};
          std::thread updater([&] {
            std::vector<double> pr(static_cast<size_t>(capacity));
            for (int64_t round = 0;; ++round) {
              std::fill(pr.begin(), pr.end(), round_value(round));
              const auto start = std::chrono::steady_clock::now();
              att.UpdatePriorities(order.data(), pr.data(), capacity);
              if (round == 0) {
                first_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::steady_clock::now() - start)
                               .count();
              }
              rounds = round + 1;
            }
          });
          const auto start = std::chrono::steady_clock::now();
          while (rounds.load() == 0) {
            if (SecondsSince(start) > 60) _exit(4);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
          std::this_thread::sleep_for(std::chrono::nanoseconds(first_ns.load() / 2));
          _exit(0);  // ends every thread, the updater inside its second round
        } catch (...) {
          _exit(2);
        }
      }
      int status = 0;
      waitpid(child, &status, 0);
      CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) break;
      AfterDeath r;
      FinishWithin("Add/Sample/UpdatePriorities after the lock's holder died", 10.0, [&] {
        // Add takes the writer lock first: it repairs the tree if the holder died.
        AddTag(buf, capacity + attempts);  // key capacity + attempts, slot `attempts`
        r.recovered = per.epoch() != epoch_before;
        r.tree_before = TreeAgreesWithLeaves(per.tree());
        // Slots 0 .. attempts hold the parent's new items; every other leaf was set by the
        // child: the values of two consecutive rounds at most.
        std::set<double> values;
        double sum = 0;
        for (int64_t slot = 0; slot < capacity; ++slot) {
          const double q = per.StoredPriority(slot);
          sum += q;
          if (slot <= attempts) continue;
          values.insert(q);
        }
        r.distinct = values.size();
        for (double q : values) {
          bool known = false;
          for (int64_t round = 0; round < 40; ++round) known |= q == round_value(round);
          r.foreign += !known;
        }
        const double unit = per.StoredPriority(capacity - 1) /
                            static_cast<double>(per.tree().leaf(capacity - 1));
        const double total = static_cast<double>(per.tree().total()) * unit;
        r.sum_matches = std::fabs(sum - total) <= 1e-9 * total;
        std::vector<int64_t> tags, keys;
        std::vector<float> weights(256);
        SampleTags(buf, 256, &tags, &keys, &weights);
        for (int64_t i = 0; i < 256; ++i) {
          const float w = weights[i];
          r.bad_draws += tags[i] != keys[i] || !(w > 0.0f && w <= 1.0f);
        }
        const std::vector<double> pr(256, 3.0);
        r.stale = buf.UpdatePriorities(keys.data(), pr.data(), 256);
        r.tree_after = TreeAgreesWithLeaves(per.tree());
      }, unlink_segment);
      recovered = r.recovered;
      CHECK(r.tree_before && r.tree_after);
      CHECK(r.distinct >= 1 && r.distinct <= 2);
      CHECK(r.foreign == 0);
      CHECK(r.sum_matches);
      CHECK(r.bad_draws == 0);
      CHECK(r.stale == 0);
    }
  }
  CHECK(recovered);  // some child did die holding the lock
  CHECK(LeftoverSegments() == 0);
  std::printf("  (%.2f s; %d child(ren), the last died holding the lock: %s)\n", SecondsSince(t0),
              attempts, recovered ? "yes" : "no");
}

void DeadWriter(const reverie_test::SamplerConfig& sampling, const char* label) {
  // A process attached to a shared buffer extends it with batches of 4 big rows in a loop
  // and is SIGKILLed: almost surely in the middle of a copy, leaving slots stamped WRITING
  // by a dead process (and, for a prioritized buffer, maybe the writer lock held). Those
  // rows are never sampled; the parent's writers take the slots over without waiting.
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t capacity = 16, child_batch = 4, child_tag = 1000000;
  const std::string name = SegmentName(label);
  const uint64_t seed = 8;
  const auto unlink_segment = [&] { shm_unlink(("/" + name).c_str()); };
  bool mid_write = false;
  int attempts = 0;
  {
    TestTable buf(capacity, BigSpec(), sampling, seed,
                     StorageConfig{StorageConfig::Kind::kCreateShared, name});
    BigRows one(1);
    for (int64_t i = 0; i < capacity; ++i) {
      one.Set(0, i);
      const auto in = one.Inputs(1, false);
      buf.Add(in.data(), in.size());
    }
    int64_t next_tag = 1000;  // the parent's rows after each kill
    for (; attempts < 3 && !mid_write; ++attempts) {
      int fds[2];
      CHECK(pipe(fds) == 0);
      std::fflush(stdout);
      std::fflush(stderr);
      const pid_t child = fork();
      if (child == 0) {
        close(fds[0]);
        try {
          TestTable att(capacity, BigSpec(), sampling, seed,
                           StorageConfig{StorageConfig::Kind::kAttachShared, name});
          BigRows mine(child_batch);
          for (int64_t j = 0; j < child_batch; ++j) mine.Set(j, child_tag + j);
          const auto in = mine.Inputs(child_batch, true);
          att.Extend(in.data(), in.size());
          const char c = 'x';
          if (write(fds[1], &c, 1) != 1) _exit(3);
          for (;;) att.Extend(in.data(), in.size());
        } catch (...) {
          _exit(2);
        }
      }
      close(fds[1]);
      pollfd p{fds[0], POLLIN, 0};
      char c = 0;
      const bool started = poll(&p, 1, 30000) == 1 && read(fds[0], &c, 1) == 1;
      close(fds[0]);
      CHECK(started);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      kill(child, SIGKILL);
      int status = 0;
      waitpid(child, &status, 0);
      CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
      const int64_t committed = buf.written();
      int64_t torn = 0, foreign = 0, bad_weights = 0;
      const int64_t first_tag = next_tag;
      auto sample_some = [&](int rounds) {
        BigRows d(8);
        std::vector<int64_t> keys(8);
        std::vector<float> weights(8, 1.0f);
        for (int round = 0; round < rounds; ++round) {
          d.Sample(buf, 8, keys.data(), weights.data());
          for (int64_t i = 0; i < 8; ++i) {
            torn += !d.Consistent(i);
            const int64_t t = d.tag[i];
            foreign += !((t >= 0 && t < capacity) ||
                         (t >= child_tag && t < child_tag + child_batch) ||
                         (t >= 1000 && t < next_tag));
            bad_weights += !(weights[i] > 0.0f && weights[i] <= 1.0f);
          }
        }
      };
      FinishWithin("sampling and writing after a writer was killed", 20.0, [&] {
        sample_some(40);
        for (int64_t i = 0; i < 2 * capacity; ++i) {
          one.Set(0, next_tag++);
          const auto in = one.Inputs(1, false);
          buf.Add(in.data(), in.size());
        }
        sample_some(20);
      }, unlink_segment);
      CHECK(torn == 0);
      CHECK(foreign == 0);
      CHECK(bad_weights == 0);
      CHECK(buf.written() == committed + 2 * capacity);
      CHECK(buf.size() == capacity);
      // Now the slots hold the parent's last `capacity` rows: its row i (key C + i, C the
      // keys claimed before it started) in slot (C + i) % capacity. The dead writer's batch
      // was claimed but never counted as written: C - committed is its size.
      const auto* tags = reinterpret_cast<const int64_t*>(buf.storage().column(0));
      const auto* obs = reinterpret_cast<const double*>(buf.storage().column(1));
      std::set<int64_t> c_mod;
      int64_t bad_stored = 0;
      for (int64_t slot = 0; slot < capacity; ++slot) {
        const int64_t i = tags[slot] - first_tag;
        bad_stored += i < capacity || i >= 2 * capacity;
        for (int64_t e = 0; e < kBigElements; ++e) {
          bad_stored += obs[slot * kBigElements + e] != static_cast<double>(tags[slot]);
        }
        c_mod.insert(((slot - i) % capacity + capacity) % capacity);
      }
      CHECK(bad_stored == 0);
      CHECK(c_mod.size() == 1);
      const int64_t in_flight = ((*c_mod.begin() - committed) % capacity + capacity) % capacity;
      CHECK(in_flight == 0 || in_flight == child_batch);
      mid_write = in_flight == child_batch;
      if (IsPrioritized(sampling)) {
        CHECK(TreeAgreesWithLeaves(dynamic_cast<const PrioritizedSelector&>(buf.selector()).tree()));
      }
    }
  }
  CHECK(mid_write);  // some child was killed in the middle of its batch
  CHECK(LeftoverSegments() == 0);
  std::printf("  (%s: %.2f s; %d child(ren) killed, the last in the middle of a write: %s)\n",
              label, SecondsSince(t0), attempts, mid_write ? "yes" : "no");
}

}  // namespace

TEST(WritersSamplersUpdatersStress) {
  WritersSamplersUpdaters(UniformSampling(), "uniform");
  WritersSamplersUpdaters(PrioritizedSampling(1.0, 0.4, 0.0), "prioritized");
}

TEST(WrapAroundStress) {
  WrapAround(UniformSampling(), "uniform");
  WrapAround(PrioritizedSampling(0.6, 0.4, 1e-6), "prioritized");
}

TEST(RateLimiterThreads) {
  RatioBetweenThreads();
  Timeouts();
  ChangesWakeWaiters();
}

TEST(RobustWriterLockRecovery) {
  if (kThreadSanitizer) return SkipUnderTsan("RobustWriterLockRecovery");
  LockHolderDies();
}

TEST(DeadWriterSlotNotSampled) {
  if (kThreadSanitizer) return SkipUnderTsan("DeadWriterSlotNotSampled");
  DeadWriter(UniformSampling(), "dead-uniform");
  DeadWriter(PrioritizedSampling(0.6, 0.4, 1e-6), "dead-prioritized");
}
