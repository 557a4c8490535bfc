// A table: columnar storage of items plus the parts that decide what it holds and what a
// batch takes (Reverb's Table(sampler, remover, extensions) and TorchRL's storage / writer /
// sampler split are the models). All of it lives in one memory region (region.h): private
// memory, a POSIX shared-memory segment that other processes attach to, or a file.
//
//   configuration (config.h)  one tree of settings, one canonical JSON form
//   keys (key.h)              a slot and its generation; one decoder for every part
//   slot stamps (ring.h)      commit protocol: no sample sees a torn or unwritten row
//   writer (writer.h)         where an offered item goes: FIFO ring, reservoir, top-k
//   admission (admission.h)   which offered items may enter at all: score threshold
//   selector (selector.h)     which items a batch draws: uniform, prioritized
//   item metadata             version, times sampled, last sample call (item_metadata.h)
//   remover                   max_times_sampled: an item leaves after its N-th sample
//   view (episode_view.h)     rows as episodes: n-step transitions, sequence windows
//   rate limiter              samples per insert (rate_limiter.h)
//
// The table runs the protocols (table_write.cc, table_sample.cc); parts decide. Each part
// keeps its state in sections of the region and names it as arrays and scalars (part.h),
// which is all that checkpoints, state_dict and exports persist.
//
// Thread- and process-safety: every public method may be called from any number of threads
// (and, for a shared table, processes) at once, except the state setters (Restore, the
// writes into state arrays) which need the table to be idle.
//  - Writes: the FIFO writer is lock-free (ring.h): writers claim insertion numbers with one
//    atomic add and publish each slot with a commit stamp; they take the writer lock only
//    for the moment they mark slots when the selector keeps shared state (priorities, a live
//    set). Other writers decide and store under the writer lock. An episode table's writes
//    take turns under the lock (each continues the env streams from the last one's rows).
//  - Sample takes no lock: it validates every row it copies against the slot's stamp and
//    redraws rows that were being written; a remover (max_times_sampled) takes the lock at
//    the end of a call to remove the items it used up.
//  - UpdatePriorities takes the writer lock. The lock is robust: a process that dies holding
//    it costs a rebuild of the tree, not a deadlock.
// Every method validates all of its input before it changes anything: after an exception the
// table is exactly as before.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "reverie/admission.h"
#include "reverie/arena.h"
#include "reverie/config.h"
#include "reverie/episode_view.h"
#include "reverie/item_metadata.h"
#include "reverie/rate_limiter.h"
#include "reverie/region.h"
#include "reverie/ring.h"
#include "reverie/selector.h"
#include "reverie/storage.h"
#include "reverie/writer.h"

namespace reverie {

struct StorageConfig {
  enum class Kind { kPrivate, kCreateShared, kAttachShared, kFile };
  Kind kind = Kind::kPrivate;
  // The shared-memory segment (/dev/shm/<name>), or for kFile the file's path: the whole
  // table lives in it, created when missing and reopened (with everything it held) when it
  // exists.
  std::string name;
};

// Per-item metadata of a batch (any pointer may be null: not wanted). int64 [batch] each.
struct BatchMeta {
  int64_t* inserted = nullptr;       // insertion number (items stored before it, ever)
  int64_t* version = nullptr;        // the table's version when it was written
  int64_t* times_sampled = nullptr;  // samples before this one (a batch) / so far (Get)
  int64_t* last_sampled = nullptr;   // the sample call before this one (-1: none) / the last
};

// How SampleRagged lays out a batch's ragged fields (arena.h).
struct RaggedLayout {
  bool padded = false;   // [B, T, *rest] per field; else packed [N_tok, *rest]
  int64_t multiple = 1;  // padded: T rounded up to it; packed: each group's total tokens
  std::vector<uint8_t> left;  // per group: padded on the left (a prompt)
  std::vector<std::vector<uint8_t>> pad;  // per ragged field: one element's bytes (pad value)
  int64_t max_tokens = 0;  // > 0: a token budget over all groups (see SampleRagged)
  bool positions = true;   // packed: fill position_ids (else that output is not allocated)
};

// Where SampleRagged puts a batch's ragged outputs: memory the caller owns (a new array each).
//   output f < F (the ragged fields): the field's values, its dtype;
//   output F + 2g: group g's cu_seqlens, int32 [B + 1] (+1 entry when packed padding was added);
//   output F + 2g + 1: group g's position_ids (packed, int64 [N_tok]; only with
//   RaggedLayout::positions) or attention_mask (padded, int64 [B, T]).
class RaggedSink {
 public:
  virtual ~RaggedSink() = default;
  virtual uint8_t* Allocate(int output, DType dtype, const int64_t* shape, int ndim) = 0;
};

struct TableHeader;  // the region's first bytes: counters, locks, limiter

// What add / extend write into: a table, or a partitioned table (partitioned_table.h). The
// bindings' fast write path holds one of these.
class WriteSink {
 public:
  virtual ~WriteSink() = default;
  virtual int64_t Add(const FieldInput* inputs, size_t n, const uint8_t* admitted = nullptr,
                      int64_t admitted_size = 0) = 0;
  virtual int64_t Extend(const FieldInput* inputs, size_t n, const uint8_t* admitted = nullptr,
                         int64_t admitted_size = 0) = 0;
};

class Table : public WriteSink {
 public:
  // The table's configuration (config.h), a map:
  //   "capacity": int >= 1 (<= 2^40), "spec": [[name, dtype, [dims...]], ...],
  //   "seed": uint64, "shard": 0 .. 127 (default 0), "writer": {"kind": ...} (default fifo),
  //   "selector": {"kind": ...} (default uniform), "admission": {"kind": ...} or null,
  //   "max_times_sampled": int >= 1 or null, "metadata": bool (default false),
  //   "view": {"kind": "episodes", ...} or null, "rate_limiter": {...} or null (live),
  //   "reuse": {"min_interval": K >= 1, "unit": "calls" | "items", "max_staleness": S >= 0}
  //     or null: rules on which held items a draw may take (below).
  // Reuse rules. An item drawn at clock c (its sample call, or with unit "items" the count
  // of items written when that call began) may be drawn again only at a clock >= c + K (so
  // never twice in one batch); with max_staleness S only items whose version is >= the
  // table's version - S are drawn. A draw that lands on another item is drawn again from the
  // selector (rejection: exactly the selector's distribution over the items the rules
  // allow, at a cost of about 1 / (the share allowed) draws per item; a call fails when
  // thousands of draws find nothing allowed). Concurrent samplers claim an item by a
  // compare-and-swap, so the interval holds across threads and processes.
  // Throws ValueError / TypeError for bad settings or a combination of parts that does not
  // work (naming both), and for a shared segment or file that is not a table of this
  // configuration (attach and reopen compare the fingerprint of the settings that fix its
  // layout and meaning; live settings such as beta are the region's).
  Table(const ConfigValue& config, const StorageConfig& storage);
  ~Table() override;
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  // The canonical configuration stored in an existing shared segment or table file, for
  // attaching to it or reopening it. Throws ValueError when there is none.
  static std::string StoredConfig(const StorageConfig& storage);

  // ---- Writing ----
  // Stores one item / the items along the leading axis (an episode table: whole env steps,
  // [num_envs, ...] or [T, num_envs, ...]). `admitted` (may be null): per input row, 0 to
  // drop it before any admission rule or writer sees it (a caller's predicate). Returns how
  // many items were stored (the others were dropped by admission or by the writer). May wait
  // for the rate limiter. FIFO: of more items than the capacity only the last `capacity`
  // are written (the others count as written and overwritten).
  // `admitted_size` must equal the number of input rows when `admitted` is given.
  int64_t Add(const FieldInput* inputs, size_t n, const uint8_t* admitted = nullptr,
              int64_t admitted_size = 0) override;
  int64_t Extend(const FieldInput* inputs, size_t n, const uint8_t* admitted = nullptr,
                 int64_t admitted_size = 0) override;

  // Checks a write's fields against `spec` (envs: an episode table's num_envs, else 0) as
  // Add / Extend do, without writing: values[f] (spec order) gets each field's value,
  // *leading the batch's rows. Throws ValueError / TypeError as they do.
  static void ValidateRows(const std::vector<FieldSpec>& spec, int64_t envs, const FieldInput* inputs,
                           size_t n, bool batched, const ArrayView** values, int64_t* leading);
  // Everything Add / Extend check before storing (fields, the mask, the admission rule, the
  // writer's own check of the items it would be offered), without storing. Throws as they do.
  void Precheck(const FieldInput* inputs, size_t n, bool batched, const uint8_t* admitted,
                int64_t admitted_size) const;
  // The validation of UpdateFields for n keys, without changing anything.
  void CheckFieldUpdate(int64_t n, const FieldInput* inputs, size_t count) const;
  // Throws IndexError (naming position `position`) unless `key` names an item this table
  // ever stored (stored now, or since replaced). O(1).
  void CheckKey(int64_t key, int64_t position) const;

  // ---- Reading ----
  // Draws `batch` items and writes, for each field f (spec order), the rows into out[f]
  // (batch * row_bytes each), the keys into `keys`, for a prioritized selector the
  // importance weights into `weights` (may be null), and the metadata wanted (`meta` may be
  // null). May wait for the rate limiter. Throws ValueError when it cannot be served.
  void Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights,
              const BatchMeta* meta = nullptr);
  // Called once a batch's rows, keys, weights and metadata are final, before the remover
  // takes the items it used up (SampleRagged copies the ragged values here). If it throws,
  // the call is taken back as a failed one: counts undone, the limiter's and the remover's
  // reservations returned.
  using BatchHook = std::function<void(int64_t* keys)>;
  // Copies the stored items of keys[0..n) into out[f] (and their metadata). Throws
  // IndexError naming the first key that names no stored item (never written, not a key of
  // this table, or written again since).
  void Get(const int64_t* keys, int64_t n, uint8_t* const* out, const BatchMeta* meta = nullptr) const;
  // A table with ragged fields (arena.h): draws `batch` items as Sample does (fixed fields
  // into out, keys, weights, meta), writes their group lengths into lengths[batch * groups],
  // and copies their ragged values once into memory from `sink`, laid out as `layout` says.
  // An item evicted while its values were copied makes the call copy again (a new draw).
  // With a token budget (layout.max_tokens) the `batch` items drawn are put in a random
  // order (Philox, by seed and call) and the longest prefix whose tokens fit the budget is
  // kept (at least one item: one longer than the budget comes alone); the fixed outputs,
  // keys, weights, meta and lengths are reordered to match and the kept count is returned
  // (else `batch`). `keys` etc. must hold `batch` entries.
  int64_t SampleRagged(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights, const BatchMeta* meta,
                       const RaggedLayout& layout, int64_t* lengths, RaggedSink& sink);
  // Get for a ragged table: the items of keys, their lengths and ragged values (as
  // SampleRagged lays them out; no budget). IndexError as Get, also for an item evicted
  // while it was copied.
  void GetRagged(const int64_t* keys, int64_t n, uint8_t* const* out, const BatchMeta* meta,
                 const RaggedLayout& layout, int64_t* lengths, RaggedSink& sink) const;
  const TokenArena* arena() const { return arena_.get(); }
  // A table with ragged fields: stores the items of one Extend as one group (the G responses
  // to a prompt): all or none, linked so that GroupMembers finds them, and evicted together.
  // ValueError for a group larger than the capacity or half the arena.
  int64_t ExtendGroup(const FieldInput* inputs, size_t n);
  // For each key (an item of a group, as drawn): every member of its group now, first to
  // last, into members (counts[i] for key i). Items written alone are groups of one. False
  // when a group changed while it was read (the caller draws again); IndexError-free: a key
  // whose item left is reported by the false result.
  bool GroupMembers(const int64_t* keys, int64_t n, std::vector<int64_t>* members, int64_t* counts) const;
  // UpdateFields for ragged fields (recalibrated per-token advantages): `inputs` name ragged
  // fields, each packed values with lengths (FieldInput::lengths, one per key), and every
  // length must be the stored item's (values are overwritten in place). Keys as
  // UpdateFields: IndexError for a key never of this table, an item that left is skipped
  // and counted; returns how many were skipped. ValueError / TypeError (nothing changed) for
  // a fixed or unknown field, a wrong dtype or shape, or a length that is not the item's. A
  // sample copying an item meanwhile copies it again. Takes the writer lock.
  int64_t UpdateRagged(const int64_t* keys, int64_t n, const FieldInput* inputs, size_t count);
  // The keys of the `n` oldest items held (fewer when fewer are held) whose version is at
  // least `min_version` (with versions kept; else any), oldest first: oldest-first serving.
  // Takes the writer lock. O(n + items skipped).
  std::vector<int64_t> OldestKeys(int64_t n, int64_t min_version) const;
  // Sets the priorities of the items named by keys. A key that names nothing this table
  // ever stored throws IndexError; a key whose item left (overwritten, evicted, removed) is
  // skipped and counted in stale_updates(). Returns how many were skipped.
  int64_t UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n);

  // Overwrites fields of stored items in place (advantages recalibrated, logits rewritten,
  // labels that arrive later). `inputs` name some of the spec's fields (each once), each
  // [n, *shape] with the field's dtype (untyped numbers as for writes), or one item's shape
  // to give every key the same value. Keys as UpdatePriorities: IndexError for a key that
  // never named an item of this table, an item that left is skipped and counted in
  // stale_updates(); returns how many were skipped (a key given twice: the last value wins).
  // A sample or Get running meanwhile never returns an item half updated: it copies again.
  // Takes the writer lock.
  int64_t UpdateFields(const int64_t* keys, int64_t n, const FieldInput* inputs, size_t count);

  // Changes that make a sample in flight start over (a selector's rebuild, an in-place field
  // update): StableEpoch waits (bounded) while one runs, then returns a value that Epoch
  // equals until the next one starts.
  uint64_t Epoch() const;
  uint64_t StableEpoch() const;
  static constexpr uint64_t kNoEpoch = ~uint64_t{0};  // StableEpoch found no stable value

  // The episode view, or null.
  EpisodeView* episodes() { return view_.get(); }
  const EpisodeView* episodes() const { return view_.get(); }

  // keys[i] = the key of the item held for user key user_keys[i] by a keyed writer (its key
  // field; keyed_archive), -1 when none. ValueError for a writer without user keys. O(n).
  void Lookup(const int64_t* user_keys, int64_t n, int64_t* keys);

  // Pins (a writer made with pins, writer.h): a pinned item is never evicted. Keys as
  // UpdatePriorities (IndexError for a key that never named an item of this table, nothing
  // changed; an item that left is skipped and counted in stale_updates()). Returns how many
  // items changed state. ValueError for a writer without pins. Takes the writer lock.
  int64_t Pin(const int64_t* keys, int64_t n, bool pin);
  // Pins every item held and, while set, every item written later (pin = true); false
  // unpins every item. Returns how many changed.
  int64_t PinAll(bool pin);
  int64_t pinned() const { return writer_->pinned_count(); }
  bool pins() const { return !arena_ && writer_->pins(); }
  bool pins_new() const { return writer_->pins_new(); }

  // ---- Keys (key.h): the one decoder the layers above use ----
  const KeyCodec& codec() const { return ring_.codec(); }
  // slots[i] = the slot of keys[i], or -1 for a key that is not one of this table's. O(n).
  void SlotsOf(const int64_t* keys, int64_t* slots, int64_t n) const;
  // The keys of the stored items, oldest first. O(size) (locked writers O(capacity log)).
  std::vector<int64_t> StoredKeys() const;
  // out[i] = the insertion number of keys[i] (stored items counted from 0), -1 when the
  // writer cannot tell (a key of an item a locked writer no longer holds) or it is no key.
  void InsertionsOf(const int64_t* keys, int64_t* out, int64_t n) const;

  // ---- Inspection ----
  int64_t capacity() const { return storage_.capacity(); }
  int64_t size() const;  // items stored now
  int64_t written() const { return ring_.committed(); }  // items ever stored
  int64_t claimed() const { return ring_.claimed(); }    // > written while writes are in flight
  int64_t stale_updates() const;
  uint64_t seed() const { return seed_; }
  uint64_t sample_calls() const;
  const std::vector<FieldSpec>& spec() const { return storage_.spec(); }
  const Storage& storage() const { return storage_; }
  uint8_t* column(size_t field) { return storage_.column(field); }  // bypasses the stamps
  const Selector& selector() const { return *selector_; }
  Selector& selector() { return *selector_; }
  Writer& writer() { return *writer_; }
  Admission* admission() { return admission_.get(); }
  const ItemMetadata* metadata() const { return meta_.get(); }
  RateLimiter& rate_limiter() { return limiter_; }
  const RateLimiter& rate_limiter() const { return limiter_; }
  // The canonical configuration (what the region's fingerprint is of, live settings as made).
  const std::string& config_json() const { return config_json_; }
  // The version stamped on items written from now on (metadata).
  int64_t version() const;
  void set_version(int64_t version);
  // Called about every 50 ms while a call waits for the rate limiter; may throw to abort it.
  void set_wait_poll(std::function<void()> poll) { poll_ = std::move(poll); }

  bool shared() const { return region_.shared(); }
  bool reopened() const { return reopened_; }  // a file table opened with its contents
  void Flush() { region_.Flush(); }
  const std::string& shared_name() const { return region_.name(); }
  void Unlink() { region_.Unlink(); }  // removes the shared-memory name now (creator only)
  void Disown() { region_.Disown(); }  // the name outlives this process (a partition's)

  // Live settings of the part playing `role` ("selector", "admission", "writer"), under
  // the writer lock (part.h). ValueError for a table without that part or an unknown name.
  void SetLive(const std::string& role, const std::string& name, const ConfigValue& value);
  ConfigValue Live(const std::string& role) const;
  // Copies of the named state arrays and every scalar, taken together under the writer lock
  // (a consistent look at a table in use, e.g. its priorities). ValueError for unknown names.
  ConfigValue Scalars(std::vector<std::string> names, std::vector<std::vector<uint8_t>>* copies);

  // Runs fn(selector) under the writer lock (beta changes, reading priority state).
  template <typename Fn>
  auto WithSelector(Fn&& fn) {
    WriterLock lock(*this);
    return fn(*selector_);
  }

  // ---- State (part.h). Not while other threads use the table. ----
  // Every persisted array: "column:<field>" per field, "table.stamps", then the parts'.
  std::vector<StateArray> StateArrays();
  // Every persisted scalar: the table's counters ("table.written", "table.sample_calls",
  // "table.stale_updates", "table.version", "limiter.sampled", "limiter.offset") and the
  // parts'.
  ConfigValue Scalars() const;
  // After every array of StateArrays() was overwritten with saved contents: checks them
  // (ValueError naming what does not fit) and rebuilds the derived state. The table is
  // unusable after a failed Restore (discard it).
  void Restore(const ConfigValue& scalars);

 private:
  friend class EpisodeView;

  // The robust writer lock; repairs the tree when its last holder died holding it.
  class WriterLock {
   public:
    explicit WriterLock(Table& table);
    ~WriterLock();
    WriterLock(const WriterLock&) = delete;
    WriterLock& operator=(const WriterLock&) = delete;

   private:
    Table& table_;
  };

  // Region layout and the parts, in the order their sections are placed.
  std::vector<Part*> Parts();
  void BuildParts(const ConfigValue& config);

  // table_write.cc
  int64_t Write(const FieldInput* inputs, size_t n, bool batched, const uint8_t* admitted,
                int64_t admitted_size, bool group = false);
  void Validate(const FieldInput* inputs, size_t n, bool batched, const ArrayView** values,
                int64_t* leading) const;
  void CopyRows(const ArrayView* const* values, int64_t row, int64_t slot, int64_t n);
  int64_t WriteFifo(const WriteBatch& batch);
  int64_t WriteLocked(const WriteBatch& batch, const RaggedRows* ragged = nullptr, bool group = false);
  // A new item in `slot` with key `key`, its stamp WRITING: metadata and selector hooks.
  void OnNewItems(int64_t slot, int64_t n, int64_t first_key);

  // table_sample.cc
  void Resolve(const SampleRequest& request, int64_t i, uint32_t first_attempt, int64_t* slots,
               int64_t* stamps) const;
  uint64_t NextCall();
  SampleRequest BeginSample(int64_t batch, int64_t* claimed);
  void UndoCall(uint64_t call);
  // Takes back what BeginSample took for a call that failed: its call number (if no later
  // call started), the limiter's count, and the samples it reserved (max_times_sampled).
  void AbandonSample(const SampleRequest& request);
  // Metadata and max_times_sampled after a batch's rows are final: counts every sample
  // (redrawing positions whose item is used up, through `redraw`), fills `meta`, and removes
  // the items the batch used up. Returns false when a position could not be filled.
  template <typename Redraw>
  bool CountSamples(const SampleRequest& request, int64_t* slots, int64_t* keys,
                    const BatchMeta* meta, float* weights, Redraw&& redraw, const BatchHook* hook = nullptr);
  void SampleWith(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights, const BatchMeta* meta,
                  const BatchHook* hook);
  void RemoveUsedUp(const int64_t* slots, const int64_t* keys, int64_t n);
  // Under the writer lock: items keys[i] in slots[i] leave (those still held); returns how
  // many did.
  int64_t RemoveLocked(const int64_t* slots, const int64_t* keys, int64_t n);
  // The ragged copy of SampleRagged / GetRagged for items already drawn (fixed fields
  // copied): false when an item's stamp changed meanwhile (copy again).
  bool CopyRagged(const int64_t* keys, int64_t n, const RaggedLayout& layout, int64_t* lengths,
                  RaggedSink& sink) const;
  void FillMeta(const int64_t* slots, const int64_t* keys, int64_t n, const BatchMeta* meta,
                const int64_t* times, const int64_t* last) const;
  std::string BadKeyMessage(int64_t key, int64_t position) const;

  Region region_;
  TableHeader* header_ = nullptr;
  Storage storage_;
  Ring ring_;
  RateLimiter limiter_;
  uint64_t seed_ = 0;
  std::string config_json_;
  int64_t max_times_ = 0;
  int64_t min_interval_ = 0;        // reuse: 0 none
  bool interval_in_items_ = false;  // reuse: the interval's clock is items written
  int64_t max_staleness_ = -1;      // reuse: -1 none
  bool count_samples_ = false;      // draws are counted (metadata asked, max_times_sampled)
  std::unique_ptr<Writer> writer_;
  std::unique_ptr<Admission> admission_;
  std::unique_ptr<Selector> selector_;
  std::unique_ptr<ItemMetadata> meta_;
  std::unique_ptr<EpisodeView> view_;
  std::unique_ptr<TokenArena> arena_;
  bool arena_fifo_ = true;  // the arena keeps the item bound (FIFO writer), else the writer does
  bool reopened_ = false;
  std::function<void()> poll_;
  std::atomic<int> skip_quiet_{0};  // sample calls left that skip the quiet path (a hint)
  static constexpr int kAdviseCalls = 64;
  // Copies a sample or get starts over (a change met while copying) before it takes the
  // writer lock for the next try.
  static constexpr int kAttemptsBeforeLock = 8;
  std::atomic<int> advise_left_{kAdviseCalls};  // file-backed: calls left that advise reads
};

}  // namespace reverie
