// Tests of each part of a table (issue 13): the configuration and its canonical form, the
// reservoir and top-k writers, threshold admission, the uniform live set, the prioritized
// selector with removals, max_times_sampled (also with sampling threads), item metadata,
// stale keys for every writer, and a whole-table restore. References are stated here, apart
// from the core: a Philox of this file, std::partial_sort, plain counting.
// One file for every part's tests, in a section per part (long, as test_concurrency.cc is).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "buffer_helpers.h"
#include "harness.h"
#include "reverie/admission.h"
#include "reverie/keep_top_k.h"
#include "reverie/philox.h"
#include "reverie/prioritized_selector.h"
#include "reverie/reservoir_writer.h"
#include "reverie/table.h"
#include "reverie/uniform_selector.h"

using namespace reverie;
using reverie_test::LoadState;
using reverie_test::SaveState;
using reverie_test::SavedState;
using reverie_test::conc::FinishWithin;
using reverie_test::conc::kThreadSanitizer;
using reverie_test::conc::MakeInput;
using reverie_test::conc::TreeAgreesWithLeaves;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- Checks that print what they compared ------------------------------------------------

std::string Show(long v) { return std::to_string(v); }
[[maybe_unused]] std::string Show(long long v) { return std::to_string(v); }
[[maybe_unused]] std::string Show(int v) { return std::to_string(v); }
std::string Show(unsigned long v) { return std::to_string(v); }
[[maybe_unused]] std::string Show(unsigned long long v) { return std::to_string(v); }
[[maybe_unused]] std::string Show(bool v) { return v ? "true" : "false"; }
std::string Show(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}
std::string Show(const std::string& v) { return "\"" + v + "\""; }
template <typename T>
std::string Show(const T&) {
  return "(not shown)";
}

#define CHECK_EQ(a, b)                                                                      \
  do {                                                                                      \
    const auto& a_ = (a);                                                                   \
    const auto& b_ = (b);                                                                   \
    if (!(a_ == b_)) {                                                                      \
      std::fprintf(stderr, "  %s:%d: CHECK_EQ failed: %s == %s (%s vs %s)\n", __FILE__,     \
                   __LINE__, #a, #b, Show(a_).c_str(), Show(b_).c_str());                  \
      ++::reverie_test::Failures();                                                         \
    }                                                                                       \
  } while (0)

// fn() must throw E whose message holds each of `words` (loosely: messages may be reworded).
template <typename E, typename Fn>
void ExpectThrows(const char* expr, int line, Fn&& fn, const std::vector<std::string>& words) {
  try {
    fn();
  } catch (const E& e) {
    const std::string message = e.what();
    for (const std::string& w : words) {
      if (message.find(w) == std::string::npos) {
        std::fprintf(stderr, "  %s:%d: %s: message lacks '%s': %s\n", __FILE__, line, expr,
                     w.c_str(), message.c_str());
        ++reverie_test::Failures();
      }
    }
    return;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "  %s:%d: %s threw another type: %s\n", __FILE__, line, expr, e.what());
    ++reverie_test::Failures();
    return;
  }
  std::fprintf(stderr, "  %s:%d: %s did not throw\n", __FILE__, line, expr);
  ++reverie_test::Failures();
}
#define CHECK_THROWS_WITH(type, expr, ...) \
  ExpectThrows<type>(#expr, __LINE__, [&] { expr; }, {__VA_ARGS__})

// ---- Tables of (id, score, obs) items ------------------------------------------------------

std::vector<FieldSpec> ItemSpec() {
  return {FieldSpec{"id", DType::kInt64, {}}, FieldSpec{"score", DType::kFloat64, {}},
          FieldSpec{"obs", DType::kFloat32, {2}}};
}

ConfigValue Part(const char* kind) {
  ConfigValue p = ConfigValue::MakeMap();
  p.Set("kind", ConfigValue::String(kind));
  return p;
}
ConfigValue Part(const char* kind, const char* key, ConfigValue value) {
  ConfigValue p = Part(kind);
  p.Set(key, std::move(value));
  return p;
}
ConfigValue TopK(const char* score = "score") {
  return Part("keep_top_k", "score", ConfigValue::String(score));
}
ConfigValue Uniform(bool replacement) {
  return Part("uniform", "replacement", ConfigValue::Bool(replacement));
}
ConfigValue Prioritized(double alpha, double beta, double eps) {
  ConfigValue p = Part("prioritized", "alpha", ConfigValue::Double(alpha));
  p.Set("beta", ConfigValue::Double(beta));
  p.Set("eps", ConfigValue::Double(eps));
  return p;
}
ConfigValue Threshold(const char* field, double value) {
  ConfigValue p = Part("threshold", "field", ConfigValue::String(field));
  p.Set("value", ConfigValue::Double(value));
  return p;
}

// The parts of a table beyond its capacity, spec and seed.
struct Setup {
  ConfigValue writer = Part("fifo");
  ConfigValue selector = Uniform(true);
  ConfigValue admission;  // null: none
  int64_t max_times = 0;  // 0: none
  bool metadata = false;
};

ConfigValue Config(int64_t capacity, uint64_t seed, const Setup& s) {
  ConfigValue extra = ConfigValue::MakeMap();
  extra.Set("writer", s.writer);
  extra.Set("selector", s.selector);
  if (!s.admission.is_null()) extra.Set("admission", s.admission);
  if (s.max_times > 0) extra.Set("max_times_sampled", ConfigValue::Int(s.max_times));
  extra.Set("metadata", ConfigValue::Bool(s.metadata));
  return reverie_test::TableConfig(capacity, ItemSpec(), reverie_test::conc::UniformSampling(),
                                   seed, {}, extra);
}

std::vector<int64_t> Ids(int64_t first, int64_t n) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = first + i;
  return ids;
}
std::vector<double> Zeros(size_t n) { return std::vector<double>(n, 0.0); }

// Offers items (ids[i], scores[i], obs (id, -id)) in one Extend; returns how many it stored.
int64_t Offer(Table& t, const std::vector<int64_t>& ids, const std::vector<double>& scores,
              const std::vector<uint8_t>* mask = nullptr) {
  const auto n = static_cast<int64_t>(ids.size());
  std::vector<float> obs(2 * ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    obs[2 * i] = static_cast<float>(ids[i]);
    obs[2 * i + 1] = -static_cast<float>(ids[i]);
  }
  const std::array<FieldInput, 3> in = {MakeInput("id", ids.data(), DType::kInt64, {}, n),
                                        MakeInput("score", scores.data(), DType::kFloat64, {}, n),
                                        MakeInput("obs", obs.data(), DType::kFloat32, {2}, n)};
  return t.Extend(in.data(), in.size(), mask != nullptr ? mask->data() : nullptr,
                  mask != nullptr ? n : 0);
}

// One item through Add.
int64_t OfferOne(Table& t, int64_t id, double score) {
  const float obs[2] = {static_cast<float>(id), -static_cast<float>(id)};
  const std::array<FieldInput, 3> in = {MakeInput("id", &id, DType::kInt64, {}, -1),
                                        MakeInput("score", &score, DType::kFloat64, {}, -1),
                                        MakeInput("obs", obs, DType::kFloat32, {2}, -1)};
  return t.Add(in.data(), in.size());
}

// A stored item as the table's columns hold it.
struct Held {
  int64_t slot, key, id;
  double score;
  bool operator==(const Held& o) const {
    return slot == o.slot && key == o.key && id == o.id &&
           std::memcmp(&score, &o.score, sizeof(score)) == 0;
  }
};

// The stored items, oldest first. Only for a table no thread writes.
std::vector<Held> HeldItems(const Table& t) {
  std::vector<Held> out;
  for (int64_t key : t.StoredKeys()) {
    const int64_t slot = t.codec().Slot(key);
    Held h{slot, key, 0, 0.0};
    std::memcpy(&h.id, t.storage().column(0) + slot * 8, 8);
    std::memcpy(&h.score, t.storage().column(1) + slot * 8, 8);
    out.push_back(h);
  }
  return out;
}

std::multiset<int64_t> HeldIds(const Table& t) {
  std::multiset<int64_t> ids;
  for (const Held& h : HeldItems(t)) ids.insert(h.id);
  return ids;
}

int64_t ScalarOf(const Table& t, const char* name) { return StateInt(t.Scalars(), name); }

// One batch: rows, keys, weights and metadata.
struct Drawn {
  std::vector<int64_t> keys, ids, inserted, version, times, last;
  std::vector<double> scores;
  std::vector<float> obs, weights;

  explicit Drawn(int64_t n)
      : keys(static_cast<size_t>(n)), ids(keys.size()), inserted(keys.size()), version(keys.size()),
        times(keys.size()), last(keys.size()), scores(keys.size()), obs(2 * keys.size()),
        weights(keys.size(), -1.0f) {}
  std::array<uint8_t*, 3> Out() {
    return {reinterpret_cast<uint8_t*>(ids.data()), reinterpret_cast<uint8_t*>(scores.data()),
            reinterpret_cast<uint8_t*>(obs.data())};
  }
  BatchMeta Meta() { return BatchMeta{inserted.data(), version.data(), times.data(), last.data()}; }
  bool operator==(const Drawn& o) const {
    return keys == o.keys && ids == o.ids && inserted == o.inserted && version == o.version &&
           times == o.times && last == o.last && obs == o.obs && weights == o.weights;
  }
};

// Whether the table keeps item metadata columns (metadata on); a table with only a
// max_times_sampled count refuses metadata requests.
bool KeepsMetadata(const Table& t) { return t.metadata() != nullptr && t.metadata()->columns(); }

// Sample(batch) with metadata (when the table keeps it).
Drawn SampleItems(Table& t, int64_t batch) {
  Drawn d(batch);
  auto out = d.Out();
  BatchMeta meta = d.Meta();
  t.Sample(batch, out.data(), d.keys.data(), d.weights.data(), KeepsMetadata(t) ? &meta : nullptr);
  return d;
}

// Get(keys), with metadata when the table keeps any.
Drawn GetItems(const Table& t, const std::vector<int64_t>& keys) {
  Drawn d(static_cast<int64_t>(keys.size()));
  d.keys = keys;
  auto out = d.Out();
  BatchMeta meta = d.Meta();
  t.Get(keys.data(), static_cast<int64_t>(keys.size()), out.data(),
        KeepsMetadata(t) ? &meta : nullptr);
  return d;
}

// Whether two saved states are byte for byte the same.
bool SameState(const SavedState& a, const SavedState& b) {
  return a.arrays == b.arrays && a.scalars.ToJson() == b.scalars.ToJson();
}

// ---- References --------------------------------------------------------------------------

// Philox4x32-10 (Salmon et al., SC 2011) as the paper defines it, written apart from philox.h.
std::array<uint32_t, 4> PhiloxRef(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * c[0];
    const uint64_t p1 = uint64_t{0xCD9E8D57u} * c[2];
    c = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
         static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
    k[0] += 0x9E3779B9u;
    k[1] += 0xBB67AE85u;
  }
  return c;
}

// The reservoir's documented rule (reservoir_writer.h): offer n (from 0) past the capacity
// replaces slot j = floor(r * (n + 1) / 2^64) when j < capacity, else it is dropped; r is
// Philox keyed by the seed at counter (2^32 - 1, 1, n low, n high), as c0 << 32 | c1.
int64_t ReservoirSlotRef(uint64_t seed, int64_t n, int64_t capacity) {
  const auto u = static_cast<uint64_t>(n);
  const auto out =
      PhiloxRef({0xFFFFFFFFu, 1u, static_cast<uint32_t>(u), static_cast<uint32_t>(u >> 32)},
                {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  const uint64_t r = (static_cast<uint64_t>(out[0]) << 32) | out[1];
  const auto j = static_cast<int64_t>((static_cast<unsigned __int128>(r) * (u + 1)) >> 64);
  return j < capacity ? j : -1;
}

// A reader of the canonical JSON (no whitespace), into configuration values.
class JsonReader {
 public:
  explicit JsonReader(std::string text) : s_(std::move(text)) {}
  ConfigValue Read() {
    ConfigValue v = Value();
    if (i_ != s_.size()) Fail("trailing text");
    return v;
  }

 private:
  [[noreturn]] void Fail(const char* what) const {
    throw std::runtime_error(std::string("json: ") + what + " at " + std::to_string(i_) + " of " +
                             s_);
  }
  char Peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void Expect(const char* word) {
    const size_t n = std::strlen(word);
    if (s_.compare(i_, n, word) != 0) Fail("unexpected word");
    i_ += n;
  }
  ConfigValue Value() {
    const char c = Peek();
    if (c == 'n') return Expect("null"), ConfigValue();
    if (c == 't') return Expect("true"), ConfigValue::Bool(true);
    if (c == 'f') return Expect("false"), ConfigValue::Bool(false);
    if (c == '"') return ConfigValue::String(String());
    if (c == '[') {
      ++i_;
      ConfigValue list = ConfigValue::MakeList();
      if (Peek() == ']') return ++i_, list;
      for (;;) {
        list.Append(Value());
        const char d = Peek();
        ++i_;
        if (d == ']') return list;
        if (d != ',') Fail("expected , or ]");
      }
    }
    if (c == '{') {
      ++i_;
      ConfigValue map = ConfigValue::MakeMap();
      if (Peek() == '}') return ++i_, map;
      for (;;) {
        const std::string key = String();
        if (Peek() != ':') Fail("expected :");
        ++i_;
        map.Set(key, Value());
        const char d = Peek();
        ++i_;
        if (d == '}') return map;
        if (d != ',') Fail("expected , or }");
      }
    }
    const size_t start = i_;
    while (i_ < s_.size() && std::strchr("+-0123456789.eE", s_[i_]) != nullptr) ++i_;
    const std::string number = s_.substr(start, i_ - start);
    if (number.empty()) Fail("expected a value");
    if (number.find_first_of(".eE") != std::string::npos) {
      return ConfigValue::Double(std::strtod(number.c_str(), nullptr));
    }
    if (number[0] == '-') return ConfigValue::Int(std::strtoll(number.c_str(), nullptr, 10));
    return ConfigValue::UInt(std::strtoull(number.c_str(), nullptr, 10));
  }
  std::string String() {
    if (Peek() != '"') Fail("expected a string");
    ++i_;
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) Fail("unterminated string");
      const char c = s_[i_++];
      if (c == '"') return out;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      const char e = s_[i_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          const long code = std::strtol(s_.substr(i_, 4).c_str(), nullptr, 16);
          if (code >= 0x80) Fail("non-ASCII escape");
          out.push_back(static_cast<char>(code));
          i_ += 4;
          break;
        }
        default: Fail("unknown escape");
      }
    }
  }

  std::string s_;
  size_t i_ = 0;
};

bool SameBits(double a, double b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

// ======== Configuration ===================================================================

TEST(PartsConfigJsonIsCanonicalAndReadsBackExactly) {
  // Keys sorted whatever the order they were set in; integers as integers, doubles with 17
  // digits (and ".0" when integral), strings escaped.
  const std::vector<std::pair<std::string, ConfigValue>> entries = {
      {"zeta", ConfigValue::Int(1)},
      {"alpha", ConfigValue::Double(0.1)},
      {"mid", ConfigValue::MakeList({ConfigValue::Bool(true), ConfigValue(),
                                     ConfigValue::String("q\"uo\\te\n\t\x01")})},
      {"big", ConfigValue::UInt(std::numeric_limits<uint64_t>::max())},
      {"neg", ConfigValue::Int(-42)},
      {"two", ConfigValue::Double(2.0)},
      {"tiny", ConfigValue::Double(5e-324)},
      {"third", ConfigValue::Double(1.0 / 3.0)},
      {"negzero", ConfigValue::Double(-0.0)},
      {"huge", ConfigValue::Double(std::numeric_limits<double>::max())},
      {"nested",
       ConfigValue::MakeMap({{"b", ConfigValue::Int(2)}, {"a", ConfigValue::MakeList()}})},
  };
  ConfigValue forward = ConfigValue::MakeMap(), backward = ConfigValue::MakeMap();
  for (const auto& [k, v] : entries) forward.Set(k, v);
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) backward.Set(it->first, it->second);
  const std::string expected =
      "{\"alpha\":0.10000000000000001,\"big\":18446744073709551615,"
      "\"huge\":1.7976931348623157e+308,\"mid\":[true,null,\"q\\\"uo\\\\te\\n\\t\\u0001\"],"
      "\"neg\":-42,\"negzero\":-0.0,\"nested\":{\"a\":[],\"b\":2},\"third\":0.33333333333333331,"
      "\"tiny\":4.9406564584124654e-324,\"two\":2.0,\"zeta\":1}";
  CHECK_EQ(forward.ToJson(), expected);
  CHECK_EQ(backward.ToJson(), expected);

  // Read back: the same text, the same types, the same bits.
  const ConfigValue back = JsonReader(expected).Read();
  CHECK_EQ(back.ToJson(), expected);
  CHECK(back.Get("big").type() == ConfigValue::Type::kUInt);
  CHECK_EQ(back.Get("big").AsUInt("big"), std::numeric_limits<uint64_t>::max());
  CHECK(back.Get("two").type() == ConfigValue::Type::kDouble);
  CHECK(SameBits(back.Get("tiny").AsDouble("tiny"), 5e-324));
  CHECK(SameBits(back.Get("negzero").AsDouble("negzero"), -0.0));
  CHECK(SameBits(back.Get("third").AsDouble("third"), 1.0 / 3.0));
  CHECK_EQ(back.Get("mid").AsList("mid")[2].AsString("s"), std::string("q\"uo\\te\n\t\x01"));

  // Every finite double reads back bit for bit.
  std::mt19937_64 rng(5);
  int64_t inexact = 0;
  for (int i = 0; i < 20000; ++i) {
    uint64_t bits = rng();
    double v;
    std::memcpy(&v, &bits, sizeof(v));
    if (!std::isfinite(v)) continue;
    const ConfigValue read = JsonReader(ConfigValue::Double(v).ToJson()).Read();
    inexact += read.type() != ConfigValue::Type::kDouble || !SameBits(read.AsDouble("v"), v);
  }
  CHECK_EQ(inexact, int64_t{0});

  // inf and NaN have no canonical form.
  CHECK_THROWS_WITH(std::invalid_argument, ConfigValue::Double(kInf).ToJson(), "finite");
  CHECK_THROWS_WITH(std::invalid_argument,
                    ConfigValue::MakeList({ConfigValue::Double(kNaN)}).ToJson(), "finite");

  // A table's configuration read back builds a table with the same canonical text.
  Setup s;
  s.writer = TopK();
  s.selector = Prioritized(0.6, 0.4, 1e-6);
  s.admission = Threshold("score", -1.5);
  s.max_times = 3;
  s.metadata = true;
  const ConfigValue config = Config(16, 0xF00DF00DF00DF00Dull, s);
  Table t(config, {});
  CHECK_EQ(t.config_json(), config.ToJson());
  Table again(JsonReader(t.config_json()).Read(), {});
  CHECK_EQ(again.config_json(), t.config_json());
  CHECK_EQ(again.seed(), uint64_t{0xF00DF00DF00DF00Dull});
}

TEST(PartsConfigTypedReadsNameTheSetting) {
  CHECK_THROWS_WITH(TypeError, ConfigValue::String("x").AsInt("capacity"), "capacity", "integer");
  CHECK_THROWS_WITH(TypeError, ConfigValue::Int(1).AsString("kind"), "kind", "string");
  CHECK_THROWS_WITH(std::invalid_argument, ConfigValue::Int(-1).AsUInt("seed"), "seed", ">= 0");
  CHECK_THROWS_WITH(std::invalid_argument,
                    ConfigValue::UInt(std::numeric_limits<uint64_t>::max()).AsInt("capacity"),
                    "capacity");
  CHECK_THROWS_WITH(std::invalid_argument, ConfigValue::MakeMap().At("score", "KeepTopK"),
                    "KeepTopK", "score");
}

// The fingerprint is the FNV-1a that config.h names (it once started from the offset basis
// with its last digit dropped).
TEST(PartsFnv1aMatchesPublishedVectors) {
  // FNV-1a 64-bit test vectors (Fowler, Noll, Vo).
  CHECK_EQ(Fnv1a(""), uint64_t{0xcbf29ce484222325ull});
  CHECK_EQ(Fnv1a("a"), uint64_t{0xaf63dc4c8601ec8cull});
  CHECK_EQ(Fnv1a("foobar"), uint64_t{0x85944171f73967e8ull});
}

// The fingerprint of a table file covers every setting but the live ones: a table reopens
// with other live settings (and keeps its own), and refuses any other difference.
TEST(PartsFingerprintIgnoresOnlyLiveSettings) {
  const std::string path = "/tmp/reverie-parts-" + std::to_string(getpid()) + ".table";
  ::unlink(path.c_str());
  const StorageConfig file{StorageConfig::Kind::kFile, path};
  Setup s;
  s.writer = TopK();
  s.selector = Prioritized(0.6, 0.4, 1e-6);
  s.admission = Threshold("score", 1.0);
  const ConfigValue made = Config(16, 9, s);
  {
    Table t(made, file);
    CHECK(!t.reopened());
    CHECK_EQ(Offer(t, Ids(0, 5), {1, 2, 3, 0.5, 4}), int64_t{4});
    t.SetLive("selector", "beta", ConfigValue::Double(0.25));
    CHECK_EQ(Table::StoredConfig(file), t.config_json());
  }
  Setup live = s;
  live.selector = Prioritized(0.6, 0.9, 1e-6);
  live.admission = Threshold("score", 3.0);
  {
    Table t(Config(16, 9, live), file);
    CHECK(t.reopened());
    CHECK_EQ(t.size(), int64_t{4});
    CHECK_EQ(t.Live("selector").Get("beta").AsDouble("beta"), 0.25);
    CHECK_EQ(t.Live("admission").Get("value").AsDouble("value"), 1.0);
    CHECK_EQ(Table::StoredConfig(file), made.ToJson());
  }
  std::vector<std::pair<const char*, ConfigValue>> others;
  {
    Setup o = s;
    o.selector = Prioritized(0.7, 0.4, 1e-6);
    others.emplace_back("alpha", Config(16, 9, o));
    others.emplace_back("seed", Config(16, 10, s));
    others.emplace_back("capacity", Config(32, 9, s));
    o = s;
    o.writer = Part("reservoir");
    others.emplace_back("writer", Config(16, 9, o));
    o = s;
    o.writer = TopK("id");
    others.emplace_back("score field", Config(16, 9, o));
    o = s;
    o.admission = Threshold("id", 1.0);
    others.emplace_back("admission field", Config(16, 9, o));
    o = s;
    o.metadata = true;
    others.emplace_back("metadata", Config(16, 9, o));
    o = s;
    o.max_times = 2;
    others.emplace_back("max_times_sampled", Config(16, 9, o));
  }
  for (const auto& [what, config] : others) {
    bool refused = false;
    try {
      Table t(config, file);
    } catch (const std::invalid_argument& e) {
      refused = std::string(e.what()).find("settings") != std::string::npos;
      if (!refused) std::fprintf(stderr, "  %s: unexpected message: %s\n", what, e.what());
    }
    if (!refused) std::fprintf(stderr, "  a table differing in %s was not refused\n", what);
    CHECK(refused);
  }
  {
    Table t(made, file);  // still the same table
    CHECK(t.reopened());
    CHECK_EQ(t.size(), int64_t{4});
  }
  ::unlink(path.c_str());
}

TEST(PartsConfigErrorsSayWhatWasWrongAndWhatWasExpected) {
  auto with = [](std::function<void(Setup*)> change, int64_t capacity = 8) {
    Setup s;
    change(&s);
    return Config(capacity, 1, s);
  };
  auto make = [](const ConfigValue& c) { Table t(c, {}); };
  CHECK_THROWS_WITH(std::invalid_argument, make(with([](Setup* s) { s->writer = Part("lifo"); })),
                    "lifo", "fifo", "reservoir", "keep_top_k");
  CHECK_THROWS_WITH(std::invalid_argument, make(with([](Setup* s) { s->selector = Part("heap"); })),
                    "heap", "uniform", "prioritized");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->admission = Part("always"); })), "always",
                    "threshold");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->writer = ConfigValue::String("fifo"); })), "kind");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->writer = ConfigValue::MakeMap(); })), "kind");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->selector = Prioritized(-1.0, 0.4, 0.0); })),
                    "alpha", "-1");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->selector = Prioritized(0.6, -0.5, 0.0); })),
                    "beta", "-0.5");
  // (A non-finite number anywhere is refused by the canonical form, without its name.)
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->selector = Prioritized(0.6, kInf, 0.0); })),
                    "finite");
  CHECK_THROWS_WITH(TypeError, make(with([](Setup* s) {
                      s->selector = Part("prioritized", "alpha", ConfigValue::String("big"));
                    })),
                    "alpha", "number");
  CHECK_THROWS_WITH(TypeError, make(with([](Setup* s) {
                      s->selector = Part("uniform", "replacement", ConfigValue::Int(1));
                    })),
                    "replacement", "bool");
  CHECK_THROWS_WITH(std::invalid_argument, make(with([](Setup* s) { s->writer = TopK("nope"); })),
                    "nope", "id", "score", "obs");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->writer = Part("keep_top_k"); })), "score");
  CHECK_THROWS_WITH(TypeError, make(with([](Setup* s) { s->writer = TopK("obs"); })), "obs",
                    "scalar");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->writer = TopK("priority"); })), "priority",
                    "rioritized");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->admission = Threshold("score", kNaN); })),
                    "finite");
  CHECK_THROWS_WITH(std::invalid_argument,
                    make(with([](Setup* s) { s->admission = Threshold("missing", 1.0); })),
                    "missing", "score");
  CHECK_THROWS_WITH(TypeError, make(with([](Setup* s) { s->admission = Threshold("obs", 1.0); })),
                    "obs", "scalar");
  CHECK_THROWS_WITH(std::invalid_argument, make(with([](Setup* s) {
                      s->writer = Part("reservoir");
                      s->max_times = 2;
                    })),
                    "max_times_sampled");
  ConfigValue bad = Config(8, 1, Setup{});
  bad.Set("max_times_sampled", ConfigValue::Int(0));
  CHECK_THROWS_WITH(std::invalid_argument, make(bad), "max_times_sampled", "1", "0");
  bad = Config(8, 1, Setup{});
  bad.Set("capacty", ConfigValue::Int(8));
  CHECK_THROWS_WITH(std::invalid_argument, make(bad), "capacty");
  CHECK_THROWS_WITH(std::invalid_argument, make(with([](Setup*) {}, 0)), "capacity", "1", "0");
}

// A part refuses settings it does not have, as the table refuses unknown table settings: a
// misspelt option ({"kind": "uniform", "replacment": false}) is an error, not a default.
TEST(PartsSettingsWithUnknownNamesAreRefused) {
  auto make = [](const ConfigValue& c) { Table t(c, {}); };
  Setup s;
  s.selector = Part("uniform", "replacment", ConfigValue::Bool(false));
  CHECK_THROWS_WITH(std::invalid_argument, make(Config(8, 1, s)), "replacment");
  s = Setup{};
  s.writer = Part("reservoir", "size", ConfigValue::Int(4));
  CHECK_THROWS_WITH(std::invalid_argument, make(Config(8, 1, s)), "size");
  s = Setup{};
  s.selector = Prioritized(0.6, 0.4, 1e-6);
  s.selector.Set("alhpa", ConfigValue::Double(1.0));
  CHECK_THROWS_WITH(std::invalid_argument, make(Config(8, 1, s)), "alhpa");
}

// ======== Reservoir =======================================================================

TEST(PartsPhiloxReferenceMatchesKnownAnswers) {
  // Random123's known-answer vectors for philox4x32-10.
  using Block = std::array<uint32_t, 4>;
  CHECK((PhiloxRef({0, 0, 0, 0}, {0, 0}) ==
         Block{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  CHECK((PhiloxRef({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                   {0xffffffffu, 0xffffffffu}) ==
         Block{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  CHECK((PhiloxRef({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                   {0xa4093822u, 0x299f31d0u}) ==
         Block{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
  // philox.h computes the same.
  const PhiloxCounter c = Philox4x32({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                     {0xa4093822u, 0x299f31d0u});
  CHECK((Block{c.c0, c.c1, c.c2, c.c3} ==
         Block{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(PartsReservoirFirstOffersFillSlotsInOrder) {
  Setup s;
  s.writer = Part("reservoir");
  Table t(Config(16, 7, s), {});
  CHECK_EQ(Offer(t, Ids(0, 5), Zeros(5)), int64_t{5});
  CHECK_EQ(OfferOne(t, 5, 0.0), int64_t{1});
  CHECK_EQ(Offer(t, Ids(6, 10), Zeros(10)), int64_t{10});
  const std::vector<Held> held = HeldItems(t);
  CHECK_EQ(held.size(), size_t{16});
  for (size_t i = 0; i < held.size(); ++i) {
    CHECK_EQ(held[i].slot, static_cast<int64_t>(i));
    CHECK_EQ(held[i].id, static_cast<int64_t>(i));
    CHECK_EQ(held[i].key, t.codec().Key(0, static_cast<int64_t>(i)));
  }
  CHECK_EQ(ScalarOf(t, "reservoir.offers"), int64_t{16});
  CHECK_EQ(ScalarOf(t, "reservoir.rejected"), int64_t{0});
  CHECK_EQ(ScalarOf(t, "reservoir.filled"), int64_t{16});
}

// Algorithm R with the documented draw, simulated here for thousands of offers in batches of
// random sizes (larger than the capacity too), for a seed that uses both key words.
TEST(PartsReservoirReplacesTheSlotsAlgorithmRPicks) {
  for (const uint64_t seed : {uint64_t{12345}, uint64_t{0xDEADBEEF00000001ull}}) {
    const int64_t capacity = 64, offers = 4000;
    Setup s;
    s.writer = Part("reservoir");
    Table t(Config(capacity, seed, s), {});
    std::vector<int64_t> ref_id(capacity, -1), writes(capacity, 0);
    int64_t rejected = 0, placed = 0, wrong_returns = 0, wrong_rule = 0;
    std::mt19937_64 rng(seed);
    for (int64_t n = 0; n < offers;) {
      const int64_t size = std::min<int64_t>(offers - n, 1 + static_cast<int64_t>(rng() % 100));
      int64_t expected = 0;
      for (int64_t i = n; i < n + size; ++i) {
        const int64_t slot = i < capacity ? i : ReservoirSlotRef(seed, i, capacity);
        if (i >= capacity) wrong_rule += ReservoirWriter::Replaces(seed, i, capacity) != slot;
        if (slot < 0) {
          ++rejected;
          continue;
        }
        ref_id[static_cast<size_t>(slot)] = i;
        ++writes[static_cast<size_t>(slot)];
        ++expected;
      }
      wrong_returns += Offer(t, Ids(n, size), Zeros(static_cast<size_t>(size))) != expected;
      placed += expected;
      n += size;
    }
    CHECK_EQ(wrong_returns, int64_t{0});
    CHECK_EQ(wrong_rule, int64_t{0});
    CHECK(rejected > offers / 2);  // the rule was exercised: most late offers are dropped
    int64_t wrong_items = 0;
    for (const Held& h : HeldItems(t)) {
      wrong_items += h.id != ref_id[static_cast<size_t>(h.slot)] ||
                     t.codec().Generation(h.key) != writes[static_cast<size_t>(h.slot)] - 1;
    }
    CHECK_EQ(wrong_items, int64_t{0});
    CHECK_EQ(t.size(), capacity);
    CHECK_EQ(t.written(), placed);
    CHECK_EQ(ScalarOf(t, "reservoir.offers"), offers);
    CHECK_EQ(ScalarOf(t, "reservoir.rejected"), rejected);
  }
}

// One extend of many offers decides exactly as the same offers added one by one (masked rows
// are no offers at all).
TEST(PartsReservoirBatchEqualsOneByOne) {
  Setup s;
  s.writer = Part("reservoir");
  Table batched(Config(32, 99, s), {}), single(Config(32, 99, s), {});
  std::mt19937_64 rng(3);
  int64_t id = 0, differences = 0;
  for (int round = 0; round < 80; ++round) {
    const int64_t size = 1 + static_cast<int64_t>(rng() % 60);
    const std::vector<int64_t> ids = Ids(id, size);
    std::vector<double> scores(ids.size());
    for (double& v : scores) v = static_cast<double>(rng() % 1000) / 8.0;
    std::vector<uint8_t> mask(ids.size(), 1);
    const bool masked = round % 5 == 4;
    if (masked) {
      for (uint8_t& m : mask) m = rng() % 3 != 0;
    }
    const int64_t got = Offer(batched, ids, scores, masked ? &mask : nullptr);
    int64_t one_by_one = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (mask[i] != 0) one_by_one += OfferOne(single, ids[i], scores[i]);
    }
    differences += got != one_by_one;
    differences += !(HeldItems(batched) == HeldItems(single));
    differences += batched.Scalars().ToJson() != single.Scalars().ToJson();
    id += size;
  }
  CHECK_EQ(differences, int64_t{0});
  CHECK(SameState(SaveState(batched), SaveState(single)));
}

TEST(PartsReservoirRefusesMaxTimesSampled) {
  Setup s;
  s.writer = Part("reservoir");
  s.max_times = 1;
  CHECK_THROWS_WITH(std::invalid_argument, Table(Config(8, 1, s), {}), "max_times_sampled");
}

// ======== Keep top k ======================================================================

// After a random stream (many ties, some infinities, batches of random sizes) the table holds
// exactly the k best by (score, offer order), the newest winning ties; every extend returns
// how many of its items entered.
TEST(PartsKeepTopKHoldsTheKBestScores) {
  const int64_t k = 50, offers = 3000;
  Setup s;
  s.writer = TopK();
  Table t(Config(k, 3, s), {});
  std::mt19937_64 rng(2024);
  std::vector<std::pair<double, int64_t>> offered;       // (score, id); ids in offer order
  std::set<std::tuple<double, int64_t, int64_t>> held;  // (score, insertion, id)
  int64_t insertions = 0, wrong_returns = 0;
  for (int64_t id = 0; id < offers;) {
    const int64_t size = std::min<int64_t>(offers - id, 1 + static_cast<int64_t>(rng() % 40));
    std::vector<double> scores(static_cast<size_t>(size));
    int64_t entered = 0;
    for (int64_t i = 0; i < size; ++i) {
      const uint64_t r = rng();
      double score = static_cast<double>(static_cast<int64_t>(r % 100) - 20);
      if (r % 97 == 0) score = (r >> 32) % 2 != 0 ? kInf : -kInf;
      scores[static_cast<size_t>(i)] = score;
      offered.emplace_back(score, id + i);
      if (static_cast<int64_t>(held.size()) == k) {
        if (score < std::get<0>(*held.begin())) continue;
        held.erase(held.begin());
      }
      held.emplace(score, insertions++, id + i);
      ++entered;
    }
    wrong_returns += Offer(t, Ids(id, size), scores) != entered;
    id += size;
  }
  CHECK_EQ(wrong_returns, int64_t{0});
  std::partial_sort(offered.begin(), offered.begin() + k, offered.end(),
                    [](const auto& a, const auto& b) {
                      return a.first != b.first ? a.first > b.first : a.second > b.second;
                    });
  std::multiset<int64_t> best;
  std::map<int64_t, double> score_of;
  for (int64_t i = 0; i < k; ++i) {
    best.insert(offered[static_cast<size_t>(i)].second);
    score_of[offered[static_cast<size_t>(i)].second] = offered[static_cast<size_t>(i)].first;
  }
  CHECK(HeldIds(t) == best);
  int64_t wrong_scores = 0;
  for (const Held& h : HeldItems(t)) wrong_scores += !SameBits(h.score, score_of[h.id]);
  CHECK_EQ(wrong_scores, int64_t{0});
  const auto& writer = dynamic_cast<const KeepTopK&>(t.writer());
  CHECK_EQ(writer.held(), k);
  CHECK_EQ(writer.min_score(), offered[static_cast<size_t>(k - 1)].first);
  CHECK_EQ(t.written(), insertions);
  CHECK_EQ(ScalarOf(t, "keep_top_k.rejected"), offers - insertions);
}

// Ties: an item whose score equals the lowest held enters, evicting the oldest of the lowest.
TEST(PartsKeepTopKTiesEvictTheOldestOfTheLowest) {
  Setup s;
  s.writer = TopK();
  Table t(Config(3, 1, s), {});
  CHECK_EQ(Offer(t, {0, 1, 2}, {1.0, 1.0, 1.0}), int64_t{3});
  auto ids_by_slot = [&] {
    std::vector<int64_t> ids(3, -1);
    for (const Held& h : HeldItems(t)) ids[static_cast<size_t>(h.slot)] = h.id;
    return ids;
  };
  CHECK_EQ(OfferOne(t, 3, 1.0), int64_t{1});  // evicts 0, the oldest
  CHECK((ids_by_slot() == std::vector<int64_t>{3, 1, 2}));
  CHECK_EQ(OfferOne(t, 4, 0.5), int64_t{0});  // below the minimum
  CHECK_EQ(OfferOne(t, 5, 1.0), int64_t{1});  // evicts 1
  CHECK((ids_by_slot() == std::vector<int64_t>{3, 5, 2}));
  CHECK_EQ(OfferOne(t, 6, 2.0), int64_t{1});  // evicts 2: oldest of the three 1.0s
  CHECK((ids_by_slot() == std::vector<int64_t>{3, 5, 6}));
  CHECK_EQ(OfferOne(t, 7, 1.0), int64_t{1});  // evicts 3, older than 5
  CHECK((ids_by_slot() == std::vector<int64_t>{7, 5, 6}));
  CHECK_EQ(dynamic_cast<const KeepTopK&>(t.writer()).min_score(), 1.0);
}

// A NaN score is refused before anything changes: not the items before it in the batch, not
// a counter.
TEST(PartsKeepTopKRefusesNaNAndChangesNothing) {
  Setup s;
  s.writer = TopK();
  Table t(Config(4, 1, s), {});
  CHECK_EQ(Offer(t, {0, 1, 2}, {3.0, 1.0, 2.0}), int64_t{3});
  const SavedState before = SaveState(t);
  CHECK_THROWS_WITH(std::invalid_argument, Offer(t, {10, 11, 12}, {5.0, kNaN, 6.0}), "NaN");
  CHECK(SameState(SaveState(t), before));
  CHECK_THROWS_WITH(std::invalid_argument, OfferOne(t, 13, kNaN), "NaN");
  CHECK(SameState(SaveState(t), before));
  CHECK_EQ(t.written(), int64_t{3});
  CHECK_EQ(t.claimed(), int64_t{3});
  // 0.5 takes the free slot, 7.0 then evicts it (the lowest of a full table).
  CHECK_EQ(Offer(t, {14, 15}, {0.5, 7.0}), int64_t{2});
  CHECK((HeldIds(t) == std::multiset<int64_t>{0, 1, 2, 15}));
  const SavedState full = SaveState(t);
  CHECK_THROWS_WITH(std::invalid_argument, Offer(t, {16, 17}, {9.0, kNaN}), "NaN");
  CHECK(SameState(SaveState(t), full));
}

// extend returns how many of its items were stored: items below the minimum of a full table
// are dropped; an item stored and then evicted by a later item of the same call counts as
// stored (as FIFO counts items overwritten within one extend).
TEST(PartsKeepTopKExtendReturnsTheNumberStored) {
  Setup s;
  s.writer = TopK();
  Table t(Config(4, 1, s), {});
  CHECK_EQ(Offer(t, {0, 1, 2, 3}, {5, 8, 9, 10}), int64_t{4});
  CHECK_EQ(Offer(t, {4, 5, 6}, {1, 2, 3}), int64_t{0});
  CHECK_EQ(t.written(), int64_t{4});
  CHECK_EQ(ScalarOf(t, "keep_top_k.rejected"), int64_t{3});
  CHECK_EQ(Offer(t, {7, 8, 9, 10, 11}, {1, 6, 2, 7, 3}), int64_t{2});  // 6 evicts 5, 7 evicts 6
  CHECK((HeldIds(t) == std::multiset<int64_t>{1, 2, 3, 10}));
  CHECK_EQ(t.written(), int64_t{6});
  CHECK_EQ(ScalarOf(t, "keep_top_k.offers"), int64_t{12});
  CHECK_EQ(ScalarOf(t, "keep_top_k.rejected"), int64_t{6});
  CHECK_EQ(dynamic_cast<const KeepTopK&>(t.writer()).min_score(), 7.0);
}

// With a remover, slots freed by max_times_sampled take new items first (the most recently
// freed first), whatever their score; only a table with no free slot evicts.
TEST(PartsKeepTopKWithRemovalsFillsFreedSlotsFirst) {
  Setup s;
  s.writer = TopK();
  s.selector = Uniform(false);
  s.max_times = 1;
  Table t(Config(4, 6, s), {});
  CHECK_EQ(Offer(t, {0, 1, 2, 3}, {10, 20, 30, 40}), int64_t{4});
  const auto& writer = dynamic_cast<const KeepTopK&>(t.writer());
  const Drawn first = SampleItems(t, 1);
  const int64_t freed = t.codec().Slot(first.keys[0]);
  CHECK_EQ(t.size(), int64_t{3});
  CHECK_EQ(writer.held(), int64_t{3});
  auto id_in = [&](int64_t slot) {
    for (const Held& h : HeldItems(t)) {
      if (h.slot == slot) return h.id;
    }
    return int64_t{-1};
  };
  CHECK_EQ(OfferOne(t, 4, 5.0), int64_t{1});  // below every held score, into the free slot
  CHECK_EQ(id_in(freed), int64_t{4});
  CHECK_EQ(writer.held(), int64_t{4});
  CHECK_EQ(OfferOne(t, 5, 6.0), int64_t{1});  // full: evicts 5.0 (id 4), in that slot
  CHECK_EQ(id_in(freed), int64_t{5});
  CHECK_EQ(OfferOne(t, 6, 1.0), int64_t{0});  // below the minimum 6.0
  const Drawn two = SampleItems(t, 2);
  CHECK(two.keys[0] != two.keys[1]);
  CHECK_EQ(t.size(), int64_t{2});
  CHECK_EQ(OfferOne(t, 7, 0.5), int64_t{1});
  CHECK_EQ(id_in(t.codec().Slot(two.keys[1])), int64_t{7});  // freed last, filled first
  CHECK_EQ(OfferOne(t, 8, 0.25), int64_t{1});
  CHECK_EQ(id_in(t.codec().Slot(two.keys[0])), int64_t{8});
  CHECK_EQ(OfferOne(t, 9, 0.1), int64_t{0});
  CHECK_EQ(writer.min_score(), 0.25);
  CHECK_EQ(t.size(), int64_t{4});
}

// Scored by priority: a new item has the running max, so it enters and evicts the item of
// the lowest priority; priority updates reorder the heap.
TEST(PartsKeepTopKByPriorityEvictsTheLowestPriority) {
  Setup s;
  s.writer = TopK("priority");
  s.selector = Prioritized(1.0, 0.0, 0.0);
  Table t(Config(4, 2, s), {});
  CHECK_EQ(Offer(t, {0, 1, 2, 3}, Zeros(4)), int64_t{4});
  const std::vector<int64_t> keys = t.StoredKeys();
  const std::vector<double> p = {4, 1, 3, 2};
  CHECK_EQ(t.UpdatePriorities(keys.data(), p.data(), 4), int64_t{0});
  const auto& writer = dynamic_cast<const KeepTopK&>(t.writer());
  CHECK_EQ(writer.min_score(), 1.0);
  CHECK_EQ(OfferOne(t, 4, 0.0), int64_t{1});
  CHECK((HeldIds(t) == std::multiset<int64_t>{0, 2, 3, 4}));
  const auto& sel = dynamic_cast<const PrioritizedSelector&>(t.selector());
  CHECK_EQ(sel.StoredPriority(1), 4.0);  // the running max
  CHECK_EQ(writer.min_score(), 2.0);
  const int64_t fresh = t.codec().Key(1, 1);
  const double low = 0.5;
  CHECK_EQ(t.UpdatePriorities(&fresh, &low, 1), int64_t{0});
  CHECK_EQ(writer.min_score(), 0.5);
  CHECK_EQ(OfferOne(t, 5, 0.0), int64_t{1});
  CHECK((HeldIds(t) == std::multiset<int64_t>{0, 2, 3, 5}));
}

// ======== Threshold admission =============================================================

TEST(PartsThresholdAdmitsAtOrAboveItsLiveValue) {
  Setup s;
  s.admission = Threshold("score", 0.5);
  Table t(Config(16, 1, s), {});
  auto* rule = dynamic_cast<ThresholdAdmission*>(t.admission());
  CHECK(rule != nullptr);
  if (rule == nullptr) return;
  const double below = std::nextafter(0.5, 0.0);
  CHECK_EQ(Offer(t, Ids(0, 7), {0.4, 0.5, 0.6, kNaN, -kInf, kInf, below}), int64_t{3});
  CHECK((HeldIds(t) == std::multiset<int64_t>{1, 2, 5}));
  CHECK_EQ(rule->dropped(), int64_t{4});
  CHECK_EQ(ScalarOf(t, "threshold.dropped"), int64_t{4});

  t.SetLive("admission", "value", ConfigValue::Double(0.7));
  CHECK_EQ(rule->value(), 0.7);
  CHECK_EQ(t.Live("admission").Get("value").AsDouble("value"), 0.7);
  CHECK_EQ(Offer(t, {7, 8}, {0.6, 0.7}), int64_t{1});
  CHECK_EQ(rule->dropped(), int64_t{5});

  // Non-finite values are refused, keeping the value.
  CHECK_THROWS_WITH(std::invalid_argument,
                    t.SetLive("admission", "value", ConfigValue::Double(kInf)), "finite");
  CHECK_THROWS_WITH(std::invalid_argument,
                    t.SetLive("admission", "value", ConfigValue::Double(kNaN)), "finite");
  CHECK_THROWS_WITH(std::invalid_argument, rule->SetValue(-kInf), "finite");
  CHECK_THROWS(t.SetLive("admission", "threshold", ConfigValue::Double(1.0)),
               std::invalid_argument);
  CHECK_EQ(rule->value(), 0.7);

  // A caller's mask drops rows before the rule sees them (not counted by the rule).
  const std::vector<uint8_t> mask = {0, 1, 1};
  CHECK_EQ(Offer(t, {9, 10, 11}, {0.9, 0.9, 0.1}, &mask), int64_t{1});
  CHECK_EQ(rule->dropped(), int64_t{6});
  CHECK_EQ(OfferOne(t, 12, 0.7), int64_t{1});
  CHECK_EQ(OfferOne(t, 13, std::nextafter(0.7, 0.0)), int64_t{0});
  CHECK_EQ(rule->dropped(), int64_t{7});
  CHECK((HeldIds(t) == std::multiset<int64_t>{1, 2, 5, 8, 10, 12}));
  CHECK_EQ(t.written(), int64_t{6});
}

// A write refused by the writer (a NaN score for keep_top_k) after the admission rule ran
// leaves the rule's dropped count as it was (table.h: after an exception the table is as
// before): the rule's drops are counted only once the write went through.
TEST(PartsRefusedWriteLeavesTheAdmissionCountUnchanged) {
  Setup s;
  s.writer = TopK();               // ranks by score
  s.admission = Threshold("id", 0.0);  // admits by id
  Table t(Config(4, 1, s), {});
  CHECK_EQ(Offer(t, {1, 2}, {1.0, 2.0}), int64_t{2});
  const SavedState before = SaveState(t);
  CHECK_THROWS_WITH(std::invalid_argument, Offer(t, {-1, 3}, {1.0, kNaN}), "NaN");
  CHECK_EQ(ScalarOf(t, "threshold.dropped"), int64_t{0});
  CHECK(SameState(SaveState(t), before));
}

// ======== Uniform selector, live set ======================================================

TEST(PartsUniformLiveSetDrawsOnlyLiveSlots) {
  Setup s;
  s.max_times = 1;
  const int64_t capacity = 64;
  Table t(Config(capacity, 5, s), {});
  CHECK_EQ(Offer(t, Ids(0, capacity), Zeros(capacity)), capacity);
  const auto& sel = dynamic_cast<const UniformSelector&>(t.selector());
  CHECK(!sel.dense());
  CHECK_EQ(sel.live_count(), capacity);
  const Drawn used = SampleItems(t, 20);
  const std::set<int64_t> used_keys(used.keys.begin(), used.keys.end());
  CHECK_EQ(used_keys.size(), size_t{20});  // consume once: 20 distinct items
  CHECK_EQ(t.size(), int64_t{44});
  CHECK_EQ(sel.live_count(), int64_t{44});
  std::set<int64_t> live;
  for (const Held& h : HeldItems(t)) {
    live.insert(h.slot);
    CHECK(used_keys.count(h.key) == 0);
  }
  CHECK_EQ(live.size(), size_t{44});

  // Straight from the selector: only live slots, each about equally often.
  SampleRequest r;
  r.seed = 11;
  r.size = t.size();
  r.batch = 44;
  r.range = capacity;
  std::map<int64_t, int64_t> counts;
  int64_t outside = 0;
  const int calls = 200;
  for (int call = 0; call < calls; ++call) {
    r.call = static_cast<uint64_t>(call);
    std::vector<int64_t> slots(44);
    sel.Draw(r, 0, 44, slots.data());
    for (int64_t slot : slots) {
      outside += live.count(slot) == 0;
      ++counts[slot];
    }
  }
  CHECK_EQ(outside, int64_t{0});
  CHECK_EQ(counts.size(), size_t{44});
  double chi2 = 0;
  for (const auto& [slot, c] : counts) {
    const double off = static_cast<double>(c) - calls;
    chi2 += off * off / calls;
  }
  CHECK(chi2 < 77.4);  // 43 degrees of freedom, p = 0.001

  // FIFO writes slots 0..9 again: used slots among them come back into the live set.
  CHECK_EQ(Offer(t, Ids(capacity, 10), Zeros(10)), int64_t{10});
  int64_t refilled = 0;
  for (int64_t key : used_keys) refilled += t.codec().Slot(key) < 10;
  CHECK_EQ(sel.live_count(), 44 + refilled);
  CHECK_EQ(t.size(), 44 + refilled);
  CHECK_EQ(static_cast<int64_t>(t.StoredKeys().size()), 44 + refilled);

  // Everything left, once each.
  const Drawn rest = SampleItems(t, t.size());
  CHECK_EQ(std::set<int64_t>(rest.keys.begin(), rest.keys.end()).size(),
           static_cast<size_t>(44 + refilled));
  CHECK_EQ(t.size(), int64_t{0});
  CHECK_EQ(sel.live_count(), int64_t{0});
  CHECK_THROWS(SampleItems(t, 1), std::invalid_argument);
}

// Without replacement over the live set: every batch is distinct; draining takes each item
// exactly max_times_sampled times.
TEST(PartsUniformLiveSetWithoutReplacementBatchesAreDistinct) {
  Setup s;
  s.selector = Uniform(false);
  s.max_times = 3;
  s.metadata = true;
  Table t(Config(32, 8, s), {});
  CHECK_EQ(Offer(t, Ids(0, 32), Zeros(32)), int64_t{32});
  std::map<int64_t, std::vector<int64_t>> ordinals;
  int64_t repeated = 0, calls = 0;
  while (t.size() > 0 && calls < 200) {
    const Drawn d = SampleItems(t, std::min<int64_t>(8, t.size()));
    repeated += std::set<int64_t>(d.keys.begin(), d.keys.end()).size() != d.keys.size();
    for (size_t i = 0; i < d.keys.size(); ++i) ordinals[d.keys[i]].push_back(d.times[i]);
    ++calls;
  }
  CHECK_EQ(repeated, int64_t{0});
  CHECK_EQ(ordinals.size(), size_t{32});
  int64_t wrong = 0;
  for (auto& [key, seen] : ordinals) {
    std::sort(seen.begin(), seen.end());
    wrong += seen != std::vector<int64_t>{0, 1, 2};
  }
  CHECK_EQ(wrong, int64_t{0});
  CHECK_EQ(t.size(), int64_t{0});
  // Fewer items than a distinct batch needs.
  CHECK_EQ(Offer(t, Ids(32, 3), Zeros(3)), int64_t{3});
  CHECK_THROWS_WITH(std::invalid_argument, SampleItems(t, 4), "3");
}

// ======== Prioritized selector ============================================================

// Draw frequencies follow the priorities (alpha = 1: p_i / sum p), a zero priority is never
// drawn, and the weights are (min p / p_i)^beta.
TEST(PartsPrioritizedFrequencyFollowsPriority) {
  Setup s;
  s.selector = Prioritized(1.0, 1.0, 0.0);
  Table t(Config(8, 21, s), {});
  CHECK_EQ(Offer(t, Ids(0, 8), Zeros(8)), int64_t{8});
  const std::vector<int64_t> keys = t.StoredKeys();
  std::vector<double> p(8);
  for (size_t i = 0; i < 8; ++i) p[i] = static_cast<double>(i);  // slot i has priority i
  CHECK_EQ(t.UpdatePriorities(keys.data(), p.data(), 8), int64_t{0});
  const int calls = kThreadSanitizer ? 1000 : 4000;
  const int64_t batch = 16;
  std::vector<int64_t> counts(8, 0);
  int64_t bad_weights = 0;
  for (int c = 0; c < calls; ++c) {
    const Drawn d = SampleItems(t, batch);
    for (int64_t i = 0; i < batch; ++i) {
      const int64_t slot = t.codec().Slot(d.keys[static_cast<size_t>(i)]);
      ++counts[static_cast<size_t>(slot)];
      const double want = 1.0 / static_cast<double>(slot);
      bad_weights += std::fabs(d.weights[static_cast<size_t>(i)] - want) > 1e-6;
    }
  }
  CHECK_EQ(counts[0], int64_t{0});
  CHECK_EQ(bad_weights, int64_t{0});
  const double n = static_cast<double>(calls) * batch;
  double chi2 = 0;
  for (size_t i = 1; i < 8; ++i) {
    const double expected = n * static_cast<double>(i) / 28.0;
    const double off = static_cast<double>(counts[i]) - expected;
    chi2 += off * off / expected;
  }
  if (!(chi2 < 22.46)) std::fprintf(stderr, "  chi-square %.2f\n", chi2);
  CHECK(chi2 < 22.46);  // 6 degrees of freedom, p = 0.001
}

// A removed item's leaf becomes 0: neither the table nor the selector draws it again.
TEST(PartsPrioritizedRemovedItemsAreNeverDrawn) {
  Setup s;
  s.selector = Prioritized(1.0, 0.5, 0.0);
  s.max_times = 1;
  Table t(Config(16, 8, s), {});
  CHECK_EQ(Offer(t, Ids(0, 16), Zeros(16)), int64_t{16});
  std::vector<int64_t> keys = t.StoredKeys();
  std::vector<double> p(16);
  for (size_t i = 0; i < 16; ++i) p[i] = 1.0 + static_cast<double>(i % 5);
  CHECK_EQ(t.UpdatePriorities(keys.data(), p.data(), 16), int64_t{0});
  const auto& sel = dynamic_cast<const PrioritizedSelector&>(t.selector());
  std::set<int64_t> seen, removed;
  int64_t repeats = 0, live_leaves = 0, drawn_removed = 0;
  for (int step = 0; step < 16; ++step) {
    const Drawn d = SampleItems(t, 1);
    repeats += !seen.insert(d.keys[0]).second;
    const int64_t slot = t.codec().Slot(d.keys[0]);
    removed.insert(slot);
    live_leaves += sel.tree().leaf(slot) != 0;
    if (t.size() == 0) break;
    SampleRequest r;
    r.seed = 3;
    r.call = 1000 + static_cast<uint64_t>(step);
    r.size = t.size();
    r.batch = 64;
    std::vector<int64_t> slots(64);
    sel.Draw(r, 0, 64, slots.data());
    for (int64_t drawn : slots) drawn_removed += drawn < 0 || removed.count(drawn) != 0;
  }
  CHECK_EQ(repeats, int64_t{0});
  CHECK_EQ(seen.size(), size_t{16});
  CHECK_EQ(live_leaves, int64_t{0});
  CHECK_EQ(drawn_removed, int64_t{0});
  CHECK(TreeAgreesWithLeaves(sel.tree()));
  CHECK_EQ(sel.tree().total(), uint64_t{0});
  CHECK_EQ(t.size(), int64_t{0});
  CHECK_THROWS(SampleItems(t, 1), std::invalid_argument);
}

// ======== max_times_sampled ===============================================================

TEST(PartsMaxTimesSampledReturnsEachItemExactlyNTimes) {
  struct Case {
    const char* name;
    ConfigValue writer, selector;
  };
  const std::vector<Case> cases = {
      {"fifo, uniform", Part("fifo"), Uniform(true)},
      {"fifo, uniform without replacement", Part("fifo"), Uniform(false)},
      {"keep_top_k, uniform", TopK(), Uniform(true)},
      {"fifo, prioritized", Part("fifo"), Prioritized(0.6, 0.4, 1e-6)},
      {"keep_top_k, prioritized", TopK(), Prioritized(1.0, 0.0, 0.1)},
  };
  const int64_t n = 3, items = 32;
  for (const Case& c : cases) {
    Setup s;
    s.writer = c.writer;
    s.selector = c.selector;
    s.max_times = n;
    s.metadata = true;
    Table t(Config(items, 17, s), {});
    std::vector<double> scores(items);
    for (int64_t i = 0; i < items; ++i) scores[static_cast<size_t>(i)] = static_cast<double>(i);
    CHECK_EQ(Offer(t, Ids(0, items), scores), items);
    std::map<int64_t, std::vector<int64_t>> ordinals;
    int64_t calls = 0, total = 0;
    while (t.size() > 0 && calls < 1000) {
      const Drawn d = SampleItems(t, std::min<int64_t>(4, t.size()));
      for (size_t i = 0; i < d.keys.size(); ++i) ordinals[d.keys[i]].push_back(d.times[i]);
      total += static_cast<int64_t>(d.keys.size());
      ++calls;
    }
    int64_t wrong = 0;
    for (auto& [key, seen] : ordinals) {
      std::sort(seen.begin(), seen.end());
      wrong += seen != std::vector<int64_t>{0, 1, 2};
    }
    if (wrong != 0 || static_cast<int64_t>(ordinals.size()) != items) {
      std::fprintf(stderr, "  case %s\n", c.name);
    }
    CHECK_EQ(wrong, int64_t{0});
    CHECK_EQ(static_cast<int64_t>(ordinals.size()), items);
    CHECK_EQ(total, n * items);
    CHECK_EQ(t.size(), int64_t{0});
    CHECK(t.StoredKeys().empty());
    CHECK_THROWS(SampleItems(t, 1), std::invalid_argument);
    // The freed slots take new items.
    CHECK_EQ(Offer(t, Ids(items, items), scores), items);
    CHECK_EQ(t.size(), items);
    CHECK_EQ(SampleItems(t, 4).keys.size(), size_t{4});
  }
}

// What the draining threads saw.
struct DrainTally {
  std::mutex mu;
  std::vector<int64_t> keys;
  std::vector<std::string> errors;  // exceptions other than these two
  std::atomic<int64_t> refused{0};  // std::invalid_argument: nothing to take now
  std::atomic<int64_t> raced{0};    // std::runtime_error: see PartsConsumersOfAnEmptiedQueue...
};

// `threads` threads sample batches until `done()` and the table is empty.
void DrainWithThreads(Table& t, int threads, int64_t batch, const std::function<bool()>& done,
                      DrainTally* tally) {
  std::vector<std::thread> pool;
  for (int w = 0; w < threads; ++w) {
    pool.emplace_back([&] {
      std::vector<int64_t> mine;
      for (;;) {
        if (done() && t.size() == 0) break;
        try {
          const Drawn d = SampleItems(t, batch);
          mine.insert(mine.end(), d.keys.begin(), d.keys.end());
        } catch (const std::invalid_argument&) {
          ++tally->refused;  // nothing to take now (or another thread took it first)
          std::this_thread::yield();
        } catch (const std::runtime_error&) {
          ++tally->raced;
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(tally->mu);
          if (tally->errors.size() < 5) tally->errors.emplace_back(e.what());
        }
      }
      std::lock_guard<std::mutex> lock(tally->mu);
      tally->keys.insert(tally->keys.end(), mine.begin(), mine.end());
    });
  }
  for (std::thread& th : pool) th.join();
}

// Prints what the threads threw other than refusals (and notes the known race, see below).
void ReportErrors(const DrainTally& tally) {
  for (const std::string& e : tally.errors) {
    std::fprintf(stderr, "  sampler error: %s\n", e.c_str());
  }
  if (tally.raced > 0) {
    std::printf("  (%lld samples raced an emptied queue)\n",
                static_cast<long long>(tally.raced.load()));
  }
}

// A consume-once queue (max_times_sampled = 1) drained by 4 sampling threads at once: every
// item comes out exactly once. Then the same while a writer fills it.
TEST(PartsConsumeOnceQueueReturnsEveryItemOnceToFourThreads) {
  const int64_t items = kThreadSanitizer ? 512 : 4096, batch = 8;
  for (const ConfigValue& selector : {Uniform(true), Prioritized(0.6, 0.4, 1e-6)}) {
    Setup s;
    s.selector = selector;
    s.max_times = 1;
    Table t(Config(items, 31, s), {});
    for (int64_t i = 0; i < items; i += 256) Offer(t, Ids(i, 256), Zeros(256));
    std::vector<int64_t> expected = t.StoredKeys();
    DrainTally tally;
    FinishWithin("draining with 4 threads", 120,
                 [&] { DrainWithThreads(t, 4, batch, [] { return true; }, &tally); });
    std::sort(tally.keys.begin(), tally.keys.end());
    std::sort(expected.begin(), expected.end());
    CHECK_EQ(static_cast<int64_t>(tally.keys.size()), items);
    CHECK(tally.keys == expected);
    ReportErrors(tally);
    CHECK(tally.errors.empty());
    CHECK_EQ(t.size(), int64_t{0});
  }
  // A writer adds while 4 threads consume (no wrap: the capacity holds every item).
  Setup s;
  s.max_times = 1;
  Table t(Config(items, 32, s), {});
  std::atomic<bool> written{false};
  DrainTally tally;
  FinishWithin("consuming while writing", 120, [&] {
    std::thread writer([&] {
      for (int64_t i = 0; i < items; i += batch) Offer(t, Ids(i, batch), Zeros(batch));
      written.store(true);
    });
    DrainWithThreads(t, 4, batch, [&] { return written.load(); }, &tally);
    writer.join();
  });
  std::vector<int64_t> expected;
  for (int64_t i = 0; i < items; ++i) expected.push_back(t.codec().Key(0, i));
  std::sort(tally.keys.begin(), tally.keys.end());
  CHECK_EQ(static_cast<int64_t>(tally.keys.size()), items);
  CHECK(tally.keys == expected);
  ReportErrors(tally);
  CHECK(tally.errors.empty());
}

// Consumers of a consume-once queue racing for its last items: each call reserves its
// samples before drawing, so the losers are refused with the ValueError an empty queue
// gives (once this was a std::runtime_error from a draw that found nothing live, which also
// kept the call's count in the rate limiter). Racy by nature: many rounds of small queues
// drained by 4 threads.
TEST(PartsConsumersOfAnEmptiedQueueAreRefusedCleanly) {
  const int rounds = kThreadSanitizer ? 150 : 1000;
  int64_t raced = 0, leaked = 0, lost = 0;
  for (int r = 0; r < rounds && raced == 0; ++r) {
    Setup s;
    s.max_times = 1;
    Table t(Config(32, 100 + static_cast<uint64_t>(r), s), {});
    Offer(t, Ids(0, 32), Zeros(32));
    DrainTally tally;
    FinishWithin("draining small queues", 60,
                 [&] { DrainWithThreads(t, 4, 8, [] { return true; }, &tally); });
    raced += tally.raced;
    lost += 32 - static_cast<int64_t>(tally.keys.size());
    leaked += ScalarOf(t, "limiter.sampled") - static_cast<int64_t>(tally.keys.size());
  }
  CHECK_EQ(lost, int64_t{0});    // every item once, as above
  CHECK_EQ(raced, int64_t{0});   // refusals are std::invalid_argument only
  CHECK_EQ(leaked, int64_t{0});  // the limiter counts only the items returned
}

// ======== Item metadata ===================================================================

// Four threads sample at once: every item's count is the number of times it came back, and
// its samples got the ordinals 0, 1, ..., count - 1, each once.
TEST(PartsMetadataCountsAreExactWithFourSamplingThreads) {
  Setup s;
  s.metadata = true;
  const int64_t items = 128, batch = 16;
  const int calls = kThreadSanitizer ? 100 : 400, threads = 4;
  Table t(Config(items, 41, s), {});
  CHECK_EQ(Offer(t, Ids(0, items), Zeros(items)), items);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> seen(threads);  // (key, times before)
  FinishWithin("sampling with 4 threads", 120, [&] {
    std::vector<std::thread> pool;
    for (int w = 0; w < threads; ++w) {
      pool.emplace_back([&, w] {
        for (int c = 0; c < calls; ++c) {
          const Drawn d = SampleItems(t, batch);
          auto& mine = seen[static_cast<size_t>(w)];
          for (size_t i = 0; i < d.keys.size(); ++i) mine.emplace_back(d.keys[i], d.times[i]);
        }
      });
    }
    for (std::thread& th : pool) th.join();
  });
  std::map<int64_t, std::vector<int64_t>> ordinals;
  for (const auto& v : seen) {
    for (const auto& [key, before] : v) ordinals[key].push_back(before);
  }
  const std::vector<int64_t> keys = t.StoredKeys();
  const Drawn now = GetItems(t, keys);
  int64_t sum = 0, wrong_counts = 0, wrong_ordinals = 0, wrong_last = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    std::vector<int64_t>& o = ordinals[keys[i]];
    std::sort(o.begin(), o.end());
    std::vector<int64_t> expected(o.size());
    for (size_t j = 0; j < o.size(); ++j) expected[j] = static_cast<int64_t>(j);
    wrong_ordinals += o != expected;
    wrong_counts += now.times[i] != static_cast<int64_t>(o.size());
    const auto calls_made = static_cast<int64_t>(t.sample_calls());
    wrong_last += o.empty() ? now.last[i] != -1 : now.last[i] < 0 || now.last[i] >= calls_made;
    sum += now.times[i];
  }
  CHECK_EQ(wrong_counts, int64_t{0});
  CHECK_EQ(wrong_ordinals, int64_t{0});
  CHECK_EQ(wrong_last, int64_t{0});
  CHECK_EQ(sum, int64_t{threads} * calls * batch);
  CHECK_EQ(t.sample_calls(), static_cast<uint64_t>(threads * calls));
}

// Version stamped on write, insertion numbers, and each sample's previous call, against
// counts kept here (one thread, distinct batches).
TEST(PartsMetadataVersionInsertionAndLastSampledCall) {
  Setup s;
  s.metadata = true;
  s.selector = Uniform(false);
  Table t(Config(8, 4, s), {});
  t.set_version(3);
  CHECK_EQ(Offer(t, Ids(0, 4), Zeros(4)), int64_t{4});
  t.set_version(8);
  CHECK_EQ(Offer(t, Ids(4, 4), Zeros(4)), int64_t{4});
  const std::vector<int64_t> keys = t.StoredKeys();
  Drawn g = GetItems(t, keys);
  CHECK((g.version == std::vector<int64_t>{3, 3, 3, 3, 8, 8, 8, 8}));
  CHECK((g.inserted == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  CHECK((g.times == std::vector<int64_t>(8, 0)));
  CHECK((g.last == std::vector<int64_t>(8, -1)));
  std::map<int64_t, int64_t> count, last;
  for (int64_t k : keys) last[k] = -1;
  int64_t wrong = 0;
  for (int c = 0; c < 30; ++c) {
    const auto call = static_cast<int64_t>(t.sample_calls());
    const Drawn d = SampleItems(t, 3);
    for (size_t i = 0; i < 3; ++i) {
      const int64_t k = d.keys[i];
      wrong += d.times[i] != count[k] || d.last[i] != last[k] || d.inserted[i] != d.ids[i] ||
               d.version[i] != (d.ids[i] < 4 ? 3 : 8);
      ++count[k];
      last[k] = call;
    }
  }
  CHECK_EQ(wrong, int64_t{0});
  g = GetItems(t, keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    CHECK_EQ(g.times[i], count[keys[i]]);
    CHECK_EQ(g.last[i], last[keys[i]]);
  }
  // Overwritten items: the new ones start afresh, the old keys are refused.
  t.set_version(11);
  CHECK_EQ(Offer(t, Ids(8, 8), Zeros(8)), int64_t{8});
  CHECK_THROWS(GetItems(t, {keys[0]}), std::out_of_range);
  g = GetItems(t, t.StoredKeys());
  CHECK((g.version == std::vector<int64_t>(8, 11)));
  CHECK((g.inserted == std::vector<int64_t>{8, 9, 10, 11, 12, 13, 14, 15}));
  CHECK((g.times == std::vector<int64_t>(8, 0)));
  CHECK((g.last == std::vector<int64_t>(8, -1)));
}

// Metadata asked of a table that keeps none (it once crashed Get, and Sample ignored it).
TEST(PartsMetadataRequestsOnATableWithoutMetadataAreRefused) {
  // Without metadata, and with only a max_times_sampled count: a request for metadata is a
  // ValueError, and neither Get nor Sample changes anything.
  Setup counted;
  counted.max_times = 3;
  for (const Setup& setup : {Setup{}, counted}) {
    Table t(Config(4, 1, setup), {});
    CHECK_EQ(Offer(t, Ids(0, 4), Zeros(4)), int64_t{4});
    const std::vector<int64_t> keys = t.StoredKeys();
    const SavedState before = SaveState(t);
    Drawn d(static_cast<int64_t>(keys.size()));
    auto out = d.Out();
    BatchMeta meta = d.Meta();
    bool refused = false;
    try {
      t.Get(keys.data(), static_cast<int64_t>(keys.size()), out.data(), &meta);
    } catch (const std::invalid_argument& e) {
      refused = std::string(e.what()).find("keeps none") != std::string::npos;
    }
    CHECK(refused);
    refused = false;
    try {
      t.Sample(2, out.data(), d.keys.data(), d.weights.data(), &meta);
    } catch (const std::invalid_argument& e) {
      refused = std::string(e.what()).find("keeps none") != std::string::npos;
    }
    CHECK(refused);
    CHECK(SameState(before, SaveState(t)));
  }
}

// ======== Keys ============================================================================

// For every writer, an update for a key whose slot was written again is skipped and counted
// stale, leaving the new occupant's priority alone; a key never written is refused before
// anything changes.
TEST(PartsStaleKeysAreCountedForEveryWriter) {
  struct Case {
    const char* name;
    ConfigValue writer;
  };
  for (const Case& c : {Case{"fifo", Part("fifo")}, Case{"reservoir", Part("reservoir")},
                        Case{"keep_top_k", TopK()}}) {
    const int failures_before = ::reverie_test::Failures();
    Setup s;
    s.writer = c.writer;
    s.selector = Prioritized(1.0, 0.0, 0.0);
    Table t(Config(8, 17, s), {});
    const auto& sel = dynamic_cast<const PrioritizedSelector&>(t.selector());
    std::vector<double> scores(8);
    for (size_t i = 0; i < 8; ++i) scores[i] = static_cast<double>(i + 1);
    CHECK_EQ(Offer(t, Ids(0, 8), scores), int64_t{8});
    std::vector<int64_t> before = t.StoredKeys();
    std::sort(before.begin(), before.end());
    auto sorted_keys = [&] {
      std::vector<int64_t> k = t.StoredKeys();
      std::sort(k.begin(), k.end());
      return k;
    };
    int64_t id = 8;
    for (; sorted_keys() == before && id < 10000; ++id) {
      OfferOne(t, id, 100.0 + static_cast<double>(id));
    }
    const std::vector<int64_t> after = sorted_keys();
    std::vector<int64_t> gone, kept;
    std::set_difference(before.begin(), before.end(), after.begin(), after.end(),
                        std::back_inserter(gone));
    std::set_intersection(before.begin(), before.end(), after.begin(), after.end(),
                          std::back_inserter(kept));
    CHECK(!gone.empty());
    CHECK(!kept.empty());
    if (gone.empty() || kept.empty()) continue;
    const int64_t old_key = gone[0], live_key = kept[0];
    const int64_t slot = t.codec().Slot(old_key);
    CHECK_EQ(t.codec().Generation(old_key), int64_t{0});
    const uint64_t leaf = sel.tree().leaf(slot);
    const int64_t stale0 = t.stale_updates();
    const double p = 5.0;
    CHECK_EQ(t.UpdatePriorities(&old_key, &p, 1), int64_t{1});
    CHECK_EQ(t.stale_updates(), stale0 + 1);
    CHECK_EQ(sel.tree().leaf(slot), leaf);
    const std::vector<int64_t> mixed = {old_key, live_key};
    const std::vector<double> mixed_p = {9.0, 7.0};
    CHECK_EQ(t.UpdatePriorities(mixed.data(), mixed_p.data(), 2), int64_t{1});
    CHECK_EQ(t.stale_updates(), stale0 + 2);
    CHECK_EQ(sel.StoredPriority(t.codec().Slot(live_key)), 7.0);
    CHECK_EQ(sel.tree().leaf(slot), leaf);
    // A key of a generation never written: IndexError, and no update of the batch happens.
    const std::vector<int64_t> bad = {live_key, t.codec().Key(1000, 0)};
    const std::vector<double> bad_p = {3.0, 3.0};
    CHECK_THROWS(t.UpdatePriorities(bad.data(), bad_p.data(), 2), std::out_of_range);
    CHECK_EQ(sel.StoredPriority(t.codec().Slot(live_key)), 7.0);
    CHECK_EQ(t.stale_updates(), stale0 + 2);
    CHECK_THROWS(GetItems(t, {old_key}), std::out_of_range);
    CHECK_EQ(GetItems(t, {live_key}).keys.size(), size_t{1});
    if (::reverie_test::Failures() != failures_before) {
      std::fprintf(stderr, "  (writer %s)\n", c.name);
    }
  }
  // A key whose item a remover took is stale too.
  Setup s;
  s.selector = Prioritized(1.0, 0.0, 0.0);
  s.max_times = 1;
  Table t(Config(8, 17, s), {});
  CHECK_EQ(Offer(t, Ids(0, 8), Zeros(8)), int64_t{8});
  const Drawn d = SampleItems(t, 1);
  const double p = 2.0;
  CHECK_EQ(t.UpdatePriorities(d.keys.data(), &p, 1), int64_t{1});
  CHECK_EQ(t.stale_updates(), int64_t{1});
  CHECK_EQ(ScalarOf(t, "table.stale_updates"), int64_t{1});
}

// ======== Restore =========================================================================

// A history of offers, samples and priority updates driven by `seed`.
void History(Table& t, uint64_t seed, int rounds, int64_t first_id) {
  std::mt19937_64 rng(seed);
  int64_t id = first_id;
  for (int r = 0; r < rounds; ++r) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 6);
    std::vector<double> scores(static_cast<size_t>(n));
    for (double& v : scores) v = static_cast<double>(rng() % 64) - 10.0;
    Offer(t, Ids(id, n), scores);
    id += n;
    try {
      const Drawn d = SampleItems(t, 4);
      if (t.selector().prioritized()) {
        std::vector<double> p(d.keys.size());
        for (double& v : p) v = 0.1 + static_cast<double>(rng() % 100) / 10.0;
        t.UpdatePriorities(d.keys.data(), p.data(), static_cast<int64_t>(p.size()));
      }
    } catch (const std::invalid_argument&) {
      // nothing to sample yet, or used up (max_times_sampled)
    }
  }
}

// A table restored from another's state arrays and scalars (a fresh one, and one with a
// history of its own) makes the next 100 admission/eviction decisions and the next 100
// samples exactly as the saved table does.
TEST(PartsRestoreReproducesTheNextDecisionsAndSamples) {
  struct Case {
    const char* name;
    Setup setup;
  };
  std::vector<Case> cases;
  {
    Setup s;
    s.writer = Part("reservoir");
    cases.push_back({"reservoir, uniform", s});
    s.selector = Prioritized(0.7, 0.5, 1e-3);
    s.metadata = true;
    cases.push_back({"reservoir, prioritized, metadata", s});
    s = Setup{};
    s.writer = TopK();
    cases.push_back({"keep_top_k, uniform", s});
    s.selector = Prioritized(0.7, 0.5, 1e-3);
    s.admission = Threshold("score", -5.0);
    s.metadata = true;
    cases.push_back({"keep_top_k, prioritized, threshold, metadata", s});
    s = Setup{};
    s.writer = TopK();
    s.max_times = 2;
    s.metadata = true;
    cases.push_back({"keep_top_k, max_times_sampled, uniform live set", s});
    s = Setup{};
    s.selector = Prioritized(1.0, 1.0, 0.0);
    s.max_times = 2;
    cases.push_back({"fifo, max_times_sampled, prioritized", s});
  }
  for (const Case& c : cases) {
    const ConfigValue config = Config(24, 1234, c.setup);
    Table saved_from(config, {}), fresh(config, {}), used(config, {});
    History(saved_from, 1, 60, 0);
    History(used, 2, 45, 50000);
    const SavedState saved = SaveState(saved_from);
    LoadState(fresh, saved);
    LoadState(used, saved);
    int64_t differences = 0;
    for (Table* b : {&fresh, &used}) {
      const char* which = b == &fresh ? "fresh" : "used";
      if (b->Scalars().ToJson() != saved.scalars.ToJson()) {
        std::fprintf(stderr, "  %s (%s): restored scalars %s, saved %s\n", c.name, which,
                     b->Scalars().ToJson().c_str(), saved.scalars.ToJson().c_str());
        ++differences;
      }
      if (!(HeldItems(*b) == HeldItems(saved_from))) {
        std::fprintf(stderr, "  %s (%s): restored items differ\n", c.name, which);
        ++differences;
      }
    }
    std::mt19937_64 rng(77);
    // With a remover, batches no larger than what one offer adds keep samples possible.
    const int64_t batch = c.setup.max_times > 0 ? 2 : 8;
    int64_t sampled = 0;
    for (int r = 0; r < 100 && differences == 0; ++r) {
      const int64_t id = 100000 + r;
      const double score = static_cast<double>(rng() % 64) - 10.0;
      const int64_t stored = OfferOne(saved_from, id, score);
      const std::vector<Held> offered = HeldItems(saved_from);
      bool threw = false;
      Drawn want(batch);
      try {
        want = SampleItems(saved_from, batch);
      } catch (const std::invalid_argument&) {
        threw = true;
      }
      sampled += !threw;
      std::vector<double> p(static_cast<size_t>(batch));
      for (double& v : p) v = 0.1 + static_cast<double>(rng() % 100) / 10.0;
      const bool update = !threw && saved_from.selector().prioritized() && r % 5 == 0;
      const int64_t stale =
          update ? saved_from.UpdatePriorities(want.keys.data(), p.data(), batch) : 0;
      const std::vector<Held> after = HeldItems(saved_from);
      for (Table* b : {&fresh, &used}) {
        const char* which = b == &fresh ? "fresh" : "used";
        auto differ = [&](const char* what) {
          std::fprintf(stderr, "  %s (%s): round %d: %s differs\n", c.name, which, r, what);
          ++differences;
        };
        if (OfferOne(*b, id, score) != stored) differ("stored count");
        if (!(HeldItems(*b) == offered)) differ("held items");
        try {
          const Drawn got = SampleItems(*b, batch);
          if (threw || !(got == want)) differ("sample");
        } catch (const std::invalid_argument&) {
          if (!threw) differ("sample (refused)");
        }
        if (update && b->UpdatePriorities(want.keys.data(), p.data(), batch) != stale) {
          differ("stale count");
        }
        if (!(HeldItems(*b) == after)) differ("held items after sampling");
      }
    }
    CHECK_EQ(differences, int64_t{0});
    CHECK(sampled >= 30);
    CHECK(SameState(SaveState(fresh), SaveState(saved_from)));
    CHECK(SameState(SaveState(used), SaveState(saved_from)));
    if (differences != 0) std::fprintf(stderr, "  case %s\n", c.name);
  }
}

}  // namespace
