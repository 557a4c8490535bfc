// The replay buffer: storage + ring writer + a sampler + gather + a rate limiter, all in one
// memory region (private, or POSIX shared memory for several processes).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "reverie/episodes.h"
#include "reverie/prioritized_sampler.h"
#include "reverie/rate_limiter.h"
#include "reverie/region.h"
#include "reverie/ring.h"
#include "reverie/sampler.h"
#include "reverie/storage.h"

namespace reverie {

struct SamplerConfig {
  enum class Kind { kUniform, kPrioritized };
  Kind kind = Kind::kUniform;
  bool replacement = true;          // uniform only
  PrioritizedConfig prioritized;    // prioritized only
};

struct StorageConfig {
  enum class Kind { kPrivate, kCreateShared, kAttachShared, kFile };
  Kind kind = Kind::kPrivate;
  // The shared-memory segment (/dev/shm/<name>), or for kFile the file's path: the whole
  // buffer (columns, stamps, counters, tree) lives in it, created when missing and reopened
  // (with everything it held) when it exists.
  std::string name;
};

struct BufferHeader;  // the region's first bytes: counters, locks, limiter and tree state

// Thread- and process-safety: every public method may be called from any number of threads
// (and, for a shared buffer, processes) at once, except the state setters at the end.
//  - Add/Extend are lock-free (ring.h): writers claim keys with one atomic add and publish
//    each slot with a commit stamp. With a prioritized sampler a writer also takes the
//    writer lock for the moment it marks its slots and sets their priorities. An episode
//    buffer's writers hold the writer lock for the whole write (each continues the streams
//    from the last one's rows).
//  - Sample takes no lock: it validates every row it copies against the slot's stamp and
//    redraws rows that were being written.
//  - UpdatePriorities takes the writer lock (one tree writer at a time; samplers read the
//    tree lock-free). The lock is robust: a process that dies holding it costs a rebuild of
//    the tree, not a deadlock.
// Every method validates all of its input before it changes anything: after an exception the
// buffer is exactly as before.
class ReplayBuffer {
 public:
  // Throws ValueError for capacity < 1, a bad spec or sampler config, a taken or missing
  // shared-memory name, or an attached segment that does not match (capacity, spec, sampler
  // and seed must be the creator's).
  // With `episodes` enabled the buffer keeps per-env streams (episodes.h): capacity must be a
  // multiple of num_envs, the reward field a float32/float64 scalar, terminated and
  // truncated bool scalars, and writes come in whole env steps (ValueError otherwise).
  ReplayBuffer(int64_t capacity, std::vector<FieldSpec> spec, const SamplerConfig& sampler,
               uint64_t seed, const StorageConfig& storage = {},
               const EpisodeConfig& episodes = {});
  ~ReplayBuffer();
  ReplayBuffer(const ReplayBuffer&) = delete;
  ReplayBuffer& operator=(const ReplayBuffer&) = delete;

  // Stores one item. `inputs` must name every field exactly once; each value's shape must be
  // the field's shape. May wait for the rate limiter. O(item bytes) + the sampler's insert.
  void Add(const FieldInput* inputs, size_t n);
  // Stores the items along the leading axis of every input (the same length for all fields).
  // When more items than the capacity come at once, only the last `capacity` are kept (the
  // others count as written and overwritten). O(bytes) + insert cost.
  void Extend(const FieldInput* inputs, size_t n);

  // Draws `batch` items and writes, for each field f (spec order), the rows into out[f]
  // (batch * row_bytes each), the items' keys into `keys` and, for a prioritized sampler, the
  // importance weights into `weights` (may be null). May wait for the rate limiter. Large
  // gathers use the shared thread pool; the result never depends on it. Throws ValueError
  // when it cannot be served, TimeoutError when the rate limiter refuses it in time.
  void Sample(int64_t batch, uint8_t* const* out, int64_t* keys, float* weights);

  // Copies the stored items named by keys[0..n) into out[f] (n rows of field f each, spec
  // order). Throws IndexError, copying nothing the caller may use, naming the first key that
  // names no stored item: never written, not a key of this buffer, or overwritten since
  // (also when a writer overwrites it during the copy). O(n * item bytes).
  void Get(const int64_t* keys, int64_t n, uint8_t* const* out) const;

  // ---- Episodes (episodes.h); ValueError on a buffer without them. ----
  // n-step transitions: draws `batch` valid starts (a transition row whose next row is
  // stored and whose frame stack is complete; uniformly or by priority among those) and
  // writes for each: every field of the start row into out[f] (obs fields as frame stacks
  // of frame_stack rows), the bootstrap row's obs into next_out[j] (obs field j), the n-step
  // return and discount (episodes.h, NStep), the start's key and, when prioritized, its
  // importance weight. Throws ValueError for n_step < 1, gamma outside [0, 1], or when no
  // valid start exists. O(batch * (n_step + frame_stack) * row bytes).
  void SampleTransitions(int64_t batch, int n_step, double gamma, uint8_t* const* out,
                         uint8_t* const* next_out, float* returns, float* discounts,
                         int64_t* keys, float* weights);
  // Sequences of burn_in + length rows per start (episodes.h, SequenceWindow): every field
  // into out[f] as [batch, burn_in + length, ...], the mask [batch, burn_in + length], the
  // start keys (the first learning row) and weights. With `drop` only starts whose learning
  // rows all lie in the episode are drawn. Throws ValueError for length < 1, burn_in < 0, a
  // window longer than an env stream holds, or when no valid start exists.
  // O(batch * (burn_in + length) * frame_stack * row bytes).
  void SampleSequences(int64_t batch, int64_t burn_in, int64_t length, bool drop,
                       uint8_t* const* out, uint8_t* mask, int64_t* keys, float* weights);
  // The argument checks of the two calls above (ValueError), for callers that allocate first.
  void CheckTransitionArgs(int64_t batch, int n_step, double gamma) const;
  void CheckSequenceArgs(int64_t batch, int64_t burn_in, int64_t length) const;
  const EpisodeConfig& episodes() const { return episodes_; }
  // Rows per env stream (capacity / num_envs).
  int64_t stream_capacity() const { return episodes_.enabled() ? capacity() / episodes_.num_envs : capacity(); }

  // Sets the priorities of the items named by keys (see ring.h). A key that was never
  // written (or negative) throws IndexError; a key whose slot has been overwritten since (or
  // is being overwritten) is skipped and counted in stale_updates(). Returns how many were
  // skipped.
  int64_t UpdatePriorities(const int64_t* keys, const double* priorities, int64_t n);

  // ---- Keys (key.h): the one decoder the layers above use. ----
  const KeyCodec& codec() const { return ring_.codec(); }
  // slots[i] = the slot of keys[i], or -1 for a key that is not one of this buffer's. O(n).
  void SlotsOf(const int64_t* keys, int64_t* slots, int64_t n) const;
  // The keys of the stored items, oldest first (FIFO order). O(size).
  std::vector<int64_t> StoredKeys() const;
  // out[i] = the insertion number (FIFO order, from 0) of keys[i], or -1 for a key that is
  // not one of this buffer's. O(n).
  void InsertionsOf(const int64_t* keys, int64_t* out, int64_t n) const;

  int64_t capacity() const { return storage_.capacity(); }
  int64_t size() const { return ring_.size(); }
  int64_t written() const { return ring_.committed(); }
  // Keys handed out to writers (> written() while writes are in flight, or for good after a
  // writer died mid-write).
  int64_t claimed() const { return ring_.claimed(); }
  int64_t stale_updates() const;
  uint64_t seed() const { return seed_; }
  uint64_t sample_calls() const;
  const std::vector<FieldSpec>& spec() const { return storage_.spec(); }
  const Storage& storage() const { return storage_; }
  // Raw column memory, for zero-copy views. Writing through it bypasses the stamps.
  uint8_t* column(size_t field) { return storage_.column(field); }
  const Sampler& sampler() const { return *sampler_; }
  RateLimiter& rate_limiter() { return limiter_; }
  const RateLimiter& rate_limiter() const { return limiter_; }
  // Called about every 50 ms while a call waits for the rate limiter; may throw to abort it.
  void set_wait_poll(std::function<void()> poll) { poll_ = std::move(poll); }

  bool shared() const { return region_.shared(); }
  // Whether the buffer was reopened from an existing file (storage kFile).
  bool reopened() const { return reopened_; }
  // Writes a file-backed buffer's pages to its file (msync); a no-op otherwise.
  void Flush() { region_.Flush(); }
  const std::string& shared_name() const { return region_.name(); }
  // Removes the shared-memory name now (creator only); attached processes keep working.
  void Unlink() { region_.Unlink(); }

  // Runs fn(sampler) under the writer lock (beta changes, priority state).
  template <typename Fn>
  auto WithSampler(Fn&& fn) {
    WriterLock lock(*this);
    return fn(*sampler_);
  }

  // ---- State (checkpoints). Not to be called while other threads use the buffer. ----
  // Counters: items written, sample calls, stale updates, items sampled, and the rate
  // limiter's offset.
  struct Counters {
    int64_t written = 0;
    uint64_t sample_calls = 0;
    int64_t stale_updates = 0;
    int64_t sampled = 0;
    double limiter_offset = 0.0;
  };
  Counters GetCounters() const;
  // Sets the counters and marks the stored slots committed. Throws ValueError unless
  // written, stale_updates and sampled are >= 0.
  void SetCounters(const Counters& counters);
  // Sets the prioritized sampler's state (leaves, scale, running max). Throws ValueError,
  // changing nothing, when it does not fit (PrioritizedSampler::SetState) or gives a priority
  // to a slot that holds no item (call SetCounters first).
  void SetPriorityState(const PrioritizedSampler::State& state);
  // Copies `bytes` (capacity * row bytes) into column `field`. Throws on a size mismatch.
  void LoadColumn(size_t field, const void* data, size_t bytes);
  // Episode state: the row flags (capacity bytes) and each stream's last flags (num_envs).
  const uint8_t* row_flags() const { return flags_; }
  const uint8_t* stream_flags() const { return streams_; }
  // Throws ValueError on a size mismatch or a buffer without episodes.
  void SetEpisodeState(const uint8_t* flags, size_t flags_bytes, const uint8_t* streams,
                       size_t streams_bytes);

 private:
  // The robust writer lock; repairs the tree when its last holder died holding it.
  class WriterLock {
   public:
    explicit WriterLock(ReplayBuffer& buf);
    ~WriterLock();
    WriterLock(const WriterLock&) = delete;
    WriterLock& operator=(const WriterLock&) = delete;

   private:
    ReplayBuffer& buf_;
  };

  // Maps inputs to fields (values[f] for field f, spec order) and checks names, dtypes and
  // shapes. For Extend (`batched`), `leading` receives the common leading length.
  void Validate(const FieldInput* inputs, size_t n, bool batched, const ArrayView** values,
                int64_t* leading) const;
  // Copies input rows [row, row + n) of every field into slots [slot, slot + n).
  void CopyRows(const ArrayView* const* values, int64_t row, int64_t slot, int64_t n);
  // The write protocol of ring.h for `count` validated items.
  void WriteItems(const ArrayView* const* values, int64_t count);
  // Validate + WriteItems, with the field table on the stack when it fits.
  void Write(const FieldInput* inputs, size_t n, bool batched);
  // Makes slots[i] a committed slot (redrawing as needed) and stores its stamp in stamps[i].
  void Resolve(const SampleRequest& request, int64_t i, uint32_t first_attempt, int64_t* slots,
               int64_t* stamps) const;

  // The drawing loop shared by the episode samplers: draws a start per position, asks
  // item.Plan(i, start) whether it is valid (redrawing until one is), item.Copy(i), then
  // validates with item.Recheck(i) after the copy (the seqlock check of ring.h).
  template <typename Item>
  void SampleItems(int64_t batch, Item& item, int64_t* keys, float* weights);
  // The next sample call's number (keys the generator).
  uint64_t NextCall();
  // The start of every sample call: admits `batch` items through the rate limiter (may
  // wait), validates the request (ValueError, the admission taken back) and numbers the
  // call. `claimed` (may be null) receives the claimed count the draw range came from.
  SampleRequest BeginSample(int64_t batch, int64_t* claimed);
  // Why `key` (given at `position`) names no item this buffer ever held, for IndexError.
  std::string BadKeyMessage(int64_t key, int64_t position) const;
  // Takes call number `call` back (a call that failed after NextCall), unless another call
  // took a number since.
  void UndoCall(uint64_t call);
  // Row flags of a write: computes and stores them for the kept rows (see episodes.h).
  void WriteFlags(const ArrayView* const* values, int64_t first, int64_t count, int64_t skip,
                  const std::vector<int64_t>* lapped);

  Region region_;
  BufferHeader* header_ = nullptr;
  Storage storage_;
  std::unique_ptr<Sampler> sampler_;
  Ring ring_;
  RateLimiter limiter_;
  uint64_t seed_;
  bool reopened_ = false;
  std::function<void()> poll_;
  std::atomic<int> skip_quiet_{0};  // sample calls left that skip the quiet path (a hint)
  static constexpr int kAdviseCalls = 64;
  std::atomic<int> advise_left_{kAdviseCalls};  // file-backed: calls left that advise reads
  EpisodeConfig episodes_;
  uint8_t* flags_ = nullptr;    // per slot (episodes only)
  uint8_t* streams_ = nullptr;  // per env: its last row's flags (episodes only)
};

}  // namespace reverie
