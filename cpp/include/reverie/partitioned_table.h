// A partitioned table: one table (table.h) per partition of the items, chosen by a partition
// key field (task, class, domain, source: real / synthetic / demo), each with its own
// capacity, writer, admission rule, remover and selector, and batches drawn from the
// partitions by mixture weights that may change at any time from any thread or process.
//
// Configuration (config.h), a map:
//   "spec", "seed", "shard", "metadata": as a table's (every partition has the spec);
//   "partitions": {
//     "key": "<integer scalar field>",        the partition of an item is its value there
//     "max": P (1 .. 4096),                   partitions there can ever be (key bits, region)
//     "mode": "exact" | "stochastic",         per-batch counts (below)
//     "empty": "error" | "skip",              an empty partition with weight > 0
//     "declared": [[value, settings], ...],   partitions made up front, in this order
//     "default": settings | null,             for values met first in a write (null: refused)
//     "created": [value, ...]                 made on first use so far (kept by saves)
//   }, "rate_limiter": as a table's (one limiter for the whole table).
// A partition's settings: {"capacity", "writer", "selector", "admission",
// "max_times_sampled"} as a table's. Partition i (in order of declaration, then of first use)
// is a table with seed Mix(seed, i), and keys that carry i (key.h), so that get, priority
// and field updates go to their partition by the key alone.
//
// Mixture. sample(B) takes from partition p a count c_p:
//  - exact: the largest-remainder rounding of B * w_p / sum(w): floor(B w_p / W) each, then
//    one more for the partitions with the largest remainders (ties: the earlier partition),
//    so 25/75 of 256 is 64/192 every call;
//  - stochastic: multinomial(B, w / W), from B categorical draws of the counter-based
//    generator (seed, call), so reproducible.
// Weights come from the call, else from the shared mixture (SetMixture; in the region, so
// every process sees a change at its next call), else (never set) from the partitions' sizes
// (uniform over all stored items). A partition of weight 0 is never drawn; an empty one of
// weight > 0 is an error naming it ("error"), or left out of that call ("skip").
// Importance weights (prioritized partitions): w_i = (q_min / q_i)^beta, q_i the item's
// priority and q_min the smallest held by any partition the call draws from: they correct
// the prioritisation within each partition, on one scale for all, and keep the mixture the
// caller chose (they equal one prioritized buffer's over the union when the mixture is the
// partitions' priority totals). A uniform partition's items get 1.
//
// Thread- and process-safety: as a table's; partitions made by one process are attached by
// the others at their next call. A write goes to its partitions one after the other (each
// partition's write as a table's); a sample's partitions are drawn one after the other.
// Errors: input is checked before anything changes (a write of an undeclared value without a
// default, or beyond `max` partitions, stores nothing); a partition made for a write that then
// fails a writer's check (a NaN score) stays, empty.
#pragma once

#include <cstdint>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "reverie/config.h"
#include "reverie/rate_limiter.h"
#include "reverie/region.h"
#include "reverie/table.h"

namespace reverie {

struct PartitionedHeader;

class PartitionedTable final : public WriteSink {
 public:
  static constexpr int64_t kMaxPartitions = 4096;

  PartitionedTable(const ConfigValue& config, const StorageConfig& storage);
  ~PartitionedTable() override;
  PartitionedTable(const PartitionedTable&) = delete;
  PartitionedTable& operator=(const PartitionedTable&) = delete;

  // The canonical configuration stored in an existing shared segment or file (ValueError
  // when there is none or it is not a partitioned table).
  static std::string StoredConfig(const StorageConfig& storage);
  // Whether the segment / file holds a partitioned table (rather than a table).
  static bool Holds(const StorageConfig& storage);

  // ---- Writing (WriteSink) ----
  int64_t Add(const FieldInput* inputs, size_t n, const uint8_t* admitted = nullptr,
              int64_t admitted_size = 0) override;
  int64_t Extend(const FieldInput* inputs, size_t n, const uint8_t* admitted = nullptr,
                 int64_t admitted_size = 0) override;

  // ---- Reading ----
  // As Table::Sample, plus partition[i] = the partition key value of item i (may be null).
  // `weights_override` (may be null): one weight per partition index (count()), for this
  // call only.
  void Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights, int64_t* partition,
              const BatchMeta* meta, const double* weights_override, int64_t override_size);
  void Get(const int64_t* keys, int64_t n, uint8_t* const* out, int64_t* partition,
           const BatchMeta* meta);
  int64_t UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n);
  int64_t UpdateFields(const int64_t* keys, int64_t n, const FieldInput* inputs, size_t count);
  void Lookup(const int64_t* user_keys, int64_t n, int64_t* keys);
  // Pins as Table::Pin, each key in its partition (every partition named must have pins;
  // checked before anything changes). Returns how many items changed.
  int64_t Pin(const int64_t* keys, int64_t n, bool pin);
  // Table::PinAll of the partition of `value` (ValueError when there is none).
  int64_t PinPartition(int64_t value, bool pin);
  int64_t pinned();  // items pinned, all partitions

  // ---- Partitions and the mixture ----
  int64_t count();                         // partitions made so far (attaching new ones)
  int64_t value(int64_t index);            // the partition key value of partition `index`
  int64_t IndexOf(int64_t value);          // -1: no such partition
  Table& partition(int64_t index);
  // The shared mixture: weights[i] for partition i (< count(), or for values not made yet
  // through SetMixtureValues); each finite and >= 0, not all 0. ValueError otherwise.
  void SetMixture(const std::map<int64_t, double>& by_value);
  void ClearMixture();                      // back to "by the partitions' sizes"
  // The weights now, by value (empty: never set).
  std::map<int64_t, double> Mixture() const;
  const std::string& mode() const { return mode_; }

  // ---- Inspection (sums over the partitions) ----
  int64_t capacity() const { return capacity_; }
  int64_t size();
  int64_t written();
  int64_t stale_updates();
  uint64_t sample_calls() const;
  uint64_t seed() const { return seed_; }
  const std::vector<FieldSpec>& spec() const { return spec_; }
  std::string config_json();  // the configuration now (with the partitions made so far)
  int64_t version() const;
  void set_version(int64_t version);
  RateLimiter& rate_limiter() { return limiter_; }
  bool shared() const { return region_.shared(); }
  const std::string& shared_name() const { return region_.name(); }
  void Unlink();
  void Flush();
  bool reopened() const { return reopened_; }
  std::vector<int64_t> StoredKeys();
  void SlotsOf(const int64_t* keys, int64_t* slots, int64_t n);  // -1 for no key of this table
  void SetLive(const std::string& role, const std::string& name, const ConfigValue& value);
  ConfigValue Live(const std::string& role);
  void set_wait_poll(std::function<void()> poll) { poll_ = std::move(poll); }

  // ---- State: every partition's arrays and scalars as "partition<i>/<name>", and the
  // table's own ("partitions.*", "limiter.*"). Not while other threads use the table. ----
  std::vector<StateArray> StateArrays();
  ConfigValue Scalars();
  ConfigValue Scalars(std::vector<std::string> names, std::vector<std::vector<uint8_t>>* copies);
  void Restore(const ConfigValue& scalars);

 private:
  struct Settings {
    int64_t value;
    ConfigValue table;  // the partition's settings
  };
  // Keys by partition (validated: each names an item its partition ever stored), with
  // their positions in the call.
  struct KeyGroups {
    std::vector<std::vector<int64_t>> positions;
    std::vector<std::vector<int64_t>> keys;
  };
  KeyGroups GroupKeys(const int64_t* keys, int64_t n);
  // Makes partition tables up to the region's count (made by any process). Not under the
  // region's lock; the local list under mu_.
  void Sync();
  // The index of `value`, making its partition when there is none (under the region lock):
  // -1 when it cannot be made (`why` says why).
  int64_t Obtain(int64_t value, std::string* why);
  ConfigValue TableConfigOf(int64_t index, const ConfigValue& settings) const;
  std::unique_ptr<Table> OpenPartition(int64_t index, bool create);
  std::string PartitionName(int64_t index) const;
  int64_t Write(const FieldInput* inputs, size_t n, bool batched, const uint8_t* admitted,
                int64_t admitted_size);
  // The partition index of each key (-1 when it names no partition of this table).
  int64_t PartitionOfKey(int64_t key);
  std::string BadKeyMessage(int64_t key, int64_t position);
  void Counts(int64_t batch, uint64_t call, const std::vector<double>& weights, std::vector<int64_t>* counts) const;

  ConfigValue config_;
  std::vector<FieldSpec> spec_;
  uint64_t seed_ = 0;
  int64_t shard_ = 0;
  int key_field_ = -1;
  DType key_dtype_ = DType::kInt64;
  int64_t max_ = 1;
  int slot_bits_ = 0, partition_bits_ = 0;
  int64_t capacity_ = 0;  // of the declared partitions plus `max` - declared default ones
  std::string mode_ = "exact";
  bool skip_empty_ = false;
  std::vector<Settings> declared_;
  ConfigValue default_;  // null: undeclared values are refused
  StorageConfig storage_;
  Region region_;
  PartitionedHeader* header_ = nullptr;
  Ring ring_;  // counters only (the limiter's inserts)
  RateLimiter limiter_;
  bool reopened_ = false;
  std::function<void()> poll_;
  int64_t* values_ = nullptr;              // [max] in the region: partition i's key value
  std::atomic<double>* weights_ = nullptr;  // [max] in the region: the shared mixture
  std::mutex mu_;  // guards making and attaching partitions (and index_) within this process
  std::vector<std::unique_ptr<Table>> parts_;  // [max], filled up to local_ (never moved)
  std::atomic<int64_t> local_{0};              // partitions this process has opened
  std::map<int64_t, int64_t> index_;           // value -> index, of parts_ (under mu_)
};

}  // namespace reverie
