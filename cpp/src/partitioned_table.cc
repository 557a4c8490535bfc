// PartitionedTable (partitioned_table.h). One file over ~500 lines: the partitioned table is
// one protocol (partitions made and attached, writes routed, batches mixed, keys routed,
// state prefixed) whose pieces share its private helpers; split, each piece would need them
// exposed.
#include "reverie/partitioned_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <set>
#include <unordered_map>

#include "reverie/common.h"
#include "reverie/philox.h"
#include "reverie/ring.h"
#include "reverie/writer_helpers.h"
#include "table_internal.h"

namespace reverie {

// The first bytes of a partitioned table's region, then its canonical configuration (as
// made), then values[max] (int64: partition i's key value) and weights[max] (double: the
// shared mixture). Address-free (region.h).
struct PartitionedHeader {
  static constexpr uint64_t kMagic = 0x31545052'45564552ull;  // "REVEPRT1" (little endian)
  std::atomic<uint64_t> magic{0};  // stored last (release) by the creator
  uint64_t total_bytes = 0;
  uint64_t fingerprint = 0;
  uint64_t config_bytes = 0;
  RingCounters ring;  // items stored (the limiter's inserts)
  alignas(64) std::atomic<uint64_t> calls{0};
  std::atomic<int64_t> count{0};        // partitions made (values[0 .. count) valid)
  std::atomic<int64_t> version{0};
  std::atomic<int64_t> mixture_set{0};  // 0: never set (sample by the partitions' sizes)
  alignas(64) ProcessMutex mu;          // making partitions, setting the mixture
  alignas(64) RateLimitState limiter;
};

namespace {

size_t AlignUp(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser: partition seeds
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The generator's index lane for stochastic mixture counts (sampling uses indices below the
// batch size within a partition's own stream; this is the partitioned table's own seed).
constexpr uint32_t kMixtureLane = 7;

const ConfigValue& PartitionsOf(const ConfigValue& config) {
  return config.At("partitions", "the partitioned table");
}

}  // namespace

PartitionedTable::PartitionedTable(const ConfigValue& config, const StorageConfig& storage)
    : config_(config), storage_(storage) {
  static const char* const kKnown[] = {"capacity", "spec", "seed", "shard", "metadata", "partitions", "rate_limiter",
                                       "writer", "selector", "admission", "max_times_sampled", "view", "reuse"};
  for (const auto& [key, value] : config.AsMap("the partitioned table configuration")) {
    REVERIE_CHECK(std::find_if(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return key == k; }) !=
                      std::end(kKnown),
                  "unknown partitioned table setting '", key, "'");
  }
  REVERIE_CHECK(config.Get("view").is_null(), "an episode buffer cannot be partitioned (its env streams are "
                "one ring)");
  seed_ = config.At("seed", "the partitioned table").AsUInt("seed");
  shard_ = config.Get("shard").is_null() ? 0 : config.Get("shard").AsInt("shard");
  const ConfigValue& parts = PartitionsOf(config);
  static const char* const kPartsKnown[] = {"key", "max", "mode", "empty", "declared", "on_new", "created"};
  for (const auto& [key, value] : parts.AsMap("partitions")) {
    REVERIE_CHECK(std::find_if(std::begin(kPartsKnown), std::end(kPartsKnown), [&](const char* k) { return key == k; }) !=
                      std::end(kPartsKnown),
                  "partitions have no setting '", key, "'; their settings: key, max, mode, empty, declared, on_new");
  }
  max_ = parts.At("max", "partitions").AsInt("partitions 'max'");
  REVERIE_CHECK(max_ >= 1 && max_ <= kMaxPartitions, "partitions 'max' must be in [1, ", kMaxPartitions, "], got ", max_);
  if (!parts.Get("mode").is_null()) mode_ = parts.Get("mode").AsString("partitions 'mode'");
  REVERIE_CHECK(mode_ == "exact" || mode_ == "stochastic", "partitions 'mode' must be 'exact' (largest-remainder "
                "counts) or 'stochastic' (multinomial counts), got '", mode_, "'");
  if (!parts.Get("empty").is_null()) {
    const std::string& e = parts.Get("empty").AsString("partitions 'empty'");
    REVERIE_CHECK(e == "error" || e == "skip", "partitions 'empty' must be 'error' or 'skip', got '", e, "'");
    skip_empty_ = e == "skip";
  }
  // A partition's settings: the table's (capacity, writer, selector, admission,
  // max_times_sampled), each overridden by its declaration's.
  ConfigValue base_settings = ConfigValue::MakeMap();
  for (const char* k : {"capacity", "writer", "selector", "admission", "max_times_sampled", "reuse"}) {
    if (!config.Get(k).is_null()) base_settings.Set(k, config.Get(k));
  }
  std::string on_new = "make";
  if (!parts.Get("on_new").is_null()) on_new = parts.Get("on_new").AsString("partitions 'on_new'");
  REVERIE_CHECK(on_new == "make" || on_new == "error", "partitions 'on_new' must be 'make' (a partition for "
                "each new value) or 'error', got '", on_new, "'");
  if (on_new == "make") default_ = base_settings;
  std::set<int64_t> seen;
  int64_t largest = 1;
  auto settings_capacity = [&](const ConfigValue& s, const std::string& what) {
    const int64_t c = s.At("capacity", what).AsInt(what + " capacity");
    REVERIE_CHECK(c >= 1 && c <= kMaxCapacity, what, " capacity must be in [1, 2^40], got ", c);
    return c;
  };
  if (!parts.Get("declared").is_null()) {
    for (const ConfigValue& entry : parts.Get("declared").AsList("partitions 'declared'")) {
      const auto& pair = entry.AsList("a declared partition ([value, settings])");
      REVERIE_CHECK(pair.size() == 2, "a declared partition must be [value, settings], got ", pair.size(), " items");
      const int64_t value = pair[0].AsInt("a partition value");
      REVERIE_CHECK(seen.insert(value).second, "partition value ", value, " is declared twice");
      ConfigValue settings = base_settings;
      for (const auto& [k, v] : pair[1].AsMap(internal::Concat("partition ", value, " settings"))) settings.Set(k, v);
      declared_.push_back(Settings{value, settings});
      const int64_t c = settings_capacity(settings, internal::Concat("partition ", value));
      largest = std::max(largest, c);
      capacity_ += c;
    }
  }
  REVERIE_CHECK(static_cast<int64_t>(declared_.size()) <= max_, declared_.size(), " partitions are declared but "
                "'max' is ", max_);
  if (!default_.is_null()) {
    const int64_t c = settings_capacity(default_, "the default partition");
    largest = std::max(largest, c);
    capacity_ += c * (max_ - static_cast<int64_t>(declared_.size()));
  }
  REVERIE_CHECK(!declared_.empty() || !default_.is_null(), "a partitioned buffer with on_new 'error' needs "
                "declared partitions");
  slot_bits_ = SlotBits(largest);
  partition_bits_ = SlotBits(max_);
  REVERIE_CHECK(slot_bits_ + partition_bits_ <= 45, "partitions of capacity up to ", largest, " and max ", max_,
                " leave too few key bits for generations");
  // The key field: an integer scalar of the spec (checked on a first partition's spec).
  {
    ConfigValue probe = TableConfigOf(0, declared_.empty() ? default_ : declared_[0].table);
    probe.Set("capacity", ConfigValue::Int(1));
    Table check(probe, StorageConfig{});  // validates the spec (a partition's parts: when made)
    spec_ = check.spec();
  }
  const std::string& key = parts.At("key", "partitions").AsString("partitions 'key'");
  for (size_t f = 0; f < spec_.size(); ++f) {
    if (spec_[f].name == key) key_field_ = static_cast<int>(f);
  }
  REVERIE_CHECK(key_field_ >= 0, "the partition key '", key, "' is not in the spec");
  const FieldSpec& kf = spec_[static_cast<size_t>(key_field_)];
  key_dtype_ = kf.dtype;
  REVERIE_CHECK_TYPE(kf.shape.empty() && (kf.dtype == DType::kUInt8 || kf.dtype == DType::kInt8 ||
                                          kf.dtype == DType::kInt16 || kf.dtype == DType::kInt32 ||
                                          kf.dtype == DType::kInt64),
                     "the partition key '", key, "' must be an integer scalar field, got ", DTypeName(kf.dtype),
                     ShapeString(kf.shape.data(), static_cast<int>(kf.shape.size())));

  // The region: header, configuration, values, weights.
  ConfigValue made = config;  // without "created": that grows; the fingerprint is of the rest
  ConfigValue fixed_parts = ConfigValue::MakeMap();
  for (const auto& [k, v] : parts.AsMap("partitions")) {
    if (k != "created") fixed_parts.Set(k, v);
  }
  made.Set("partitions", fixed_parts);
  ConfigValue fixed_config = ConfigValue::MakeMap();
  for (const auto& [k, v] : made.AsMap("the partitioned table configuration")) {
    if (k != "rate_limiter") fixed_config.Set(k, v);  // live as a whole
  }
  std::string fixed = fixed_config.ToJson();
  for (int64_t i = 0; i < static_cast<int64_t>(declared_.size()); ++i) {
    fixed += FixedPart(TableConfigOf(i, declared_[static_cast<size_t>(i)].table)).ToJson();
  }
  if (!default_.is_null()) fixed += FixedPart(TableConfigOf(0, default_)).ToJson();
  const uint64_t fingerprint = Fnv1a(fixed);
  const std::string stored = made.ToJson();
  const size_t config_at = AlignUp(sizeof(PartitionedHeader), 64);
  const size_t values_at = AlignUp(config_at + stored.size(), 64);
  const size_t weights_at = AlignUp(values_at + static_cast<size_t>(max_) * 8, 64);
  const size_t total = AlignUp(weights_at + static_cast<size_t>(max_) * 8, 64);
  bool attach = storage.kind == StorageConfig::Kind::kAttachShared;
  switch (storage.kind) {
    case StorageConfig::Kind::kPrivate: region_ = Region::Private(total); break;
    case StorageConfig::Kind::kCreateShared: region_ = Region::CreateShared(storage.name, total); break;
    case StorageConfig::Kind::kAttachShared: region_ = Region::AttachShared(storage.name); break;
    case StorageConfig::Kind::kFile: region_ = Region::MapFile(storage.name, total, &attach); break;
  }
  const char* what = storage.kind == StorageConfig::Kind::kFile ? "file" : "shared memory";
  uint8_t* base = region_.data();
  if (attach) {
    REVERIE_CHECK(region_.size() >= sizeof(PartitionedHeader), what, " '", storage.name,
                  "' is not a partitioned reverie table");
    header_ = reinterpret_cast<PartitionedHeader*>(base);
    REVERIE_CHECK(header_->magic.load(std::memory_order_acquire) == PartitionedHeader::kMagic, what, " '",
                  storage.name, "' is not a partitioned reverie table of this version");
    REVERIE_CHECK(header_->total_bytes == total && region_.size() == total && header_->fingerprint == fingerprint,
                  what, " '", storage.name, "' holds a partitioned table made with other settings than given here");
    if (storage.kind == StorageConfig::Kind::kFile) {
      reopened_ = true;
      header_->mu.Init();
    }
  } else {
    header_ = new (base) PartitionedHeader();
    header_->total_bytes = total;
    header_->fingerprint = fingerprint;
    header_->config_bytes = stored.size();
    std::memcpy(base + config_at, stored.data(), stored.size());
    header_->mu.Init();
  }
  ring_ = Ring(std::max<int64_t>(capacity_, 1), nullptr, &header_->ring, KeyCodec(1, shard_));
  limiter_ = RateLimiter(&header_->limiter, &ring_);
  parts_.resize(static_cast<size_t>(max_));
  values_ = reinterpret_cast<int64_t*>(base + values_at);
  weights_ = reinterpret_cast<std::atomic<double>*>(base + weights_at);
  if (!attach) {
    for (int64_t i = 0; i < max_; ++i) new (&weights_[i]) std::atomic<double>(0.0);
    // The declared partitions, then those a saved configuration lists as made on first use.
    std::vector<int64_t> created;
    if (!parts.Get("created").is_null()) {
      for (const ConfigValue& v : parts.Get("created").AsList("partitions 'created'")) created.push_back(v.AsInt("a partition value"));
    }
    REVERIE_CHECK(created.empty() || !default_.is_null(), "partitions made on first use are listed but on_new is 'error'");
    REVERIE_CHECK(static_cast<int64_t>(declared_.size() + created.size()) <= max_, "more partitions listed than 'max' ", max_);
    int64_t index = 0;
    auto make = [&](int64_t value) {
      REVERIE_CHECK(index_.count(value) == 0, "partition value ", value, " is listed twice");
      parts_[static_cast<size_t>(index)] = OpenPartition(index, /*create=*/true);
      values_[index] = value;
      index_[value] = index;
      ++index;
    };
    for (const Settings& d : declared_) make(d.value);
    for (int64_t v : created) make(v);
    local_ = index;
    header_->count.store(index, std::memory_order_release);
    header_->magic.store(PartitionedHeader::kMagic, std::memory_order_release);
  } else {
    Sync();
  }
}

PartitionedTable::~PartitionedTable() {
  try {
    Unlink();  // the owner's table gone: every partition's name with it (as a table's own)
  } catch (...) {
  }
}

ConfigValue PartitionedTable::TableConfigOf(int64_t index, const ConfigValue& settings) const {
  ConfigValue c = ConfigValue::MakeMap();
  static const char* const kPartitionSettings[] = {"capacity", "writer", "selector", "admission", "max_times_sampled",
                                                   "reuse"};
  for (const auto& [key, value] : settings.AsMap("partition settings")) {
    REVERIE_CHECK(std::find_if(std::begin(kPartitionSettings), std::end(kPartitionSettings),
                               [&](const char* k) { return key == k; }) != std::end(kPartitionSettings),
                  "a partition has no setting '", key, "'; its settings: capacity, writer, selector, admission, "
                  "max_times_sampled, reuse");
    c.Set(key, value);
  }
  c.Set("spec", config_.At("spec", "the partitioned table"));
  c.Set("seed", ConfigValue::UInt(Mix(seed_ ^ Mix(static_cast<uint64_t>(index)))));
  c.Set("shard", ConfigValue::Int(shard_));
  if (!config_.Get("metadata").is_null()) c.Set("metadata", config_.Get("metadata"));
  ConfigValue p = ConfigValue::MakeMap();
  p.Set("index", ConfigValue::Int(index));
  p.Set("slot_bits", ConfigValue::Int(slot_bits_));
  p.Set("partition_bits", ConfigValue::Int(partition_bits_));
  c.Set("partition", p);
  return c;
}

std::string PartitionedTable::PartitionName(int64_t index) const {
  return internal::Concat(storage_.name, ".p", index);
}

std::unique_ptr<Table> PartitionedTable::OpenPartition(int64_t index, bool create) {
  const ConfigValue& settings = index < static_cast<int64_t>(declared_.size())
                                    ? declared_[static_cast<size_t>(index)].table
                                    : default_;
  StorageConfig s;
  switch (storage_.kind) {
    case StorageConfig::Kind::kPrivate: break;
    case StorageConfig::Kind::kCreateShared:
    case StorageConfig::Kind::kAttachShared:
      s.kind = create ? StorageConfig::Kind::kCreateShared : StorageConfig::Kind::kAttachShared;
      s.name = PartitionName(index);
      break;
    case StorageConfig::Kind::kFile:
      s.kind = StorageConfig::Kind::kFile;
      s.name = PartitionName(index);
      break;
  }
  auto table = std::make_unique<Table>(TableConfigOf(index, settings), s);
  // A partition's segment lives as long as the whole table's, whichever process made it:
  // the owner of the table's own segment removes every partition's name (Unlink).
  table->Disown();
  if (create) table->set_version(header_ ? header_->version.load(std::memory_order_relaxed) : 0);
  table->set_wait_poll(poll_);
  return table;
}

void PartitionedTable::Sync() {
  const int64_t made = header_->count.load(std::memory_order_acquire);
  if (local_.load(std::memory_order_acquire) >= made) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (int64_t i = local_.load(std::memory_order_relaxed); i < made; ++i) {
    parts_[static_cast<size_t>(i)] = OpenPartition(i, /*create=*/false);
    index_[values_[i]] = i;
    local_.store(i + 1, std::memory_order_release);
  }
}

int64_t PartitionedTable::count() {
  Sync();
  return local_.load(std::memory_order_acquire);
}

int64_t PartitionedTable::value(int64_t index) {
  REVERIE_CHECK(index >= 0 && index < count(), "no partition number ", index);
  return values_[index];
}

int64_t PartitionedTable::IndexOf(int64_t value) {
  Sync();
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = index_.find(value);
  return it == index_.end() ? -1 : it->second;
}

Table& PartitionedTable::partition(int64_t index) {
  REVERIE_CHECK(index >= 0 && index < count(), "no partition number ", index);
  return *parts_[static_cast<size_t>(index)];
}

int64_t PartitionedTable::Obtain(int64_t value, std::string* why) {
  const int64_t known = IndexOf(value);
  if (known >= 0) return known;
  if (default_.is_null()) {
    *why = internal::Concat("partition value ", value, " is not declared, and this buffer makes no partitions for "
                            "new values (on_new 'error')");
    return -1;
  }
  // A maker that died holding the lock left `count` as it was, so nothing half made is
  // visible; a segment it may have made for the next index is removed first.
  const bool recover = header_->mu.Lock();
  if (recover && region_.shared()) Region::UnlinkShared(PartitionName(header_->count.load()));
  int64_t index = -1;
  try {
    Sync();  // another process may have made it, or others, meanwhile
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = index_.find(value);
      if (it != index_.end()) index = it->second;
    }
    if (index < 0) {
      const int64_t n = header_->count.load(std::memory_order_acquire);
      if (n >= max_) {
        *why = internal::Concat("partition value ", value, " would be partition ", n + 1, " but at most ", max_,
                                " can be made (partitions 'max')");
      } else {
        std::lock_guard<std::mutex> lock(mu_);
        parts_[static_cast<size_t>(n)] = OpenPartition(n, /*create=*/true);
        values_[n] = value;
        weights_[n].store(0.0, std::memory_order_relaxed);
        index_[value] = n;
        local_.store(n + 1, std::memory_order_release);
        header_->count.store(n + 1, std::memory_order_release);
        index = n;
      }
    }
  } catch (...) {
    header_->mu.Unlock();
    throw;
  }
  header_->mu.Unlock();
  return index;
}

// ---- Writing ----------------------------------------------------------------------------

int64_t PartitionedTable::Add(const FieldInput* inputs, size_t n, const uint8_t* admitted, int64_t admitted_size) {
  return Write(inputs, n, /*batched=*/false, admitted, admitted_size);
}

int64_t PartitionedTable::Extend(const FieldInput* inputs, size_t n, const uint8_t* admitted, int64_t admitted_size) {
  return Write(inputs, n, /*batched=*/true, admitted, admitted_size);
}

int64_t PartitionedTable::Write(const FieldInput* inputs, size_t n, bool batched, const uint8_t* admitted,
                                int64_t admitted_size) {
  Sync();
  std::vector<const ArrayView*> values(spec_.size());
  int64_t rows = 1;
  Table::ValidateRows(spec_, 0, inputs, n, batched, values.data(), &rows);
  REVERIE_CHECK(admitted == nullptr || admitted_size == rows, "the admission mask has ", admitted_size, " values for ",
                rows, " items; expected one per item");
  if (rows == 0) return 0;
  // Each admitted row's partition; partitions not made yet are made (all or none).
  const ArrayView& key = *values[static_cast<size_t>(key_field_)];
  std::vector<int64_t> part(static_cast<size_t>(rows), -1);
  std::vector<int64_t> unseen;
  for (int64_t r = 0; r < rows; ++r) {
    if (admitted != nullptr && admitted[r] == 0) continue;
    const int64_t v = IntegerAt(key, r);
    part[static_cast<size_t>(r)] = IndexOf(v);
    if (part[static_cast<size_t>(r)] < 0 && std::find(unseen.begin(), unseen.end(), v) == unseen.end()) unseen.push_back(v);
  }
  if (!unseen.empty()) {
    REVERIE_CHECK(!default_.is_null(), "partition value ", unseen[0], " is not declared, and this buffer makes no "
                  "partitions for new values (on_new 'error'); nothing was stored");
    REVERIE_CHECK(header_->count.load(std::memory_order_acquire) + static_cast<int64_t>(unseen.size()) <= max_,
                  "partition values ", unseen[0], unseen.size() > 1 ? ", ..." : "", " would make ",
                  header_->count.load() + static_cast<int64_t>(unseen.size()), " partitions but at most ", max_,
                  " can be made (partitions 'max'); nothing was stored");
    for (int64_t v : unseen) {
      std::string why;
      const int64_t index = Obtain(v, &why);
      REVERIE_CHECK(index >= 0, why, "; nothing was stored");
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (part[static_cast<size_t>(r)] < 0 && (admitted == nullptr || admitted[r] != 0)) {
        part[static_cast<size_t>(r)] = IndexOf(IntegerAt(key, r));
      }
    }
  }
  // One mask per partition written to; every partition's checks before any write.
  std::vector<int64_t> order;
  std::vector<std::vector<uint8_t>> masks(static_cast<size_t>(local_.load()));
  int64_t offered = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = part[static_cast<size_t>(r)];
    if (p < 0) continue;
    auto& m = masks[static_cast<size_t>(p)];
    if (m.empty()) {
      m.assign(static_cast<size_t>(rows), 0);
      order.push_back(p);
    }
    m[static_cast<size_t>(r)] = 1;
    ++offered;
  }
  std::sort(order.begin(), order.end());
  for (int64_t p : order) parts_[static_cast<size_t>(p)]->Precheck(inputs, n, batched, masks[static_cast<size_t>(p)].data(), rows);
  if (offered == 0) return 0;
  limiter_.AwaitInsert(offered, poll_);
  int64_t stored = 0;
  auto account = [&] {  // the table's totals and the limiter count what was stored
    header_->ring.claimed.fetch_add(stored, std::memory_order_acq_rel);
    header_->ring.committed.fetch_add(stored, std::memory_order_acq_rel);
    if (limiter_.enabled()) limiter_.Notify();
  };
  for (size_t j = 0; j < order.size(); ++j) {
    Table& t = *parts_[static_cast<size_t>(order[j])];
    const uint8_t* m = masks[static_cast<size_t>(order[j])].data();
    try {
      stored += batched ? t.Extend(inputs, n, m, rows) : t.Add(inputs, n, m, rows);
    } catch (const TypeError&) {
      account();
      throw;
    } catch (const std::invalid_argument& e) {
      // A partition's check changed since the precheck (another writer filled a pinned
      // partition, or brought a class beyond max_classes): the partitions before it keep
      // their rows, and the error says so.
      account();
      if (j == 0) throw;
      throw std::invalid_argument(internal::Concat(e.what(), " [partition ", values_[order[j]],
                                                   "; the call had stored ", stored,
                                                   " items in earlier partitions]"));
    } catch (...) {
      account();
      throw;
    }
  }
  account();
  return stored;
}

// ---- Sampling ---------------------------------------------------------------------------

void PartitionedTable::Counts(int64_t batch, uint64_t call, const std::vector<double>& w,
                              std::vector<int64_t>* counts) const {
  double total = 0;
  for (double x : w) total += x;
  counts->assign(w.size(), 0);
  if (mode_ == "stochastic") {
    // B categorical draws: a draw's 53 random bits against the cumulative weights.
    std::vector<double> cum(w.size());
    double run = 0;
    for (size_t p = 0; p < w.size(); ++p) cum[p] = (run += w[p]) / total;
    for (int64_t i = 0; i < batch; ++i) {
      const double u = static_cast<double>(RandomBits(seed_, call, static_cast<uint32_t>(i), kMixtureLane) >> 11) *
                       0x1.0p-53;
      size_t p = static_cast<size_t>(std::upper_bound(cum.begin(), cum.end(), u) - cum.begin());
      while (p >= w.size() || w[p] == 0) p = p >= w.size() ? w.size() - 1 : p + 1;  // rounding at the top end
      ++(*counts)[p];
    }
    return;
  }
  // Largest remainder: floor(B w_p / W), then one more for the largest remainders (ties: the
  // earlier partition).
  std::vector<double> rem(w.size());
  int64_t given = 0;
  for (size_t p = 0; p < w.size(); ++p) {
    const double share = static_cast<double>(batch) * w[p] / total;
    (*counts)[p] = static_cast<int64_t>(std::floor(share));
    rem[p] = w[p] > 0 ? share - std::floor(share) : -1.0;
    given += (*counts)[p];
  }
  std::vector<size_t> by(w.size());
  for (size_t p = 0; p < by.size(); ++p) by[p] = p;
  std::stable_sort(by.begin(), by.end(), [&](size_t a, size_t b) { return rem[a] > rem[b]; });
  for (size_t k = 0; given < batch; k = (k + 1) % by.size()) {
    if (w[by[k]] > 0) {
      ++(*counts)[by[k]];
      ++given;
    }
  }
}

void PartitionedTable::Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights, int64_t* partition_out,
                              const BatchMeta* meta, const double* override_weights, int64_t override_size) {
  REVERIE_CHECK(batch >= 1, "batch size must be >= 1, got ", batch);
  Sync();
  const int64_t n = local_.load(std::memory_order_acquire);
  REVERIE_CHECK(override_weights == nullptr || override_size == n, "the mixture has ", override_size,
                " weights for ", n, " partitions");
  limiter_.AdmitSample(batch, poll_);
  std::vector<int64_t> counts;
  std::vector<int64_t> sizes(static_cast<size_t>(n));
  uint64_t call = 0;
  try {
    std::vector<double> w(static_cast<size_t>(n), 0.0);
    const bool set = header_->mixture_set.load(std::memory_order_acquire) != 0;
    for (int64_t p = 0; p < n; ++p) {
      sizes[static_cast<size_t>(p)] = parts_[static_cast<size_t>(p)]->size();
      w[static_cast<size_t>(p)] = override_weights != nullptr ? override_weights[p]
                                  : set ? weights_[p].load(std::memory_order_relaxed)
                                        : static_cast<double>(sizes[static_cast<size_t>(p)]);
      REVERIE_CHECK(std::isfinite(w[static_cast<size_t>(p)]) && w[static_cast<size_t>(p)] >= 0,
                    "mixture weights must be finite and >= 0; partition ", values_[p], " has ", w[static_cast<size_t>(p)]);
      if (w[static_cast<size_t>(p)] > 0 && sizes[static_cast<size_t>(p)] == 0) {
        REVERIE_CHECK(skip_empty_, "cannot sample: partition ", values_[p], " has mixture weight ",
                      w[static_cast<size_t>(p)], " but holds no items (give it weight 0, write to it first, or make "
                      "the buffer skip empty partitions)");
        w[static_cast<size_t>(p)] = 0;
      }
    }
    double total = 0;
    for (double x : w) total += x;
    REVERIE_CHECK(total > 0, n == 0 ? "cannot sample: the buffer holds no partitions yet"
                             : "cannot sample: every partition has mixture weight 0 or holds no items");
    call = header_->calls.fetch_add(1, std::memory_order_relaxed);
    Counts(batch, call, w, &counts);
  } catch (...) {
    limiter_.Unsample(batch);
    throw;
  }
  // Each partition's share of the batch, in partition order.
  int64_t at = 0;
  std::vector<uint8_t*> part_out(spec_.size());
  double q_min = 0;  // the smallest priority of the partitions drawn from (importance weights)
  for (int64_t p = 0; p < n; ++p) {
    const int64_t c = counts[static_cast<size_t>(p)];
    if (c == 0) continue;
    Table& t = *parts_[static_cast<size_t>(p)];
    for (size_t f = 0; f < spec_.size(); ++f) part_out[f] = out[f] + static_cast<size_t>(at) * spec_[f].row_bytes();
    BatchMeta m;
    if (meta != nullptr) {
      auto shift = [&](int64_t* ptr) { return ptr == nullptr ? nullptr : ptr + at; };
      m = BatchMeta{shift(meta->inserted), shift(meta->version), shift(meta->times_sampled), shift(meta->last_sampled)};
    }
    // A prioritized partition's weights come as (its own q_min / q_i)^beta; they are put on
    // the call's common scale below, one factor per partition.
    const bool own_weights = weights != nullptr && t.selector().prioritized();
    t.Sample(c, part_out.data(), keys + at, own_weights ? weights + at : nullptr, meta != nullptr ? &m : nullptr);
    if (partition_out != nullptr) std::fill(partition_out + at, partition_out + at + c, values_[p]);
    if (t.selector().prioritized()) {
      const double q = t.selector().MinPriority();
      if (q > 0 && (q_min == 0 || q < q_min)) q_min = q;
    }
    at += c;
  }
  if (weights != nullptr) {
    // (q_min / q_i)^beta = (own q_min / q_i)^beta * (q_min / own q_min)^beta.
    at = 0;
    for (int64_t p = 0; p < n; ++p) {
      const int64_t c = counts[static_cast<size_t>(p)];
      if (c == 0) continue;
      const Selector& sel = parts_[static_cast<size_t>(p)]->selector();
      if (!sel.prioritized()) {
        std::fill(weights + at, weights + at + c, 1.0f);
      } else {
        const double own = sel.MinPriority(), beta = sel.beta();
        if (own > 0 && q_min > 0 && q_min < own && beta > 0) {
          const auto factor = static_cast<float>(std::pow(q_min / own, beta));
          for (int64_t i = at; i < at + c; ++i) weights[i] *= factor;
        }
      }
      at += c;
    }
  }
}

// ---- Keys ---------------------------------------------------------------------------------

int64_t PartitionedTable::PartitionOfKey(int64_t key) {
  if (key < 0 || (key >> kLocalKeyBits) != shard_) return -1;
  const int64_t p = (key >> slot_bits_) & ((int64_t{1} << partition_bits_) - 1);
  return p < local_.load(std::memory_order_acquire) ? p : -1;
}

std::string PartitionedTable::BadKeyMessage(int64_t key, int64_t position) {
  const std::string at = internal::Concat("index ", key, " at position ", position);
  if (key < 0) return internal::Concat(at, " is negative: keys are >= 0 (keys are the indices a sample returned)");
  if ((key >> kLocalKeyBits) != shard_) {
    return internal::Concat(at, " belongs to shard ", key >> kLocalKeyBits, "; this buffer is shard ", shard_);
  }
  return internal::Concat(at, " names partition number ", (key >> slot_bits_) & ((int64_t{1} << partition_bits_) - 1),
                          ", but this buffer has ", local_.load(), " partitions (keys are the indices a sample returned)");
}

PartitionedTable::KeyGroups PartitionedTable::GroupKeys(const int64_t* keys, int64_t n) {
  KeyGroups groups;
  const auto parts = static_cast<size_t>(local_.load());
  groups.positions.resize(parts);
  groups.keys.resize(parts);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = PartitionOfKey(keys[i]);
    if (p < 0) throw std::out_of_range(BadKeyMessage(keys[i], i));
    parts_[static_cast<size_t>(p)]->CheckKey(keys[i], i);
    groups.positions[static_cast<size_t>(p)].push_back(i);
    groups.keys[static_cast<size_t>(p)].push_back(keys[i]);
  }
  return groups;
}

void PartitionedTable::Get(const int64_t* keys, int64_t n, uint8_t* const* out, int64_t* partition_out,
                           const BatchMeta* meta) {
  Sync();
  const KeyGroups groups = GroupKeys(keys, n);
  for (size_t p = 0; p < groups.keys.size(); ++p) {
    const auto& pos = groups.positions[p];
    if (pos.empty()) continue;
    const auto c = static_cast<int64_t>(pos.size());
    std::vector<std::vector<uint8_t>> tmp(spec_.size());
    std::vector<uint8_t*> dst(spec_.size());
    for (size_t f = 0; f < spec_.size(); ++f) {
      tmp[f].resize(static_cast<size_t>(c) * spec_[f].row_bytes());
      dst[f] = tmp[f].data();
    }
    std::vector<int64_t> mt[4];
    BatchMeta m;
    if (meta != nullptr) {
      int64_t* const* src[4] = {&meta->inserted, &meta->version, &meta->times_sampled, &meta->last_sampled};
      int64_t** into[4] = {&m.inserted, &m.version, &m.times_sampled, &m.last_sampled};
      for (int j = 0; j < 4; ++j) {
        if (*src[j] == nullptr) continue;
        mt[j].resize(static_cast<size_t>(c));
        *into[j] = mt[j].data();
      }
    }
    parts_[p]->Get(groups.keys[p].data(), c, dst.data(), meta != nullptr ? &m : nullptr);
    for (int64_t k = 0; k < c; ++k) {
      const int64_t i = pos[static_cast<size_t>(k)];
      for (size_t f = 0; f < spec_.size(); ++f) {
        const size_t rb = spec_[f].row_bytes();
        std::memcpy(out[f] + static_cast<size_t>(i) * rb, tmp[f].data() + static_cast<size_t>(k) * rb, rb);
      }
      if (partition_out != nullptr) partition_out[i] = values_[p];
      if (meta != nullptr) {
        int64_t* dsts[4] = {meta->inserted, meta->version, meta->times_sampled, meta->last_sampled};
        for (int j = 0; j < 4; ++j) {
          if (dsts[j] != nullptr) dsts[j][i] = mt[j][static_cast<size_t>(k)];
        }
      }
    }
  }
}

int64_t PartitionedTable::UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n) {
  Sync();
  const KeyGroups groups = GroupKeys(keys, n);
  std::vector<std::vector<double>> values(groups.keys.size());
  for (size_t p = 0; p < groups.keys.size(); ++p) {
    for (int64_t i : groups.positions[p]) values[p].push_back(priorities[i]);
    if (!values[p].empty()) {
      parts_[p]->selector().ValidatePriorities(values[p].data(), static_cast<int64_t>(values[p].size()));
    }
  }
  int64_t stale = 0;
  for (size_t p = 0; p < groups.keys.size(); ++p) {
    if (groups.keys[p].empty()) continue;
    stale += parts_[p]->UpdatePriorities(groups.keys[p].data(), values[p].data(),
                                         static_cast<int64_t>(groups.keys[p].size()));
  }
  return stale;
}

int64_t PartitionedTable::UpdateFields(const int64_t* keys, int64_t n, const FieldInput* inputs, size_t count) {
  Sync();
  for (int64_t p = 0; p < local_.load(); ++p) parts_[static_cast<size_t>(p)]->CheckFieldUpdate(n, inputs, count);
  const KeyGroups groups = GroupKeys(keys, n);
  for (size_t i = 0; i < count; ++i) {
    REVERIE_CHECK(inputs[i].name != spec_[static_cast<size_t>(key_field_)].name, "field '", inputs[i].name,
                  "' is the partition key: it cannot be updated in place");
  }
  int64_t stale = 0;
  for (size_t p = 0; p < groups.keys.size(); ++p) {
    const auto& pos = groups.positions[p];
    if (pos.empty()) continue;
    const auto c = static_cast<int64_t>(pos.size());
    // The group's rows of each per-key value, gathered (one item's value goes as it is).
    std::vector<std::vector<uint8_t>> rows(count);
    std::vector<FieldInput> sliced(inputs, inputs + count);
    for (size_t i = 0; i < count; ++i) {
      const ArrayView& v = inputs[i].value;
      const FieldSpec* field = nullptr;
      for (const FieldSpec& f : spec_) {
        if (f.name == inputs[i].name) field = &f;
      }
      if (v.ndim == static_cast<int>(field->shape.size())) continue;  // one value for all
      const size_t rb = static_cast<size_t>(field->item_elements()) * DTypeSize(v.dtype);
      rows[i].resize(static_cast<size_t>(c) * rb);
      for (int64_t k = 0; k < c; ++k) {
        std::memcpy(rows[i].data() + static_cast<size_t>(k) * rb,
                    static_cast<const uint8_t*>(v.data) + static_cast<size_t>(pos[static_cast<size_t>(k)]) * rb, rb);
      }
      sliced[i].value.data = rows[i].data();
      sliced[i].value.shape[0] = c;
    }
    stale += parts_[p]->UpdateFields(groups.keys[p].data(), c, sliced.data(), count);
  }
  return stale;
}

int64_t PartitionedTable::Pin(const int64_t* keys, int64_t n, bool pin) {
  Sync();
  const KeyGroups groups = GroupKeys(keys, n);
  for (size_t p = 0; p < groups.keys.size(); ++p) {
    if (groups.keys[p].empty() || parts_[p]->pins()) continue;
    throw std::invalid_argument(internal::Concat(
        "partition ", values_[p], "'s writer cannot pin items (key ", keys[groups.positions[p][0]],
        "): give its writer pins (a fifo or reservoir writer with the setting \"pins\": true)"));
  }
  int64_t changed = 0;
  for (size_t p = 0; p < groups.keys.size(); ++p) {
    if (groups.keys[p].empty()) continue;
    changed += parts_[p]->Pin(groups.keys[p].data(), static_cast<int64_t>(groups.keys[p].size()), pin);
  }
  return changed;
}

int64_t PartitionedTable::PinPartition(int64_t value, bool pin) {
  Sync();
  const int64_t p = IndexOf(value);
  REVERIE_CHECK(p >= 0, "there is no partition ", value, " (yet): declare it, or pin it once an item of it was written");
  Table& part = *parts_[static_cast<size_t>(p)];
  REVERIE_CHECK(part.pins(), "partition ", value, "'s writer cannot pin items: give its writer pins (a fifo or "
                "reservoir writer with the setting \"pins\": true)");
  return part.PinAll(pin);
}

int64_t PartitionedTable::pinned() {
  Sync();
  int64_t total = 0;
  for (int64_t p = 0; p < local_.load(); ++p) total += parts_[static_cast<size_t>(p)]->pinned();
  return total;
}

void PartitionedTable::Lookup(const int64_t* user_keys, int64_t n, int64_t* keys) {
  Sync();
  std::fill(keys, keys + n, -1);
  std::vector<int64_t> found(static_cast<size_t>(n));
  bool any = false;
  for (int64_t p = 0; p < local_.load(); ++p) {
    try {
      parts_[static_cast<size_t>(p)]->Lookup(user_keys, n, found.data());
    } catch (const std::invalid_argument&) {
      continue;  // a partition without user keys
    }
    any = true;
    for (int64_t i = 0; i < n; ++i) {
      if (keys[i] < 0 && found[static_cast<size_t>(i)] >= 0) keys[i] = found[static_cast<size_t>(i)];
    }
  }
  REVERIE_CHECK(any || local_.load() == 0, "no partition of this buffer keeps user keys to look items up by (a "
                "keyed_archive writer does)");
}

// ---- The mixture --------------------------------------------------------------------------

void PartitionedTable::SetMixture(const std::map<int64_t, double>& by_value) {
  Sync();
  std::vector<double> w(static_cast<size_t>(max_), 0.0);
  double total = 0;
  for (const auto& [value, weight] : by_value) {
    const int64_t p = IndexOf(value);
    REVERIE_CHECK(p >= 0, "the mixture names partition ", value, ", which does not exist (yet): declare it, or set "
                  "its weight once an item of it was written");
    REVERIE_CHECK(std::isfinite(weight) && weight >= 0, "mixture weights must be finite and >= 0; partition ", value,
                  " has ", weight);
    w[static_cast<size_t>(p)] = weight;
    total += weight;
  }
  REVERIE_CHECK(total > 0, "mixture weights must not all be 0");
  header_->mu.Lock();
  for (int64_t p = 0; p < max_; ++p) weights_[p].store(w[static_cast<size_t>(p)], std::memory_order_relaxed);
  header_->mixture_set.store(1, std::memory_order_release);
  header_->mu.Unlock();
}

void PartitionedTable::ClearMixture() { header_->mixture_set.store(0, std::memory_order_release); }

std::map<int64_t, double> PartitionedTable::Mixture() const {
  std::map<int64_t, double> out;
  if (header_->mixture_set.load(std::memory_order_acquire) == 0) return out;
  const int64_t n = header_->count.load(std::memory_order_acquire);
  for (int64_t p = 0; p < n; ++p) out[values_[p]] = weights_[p].load(std::memory_order_relaxed);
  return out;
}

// ---- Inspection ---------------------------------------------------------------------------

int64_t PartitionedTable::size() {
  Sync();
  int64_t s = 0;
  for (int64_t p = 0; p < local_.load(); ++p) s += parts_[static_cast<size_t>(p)]->size();
  return s;
}

int64_t PartitionedTable::written() {
  Sync();
  int64_t s = 0;
  for (int64_t p = 0; p < local_.load(); ++p) s += parts_[static_cast<size_t>(p)]->written();
  return s;
}

int64_t PartitionedTable::stale_updates() {
  Sync();
  int64_t s = 0;
  for (int64_t p = 0; p < local_.load(); ++p) s += parts_[static_cast<size_t>(p)]->stale_updates();
  return s;
}

uint64_t PartitionedTable::sample_calls() const { return header_->calls.load(std::memory_order_relaxed); }

std::string PartitionedTable::config_json() {
  Sync();
  ConfigValue c = config_;
  ConfigValue parts = ConfigValue::MakeMap();
  for (const auto& [k, v] : PartitionsOf(config_).AsMap("partitions")) {
    if (k != "created") parts.Set(k, v);
  }
  ConfigValue created = ConfigValue::MakeList();
  for (int64_t p = static_cast<int64_t>(declared_.size()); p < local_.load(); ++p) created.Append(ConfigValue::Int(values_[p]));
  parts.Set("created", created);
  c.Set("partitions", parts);
  return c.ToJson();
}

int64_t PartitionedTable::version() const { return header_->version.load(std::memory_order_relaxed); }

void PartitionedTable::set_version(int64_t version) {
  Sync();
  header_->version.store(version, std::memory_order_relaxed);
  for (int64_t p = 0; p < local_.load(); ++p) parts_[static_cast<size_t>(p)]->set_version(version);
}

void PartitionedTable::Unlink() {
  if (!region_.shared() || !region_.owns()) return;
  Sync();
  for (int64_t p = 0; p < local_.load(); ++p) Region::UnlinkShared(PartitionName(p));
  region_.Unlink();
}

void PartitionedTable::Flush() {
  Sync();
  for (int64_t p = 0; p < local_.load(); ++p) parts_[static_cast<size_t>(p)]->Flush();
  region_.Flush();
}

std::vector<int64_t> PartitionedTable::StoredKeys() {
  Sync();
  std::vector<int64_t> keys;
  for (int64_t p = 0; p < local_.load(); ++p) {
    const std::vector<int64_t> k = parts_[static_cast<size_t>(p)]->StoredKeys();
    keys.insert(keys.end(), k.begin(), k.end());
  }
  return keys;
}

void PartitionedTable::SlotsOf(const int64_t* keys, int64_t* slots, int64_t n) {
  Sync();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = PartitionOfKey(keys[i]);
    if (p < 0) {
      slots[i] = -1;
    } else {
      parts_[static_cast<size_t>(p)]->SlotsOf(keys + i, slots + i, 1);
    }
  }
}

void PartitionedTable::SetLive(const std::string& role, const std::string& name, const ConfigValue& value) {
  Sync();
  // Every partition whose part in that role has the setting (a beta reaches the prioritized
  // partitions, not the uniform ones); an error when none has it.
  std::vector<Table*> with;
  for (int64_t p = 0; p < local_.load(); ++p) {
    Table& t = *parts_[static_cast<size_t>(p)];
    try {
      if (t.Live(role).Has(name)) with.push_back(&t);
    } catch (const std::invalid_argument&) {
    }
  }
  REVERIE_CHECK(!with.empty(), "no partition's ", role, " has a live setting '", name, "'");
  for (Table* t : with) t->SetLive(role, name, value);
}

ConfigValue PartitionedTable::Live(const std::string& role) {
  // The first partition's whose part in that role has live settings (else the first's).
  Sync();
  ConfigValue first;
  bool any = false;
  for (int64_t p = 0; p < local_.load(); ++p) {
    try {
      ConfigValue live = parts_[static_cast<size_t>(p)]->Live(role);
      if (!live.AsMap("live settings").empty()) return live;
      if (!any) first = live;
      any = true;
    } catch (const std::invalid_argument&) {
    }
  }
  REVERIE_CHECK(any, "no partition of this buffer has a ", role);
  return first;
}

// ---- State ----------------------------------------------------------------------------------

namespace {

std::string Prefix(int64_t p) { return internal::Concat("partition", p, "/"); }

}  // namespace

std::vector<StateArray> PartitionedTable::StateArrays() {
  Sync();
  std::vector<StateArray> out;
  out.push_back(StateArray{"partitions.values", "int64", {max_}, reinterpret_cast<uint8_t*>(values_), false});
  out.push_back(StateArray{"partitions.weights", "float64", {max_}, reinterpret_cast<uint8_t*>(weights_), false});
  for (int64_t p = 0; p < local_.load(); ++p) {
    for (StateArray a : parts_[static_cast<size_t>(p)]->StateArrays()) {
      a.name = Prefix(p) + a.name;
      out.push_back(std::move(a));
    }
  }
  return out;
}

ConfigValue PartitionedTable::Scalars() {
  Sync();
  ConfigValue out = ConfigValue::MakeMap();
  out.Set("partitions.count", ConfigValue::Int(local_.load()));
  out.Set("partitions.calls", ConfigValue::UInt(header_->calls.load()));
  out.Set("partitions.mixture_set", ConfigValue::Int(header_->mixture_set.load()));
  out.Set("partitions.version", ConfigValue::Int(header_->version.load()));
  out.Set("partitions.stored", ConfigValue::Int(header_->ring.committed.load()));
  out.Set("limiter.sampled", ConfigValue::Int(limiter_.sampled()));
  out.Set("limiter.offset", ConfigValue::Double(limiter_.offset()));
  for (int64_t p = 0; p < local_.load(); ++p) {
    const ConfigValue mine = parts_[static_cast<size_t>(p)]->Scalars();  // kept alive for the loop
    for (const auto& [k, v] : mine.AsMap("scalars")) out.Set(Prefix(p) + k, v);
  }
  return out;
}

ConfigValue PartitionedTable::Scalars(std::vector<std::string> names, std::vector<std::vector<uint8_t>>* copies) {
  Sync();
  copies->assign(names.size(), {});
  std::map<int64_t, std::vector<size_t>> by_partition;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    if (name == "partitions.values" || name == "partitions.weights") {
      const uint8_t* src = name == "partitions.values" ? reinterpret_cast<const uint8_t*>(values_)
                                                       : reinterpret_cast<const uint8_t*>(weights_);
      (*copies)[i].assign(src, src + static_cast<size_t>(max_) * 8);
      continue;
    }
    const size_t slash = name.find('/');
    REVERIE_CHECK(name.rfind("partition", 0) == 0 && slash != std::string::npos, "no state array named '", name, "'");
    const int64_t p = std::stoll(name.substr(9, slash - 9));
    REVERIE_CHECK(p >= 0 && p < local_.load(), "no state array named '", name, "'");
    by_partition[p].push_back(i);
  }
  ConfigValue out = Scalars();
  for (const auto& [p, which] : by_partition) {
    std::vector<std::string> local;
    for (size_t i : which) local.push_back(names[i].substr(names[i].find('/') + 1));
    std::vector<std::vector<uint8_t>> got;
    const ConfigValue s = parts_[static_cast<size_t>(p)]->Scalars(local, &got);
    for (size_t k = 0; k < which.size(); ++k) (*copies)[which[k]] = std::move(got[k]);
    for (const auto& [k, v] : s.AsMap("scalars")) out.Set(Prefix(p) + k, v);
  }
  return out;
}

void PartitionedTable::Restore(const ConfigValue& scalars) {
  Sync();
  const int64_t n = StateInt(scalars, "partitions.count");
  REVERIE_CHECK(n == local_.load(), "the state has ", n, " partitions but this buffer has ", local_.load());
  for (int64_t p = 0; p < n; ++p) {
    ConfigValue mine = ConfigValue::MakeMap();
    const std::string prefix = Prefix(p);
    for (const auto& [k, v] : scalars.AsMap("state")) {
      if (k.rfind(prefix, 0) == 0) mine.Set(k.substr(prefix.size()), v);
    }
    parts_[static_cast<size_t>(p)]->Restore(mine);
  }
  header_->calls.store(static_cast<uint64_t>(StateInt(scalars, "partitions.calls")), std::memory_order_relaxed);
  header_->mixture_set.store(StateInt(scalars, "partitions.mixture_set"), std::memory_order_relaxed);
  header_->version.store(StateInt(scalars, "partitions.version"), std::memory_order_relaxed);
  const int64_t stored = StateInt(scalars, "partitions.stored");
  header_->ring.claimed.store(stored, std::memory_order_relaxed);
  header_->ring.committed.store(stored, std::memory_order_relaxed);
  limiter_.Restore(StateInt(scalars, "limiter.sampled"), StateScalar(scalars, "limiter.offset"));
  std::lock_guard<std::mutex> lock(mu_);
  index_.clear();
  for (int64_t p = 0; p < n; ++p) index_[values_[p]] = p;
}

// ---- Stored configuration -------------------------------------------------------------------

bool PartitionedTable::Holds(const StorageConfig& storage) {
  try {
    (void)StoredConfig(storage);
    return true;
  } catch (const std::invalid_argument&) {
    return false;
  }
}

std::string PartitionedTable::StoredConfig(const StorageConfig& storage) {
  const char* what = storage.kind == StorageConfig::Kind::kFile ? "file" : "shared memory";
  std::vector<uint8_t> head;
  if (storage.kind == StorageConfig::Kind::kFile) {
    bool existed = false;
    (void)existed;
    FILE* f = std::fopen(storage.name.c_str(), "rb");
    REVERIE_CHECK(f != nullptr, "cannot open '", storage.name, "'");
    head.resize(AlignUp(sizeof(PartitionedHeader), 64));
    const size_t got = std::fread(head.data(), 1, head.size(), f);
    head.resize(got);
    if (got >= sizeof(PartitionedHeader)) {
      const auto* h = reinterpret_cast<const PartitionedHeader*>(head.data());
      if (h->magic.load(std::memory_order_relaxed) == PartitionedHeader::kMagic && h->config_bytes < (size_t{1} << 24)) {
        head.resize(AlignUp(sizeof(PartitionedHeader), 64) + h->config_bytes);
        std::fseek(f, 0, SEEK_SET);
        head.resize(std::fread(head.data(), 1, head.size(), f));
      }
    }
    std::fclose(f);
  } else {
    const Region region = Region::AttachShared(storage.name);
    head.assign(region.data(), region.data() + region.size());
  }
  REVERIE_CHECK(head.size() >= sizeof(PartitionedHeader), what, " '", storage.name, "' is not a partitioned reverie table");
  const auto* h = reinterpret_cast<const PartitionedHeader*>(head.data());
  REVERIE_CHECK(h->magic.load(std::memory_order_acquire) == PartitionedHeader::kMagic, what, " '", storage.name,
                "' is not a partitioned reverie table of this version");
  const size_t at = AlignUp(sizeof(PartitionedHeader), 64);
  REVERIE_CHECK(at + h->config_bytes <= head.size(), what, " '", storage.name, "' is truncated");
  return std::string(reinterpret_cast<const char*>(head.data()) + at, h->config_bytes);
}

}  // namespace reverie
