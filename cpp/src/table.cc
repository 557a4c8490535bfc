// Table: the configuration, the region and its layout, the parts, keys and state. The write
// protocols are in table_write.cc, sampling in table_sample.cc.
#include "reverie/table.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>

#include "reverie/common.h"
#include "reverie/locked_fifo.h"
#include "reverie/registry.h"
#include "reverie/sum_tree.h"
#include "table_internal.h"

namespace reverie {

namespace {

size_t AlignUp(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }

std::vector<FieldSpec> ParseSpec(const ConfigValue& spec) {
  std::vector<FieldSpec> fields;
  for (const ConfigValue& entry : spec.AsList("spec")) {
    const auto& parts = entry.AsList("a spec entry ([name, dtype, shape])");
    REVERIE_CHECK(parts.size() == 3, "a spec entry must be [name, dtype, shape], got ", parts.size(), " items");
    FieldSpec f;
    f.name = parts[0].AsString("a field name");
    f.dtype = DTypeFromName(parts[1].AsString("field '" + f.name + "' dtype"));
    for (const ConfigValue& d : parts[2].AsList("field '" + f.name + "' shape")) {
      f.shape.push_back(d.AsInt("field '" + f.name + "' shape"));
    }
    fields.push_back(std::move(f));
  }
  return fields;
}

}  // namespace

// The configuration without its live settings: what fixes a region's layout and meaning.
ConfigValue FixedPart(const ConfigValue& config) {
  ConfigValue fixed = ConfigValue::MakeMap();
  for (const auto& [key, value] : config.AsMap("the table configuration")) {
    if (key == "rate_limiter") continue;  // live as a whole
    fixed.Set(key, value);
  }
  auto strip = [&](const char* role, auto& registry) {
    const ConfigValue& part = config.Get(role);
    if (!part.is_map()) return;
    ConfigValue kept = ConfigValue::MakeMap();
    const auto& live = registry.Find(KindOf(part, role)).live;
    for (const auto& [key, value] : part.AsMap(role)) {
      if (std::find(live.begin(), live.end(), key) == live.end()) kept.Set(key, value);
    }
    fixed.Set(role, kept);
  };
  strip("selector", Selectors());
  strip("admission", Admissions());
  return fixed;
}

namespace {

ConfigValue PartOr(const ConfigValue& config, const char* role, const char* fallback) {
  const ConfigValue& part = config.Get(role);
  if (!part.is_null()) return part;
  ConfigValue d = ConfigValue::MakeMap();
  d.Set("kind", ConfigValue::String(fallback));
  return d;
}

}  // namespace

Table::WriterLock::WriterLock(Table& table) : table_(table) {
  if (table_.header_->writer_mu.Lock()) {
    // The previous holder died inside: its tree change may be half applied. The leaves are
    // each whole (single stores), so rebuilding the sums and mins from them repairs it.
    table_.selector_->Repair();
    // A field update it left half done: its rows are torn (their stamps still say WRITING,
    // so no sample takes them until they are written again); the epoch is evened out.
    if ((table_.header_->fields_epoch.load(std::memory_order_acquire) & 1) != 0) {
      table_.header_->fields_epoch.fetch_add(1, std::memory_order_acq_rel);
    }
    // A ragged write it left half done: its reservations are dropped, and items whose blocks
    // it released (but did not yet remove) leave now, before their bytes can be reused.
    if (table_.arena_) {
      table_.arena_->RepairPending();
      std::vector<int64_t> slots, keys;
      for (int64_t s = 0; s < table_.capacity(); ++s) {
        const uint64_t stamp = table_.ring_.LoadStamp(s);
        if (Stamp::IsCommitted(stamp) && table_.arena_->Released(s)) {
          slots.push_back(s);
          keys.push_back(Stamp::KeyOf(stamp));
        }
      }
      table_.RemoveLocked(slots.data(), keys.data(), static_cast<int64_t>(slots.size()));
    }
  }
}

Table::WriterLock::~WriterLock() { table_.header_->writer_mu.Unlock(); }

void Table::BuildParts(const ConfigValue& config) {
  TableContext ctx;
  ctx.capacity = capacity();
  ctx.spec = &storage_.spec();
  ctx.seed = seed_;
  ctx.codec = ring_.codec();
  const ConfigValue& view = config.Get("view");
  if (!view.is_null()) {
    REVERIE_CHECK(KindOf(view, "view") == "episodes", "unknown view kind '", KindOf(view, "view"),
                  "'; known: episodes");
    ctx.streams = view.At("num_envs", "episode view").AsInt("num_envs");
  }
  const ConfigValue& mts = config.Get("max_times_sampled");
  if (!mts.is_null()) {
    max_times_ = mts.AsInt("max_times_sampled");
    REVERIE_CHECK(max_times_ >= 1, "max_times_sampled must be >= 1, got ", max_times_);
  }
  ctx.max_times_sampled = max_times_;
  // Ragged values evict whole items by bytes (arena.h): removals, as with max_times_sampled.
  ctx.removals = max_times_ > 0 || !config.Get("ragged").is_null();
  selector_ = Selectors().Make(PartOr(config, "selector", "uniform"), ctx);
  ctx.prioritized = selector_->prioritized();
  const ConfigValue& ragged = config.Get("ragged");
  if (!ragged.is_null()) {
    // Ragged values live in a byte ring in insertion order (arena.h): the FIFO rule, decided
    // under the writer lock so that blocks are reserved and items evicted in one step.
    const ConfigValue writer = PartOr(config, "writer", "fifo");
    const std::string& kind = KindOf(writer, "writer");
    const bool pins = (kind == "fifo" || kind == "reservoir") && PinsSetting(writer, kind);
    REVERIE_CHECK((kind == "fifo" || kind == "keyed_archive") && !pins,
                  "a table with ragged fields keeps them in a byte ring in insertion order: it needs the FIFO "
                  "writer without pins (or the keyed_archive writer), not the ", kind,
                  pins ? " writer with pins" : " writer");
    REVERIE_CHECK(view.is_null(), "an episode buffer cannot have ragged fields");
    REVERIE_CHECK(config.Get("partition").is_null(), "a partition cannot have ragged fields");
    // FIFO: decided under the lock (locked_fifo.h), the arena keeping the item bound too. A
    // keyed archive decides which item of a key stays and which key leaves when full; the
    // arena's byte bound then evicts the least recently written entries.
    arena_fifo_ = kind == "fifo";
    if (arena_fifo_) {
      writer_ = std::make_unique<LockedFifo>(capacity());
    } else {
      writer_ = Writers().Make(writer, ctx);
    }
    arena_ = std::make_unique<TokenArena>(ragged, capacity(), ring_.codec());
    for (const RaggedFieldSpec& f : arena_->fields()) {
      for (const FieldSpec& fixed : storage_.spec()) {
        REVERIE_CHECK(fixed.name != f.name, "field '", f.name, "' is declared both fixed and ragged");
      }
    }
  } else {
    writer_ = Writers().Make(PartOr(config, "writer", "fifo"), ctx);
  }
  REVERIE_CHECK(!selector_->needs_fifo() || writer_->fifo(), "the ", KindOf(config.Get("selector"), "selector"),
                " sampler ranks items by insertion order: it needs the FIFO writer, not the ",
                KindOf(PartOr(config, "writer", "fifo"), "writer"), " writer");
  const ConfigValue& admission = config.Get("admission");
  if (!admission.is_null()) admission_ = Admissions().Make(admission, ctx);
  const ConfigValue& reuse = config.Get("reuse");
  if (!reuse.is_null()) {
    for (const auto& [key, value] : reuse.AsMap("reuse")) {
      REVERIE_CHECK(key == "min_interval" || key == "unit" || key == "max_staleness", "reuse has no setting '",
                    key, "'; its settings: min_interval, unit, max_staleness");
    }
    if (!reuse.Get("min_interval").is_null()) {
      min_interval_ = reuse.Get("min_interval").AsInt("reuse min_interval");
      REVERIE_CHECK(min_interval_ >= 1, "min_interval must be >= 1, got ", min_interval_);
    }
    if (!reuse.Get("unit").is_null()) {
      const std::string& unit = reuse.Get("unit").AsString("reuse unit");
      REVERIE_CHECK(unit == "calls" || unit == "items", "the interval's unit must be 'calls' (sample calls) or "
                    "'items' (items written), got '", unit, "'");
      interval_in_items_ = unit == "items";
    }
    if (!reuse.Get("max_staleness").is_null()) {
      max_staleness_ = reuse.Get("max_staleness").AsInt("reuse max_staleness");
      REVERIE_CHECK(max_staleness_ >= 0, "max_staleness must be >= 0, got ", max_staleness_);
    }
    REVERIE_CHECK(view.is_null() || (min_interval_ == 0 && max_staleness_ < 0),
                  "an episode buffer samples windows of rows: reuse rules (min_interval, max_staleness) do not apply");
  }
  const ConfigValue& metadata = config.Get("metadata");
  // Versions are kept for max_staleness too (the batch metadata only with metadata=True).
  const bool asked = !metadata.is_null() && metadata.AsBool("metadata");
  const bool columns = asked || max_staleness_ >= 0;
  // Counting draws (times and last call) is for the batch metadata and the remover alone: the
  // reuse rules alone check their word and take nothing else (table_sample.cc).
  count_samples_ = asked || max_times_ > 0;
  if (columns || max_times_ > 0 || min_interval_ > 0) {
    meta_ = std::make_unique<ItemMetadata>(capacity(), columns, max_times_, min_interval_ > 0);
  }
  if (!view.is_null()) {
    REVERIE_CHECK(writer_->fifo(), "an episode view keeps env streams in FIFO order: it cannot be "
                  "combined with the ", KindOf(config.Get("writer"), "writer"), " writer");
    REVERIE_CHECK(max_times_ == 0, "an episode view cannot be combined with max_times_sampled "
                  "(rows of an episode are read by several transitions and sequences)");
    REVERIE_CHECK(selector_->prioritized() || selector_->splittable(),
                  "episode buffers sample with replacement: the uniform sampler without replacement is not supported");
    view_ = std::make_unique<EpisodeView>(view, ctx);
  }
}

std::vector<Part*> Table::Parts() {
  std::vector<Part*> parts = {writer_.get()};
  if (admission_) parts.push_back(admission_.get());
  parts.push_back(selector_.get());
  if (meta_) parts.push_back(meta_.get());
  if (view_) parts.push_back(view_.get());
  if (arena_) parts.push_back(arena_.get());
  return parts;
}

Table::Table(const ConfigValue& config, const StorageConfig& storage) {
  const ConfigValue::Map& settings = config.AsMap("the table configuration");
  static const char* const kKnown[] = {"capacity", "spec", "seed", "shard", "writer", "selector",
                                       "admission", "max_times_sampled", "metadata", "view",
                                       "rate_limiter", "partition", "reuse", "ragged"};
  for (const auto& [key, value] : settings) {
    REVERIE_CHECK(std::find_if(std::begin(kKnown), std::end(kKnown),
                               [&](const char* k) { return key == k; }) != std::end(kKnown),
                  "unknown table setting '", key, "'");
  }
  const int64_t capacity = config.At("capacity", "the table").AsInt("capacity");
  REVERIE_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  REVERIE_CHECK(capacity <= kMaxCapacity, "capacity must be at most 2^40, got ", capacity);
  storage_ = Storage(capacity, ParseSpec(config.At("spec", "the table")), !config.Get("ragged").is_null());
  seed_ = config.At("seed", "the table").AsUInt("seed");
  const ConfigValue& shard_value = config.Get("shard");
  const int64_t shard = shard_value.is_null() ? 0 : shard_value.AsInt("shard");
  REVERIE_CHECK(shard >= 0 && shard < kMaxShards, "shard must be in [0, ", kMaxShards, "), got ", shard);
  config_json_ = config.ToJson();
  const uint64_t fingerprint = Fnv1a(FixedPart(config).ToJson());
  // The parts first (their settings are checked before a segment or file is made), on a
  // ring that knows its codec and streams; the ring is bound to the region below.
  const int64_t streams = config.Get("view").is_null() ? 1 : config.Get("view").At("num_envs", "episode view").AsInt("num_envs");
  REVERIE_CHECK(streams >= 1 && capacity % streams == 0, "capacity must be a multiple of num_envs (each env "
                "stream holds capacity / num_envs steps): got capacity ", capacity, " and num_envs ", streams);
  // A partition of a partitioned buffer (partitioned_table.h): its keys carry its index, in
  // widths shared by every partition.
  KeyCodec codec(capacity, shard);
  const ConfigValue& partition = config.Get("partition");
  if (!partition.is_null()) {
    const int64_t slot_bits = partition.At("slot_bits", "partition").AsInt("partition slot_bits");
    const int64_t partition_bits = partition.At("partition_bits", "partition").AsInt("partition partition_bits");
    const int64_t index = partition.At("index", "partition").AsInt("partition index");
    REVERIE_CHECK(slot_bits >= SlotBits(capacity) && partition_bits >= 0 && slot_bits + partition_bits <= 45 &&
                      index >= 0 && index < (int64_t{1} << partition_bits),
                  "bad partition key widths: slot_bits ", slot_bits, ", partition_bits ", partition_bits,
                  ", index ", index, " for capacity ", capacity);
    codec = KeyCodec(static_cast<int>(slot_bits), static_cast<int>(partition_bits), index, shard);
  }
  ring_ = Ring(capacity, nullptr, nullptr, codec, streams);
  BuildParts(config);

  // The layout: header, configuration, stamps, columns, then every part's sections.
  size_t at = AlignUp(sizeof(TableHeader), 64);
  const size_t config_at = at;
  at = AlignUp(at + config_json_.size(), 64);
  // Parts are packed (64-byte aligned) one after the other. The region itself starts on a
  // 2 MiB boundary, so transparent huge pages back every whole 2 MiB of it; aligning each
  // part to 2 MiB as well would only make huge pages of the gaps (measured: RSS 1.08x the
  // stored bytes instead of 1.05x for the 1M W1 buffer).
  auto place = [&](size_t bytes) {
    const size_t offset = at;
    at = AlignUp(at + bytes, 64);
    return offset;
  };
  const size_t stamps_at = place(static_cast<size_t>(capacity) * sizeof(uint64_t));
  std::vector<size_t> columns_at;
  for (size_t f = 0; f < storage_.num_fields(); ++f) columns_at.push_back(place(storage_.column_bytes(f)));
  std::vector<std::vector<size_t>> part_at;
  for (Part* part : Parts()) {
    part_at.emplace_back();
    for (size_t bytes : part->Sections()) part_at.back().push_back(place(bytes));
  }
  const size_t total = at;

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
    REVERIE_CHECK(region_.size() >= sizeof(TableHeader), what, " '", storage.name,
                  "' is not a reverie table (", region_.size(), " bytes)");
    header_ = reinterpret_cast<TableHeader*>(base);
    REVERIE_CHECK(header_->magic.load(std::memory_order_acquire) == TableHeader::kMagic &&
                      header_->version == TableHeader::kVersion,
                  what, " '", storage.name, "' is not a reverie table of this version");
    REVERIE_CHECK(header_->total_bytes == total && region_.size() == total &&
                      header_->fingerprint == fingerprint,
                  what, " '", storage.name, "' holds a table made with other settings than given here "
                  "(capacity, spec, seed, writer, sampler or their settings)");
    if (storage.kind == StorageConfig::Kind::kFile) {
      // Reopened, under the file's exclusive lock: nobody else uses it. The process-shared
      // objects of the last process to use it are stale, so they start afresh, and a slot
      // left "being written" by a writer that died is emptied (its pid may belong to
      // another live process by now, which would make the next writer wait on it).
      reopened_ = true;
      header_->writer_mu.Init();
      auto* stamps = reinterpret_cast<std::atomic<uint64_t>*>(base + stamps_at);
      for (int64_t slot = 0; slot < capacity; ++slot) {
        if (Stamp::IsWriting(stamps[slot].load(std::memory_order_relaxed))) {
          stamps[slot].store(Stamp::kEmpty, std::memory_order_relaxed);
        }
      }
    }
  } else {
    header_ = new (base) TableHeader();
    header_->total_bytes = total;
    header_->fingerprint = fingerprint;
    header_->config_bytes = config_json_.size();
    std::memcpy(base + config_at, config_json_.data(), config_json_.size());
    header_->writer_mu.Init();
  }
  std::vector<uint8_t*> columns;
  for (size_t offset : columns_at) columns.push_back(base + offset);
  storage_.Bind(std::move(columns));
  ring_ = Ring(capacity, reinterpret_cast<std::atomic<uint64_t>*>(base + stamps_at), &header_->ring,
               codec, streams);
  limiter_ = RateLimiter(&header_->limiter, &ring_);
  std::vector<Part*> parts = Parts();
  for (size_t p = 0; p < parts.size(); ++p) {
    std::vector<uint8_t*> sections;
    for (size_t offset : part_at[p]) sections.push_back(base + offset);
    parts[p]->Bind(sections, /*fresh=*/!attach);
  }
  // A process that used the file may have died inside a tree update: rebuild it.
  if (reopened_) selector_->Repair();
  // Attachers may look now.
  if (!attach) header_->magic.store(TableHeader::kMagic, std::memory_order_release);
}

Table::~Table() = default;

std::string Table::StoredConfig(const StorageConfig& storage) {
  const char* what = storage.kind == StorageConfig::Kind::kFile ? "file" : "shared memory";
  std::string bytes;
  auto header_of = [&](const uint8_t* data, size_t size) {
    REVERIE_CHECK(size >= sizeof(TableHeader), what, " '", storage.name, "' is not a reverie table");
    const auto* h = reinterpret_cast<const TableHeader*>(data);
    REVERIE_CHECK(h->magic.load(std::memory_order_acquire) == TableHeader::kMagic &&
                      h->version == TableHeader::kVersion,
                  what, " '", storage.name, "' is not a reverie table of this version");
    const size_t at = AlignUp(sizeof(TableHeader), 64);
    REVERIE_CHECK(at + h->config_bytes <= size, what, " '", storage.name, "' is truncated");
    return std::string(reinterpret_cast<const char*>(data) + at, h->config_bytes);
  };
  if (storage.kind == StorageConfig::Kind::kAttachShared || storage.kind == StorageConfig::Kind::kCreateShared) {
    const Region region = Region::AttachShared(storage.name);
    return header_of(region.data(), region.size());
  }
  REVERIE_CHECK(storage.kind == StorageConfig::Kind::kFile, "no stored configuration in private memory");
  const int fd = ::open(storage.name.c_str(), O_RDONLY | O_CLOEXEC);
  REVERIE_CHECK(fd >= 0, "cannot open '", storage.name, "': ", std::strerror(errno));
  std::vector<uint8_t> head(AlignUp(sizeof(TableHeader), 64));
  ssize_t got = ::pread(fd, head.data(), head.size(), 0);
  if (got == static_cast<ssize_t>(head.size())) {
    const auto* h = reinterpret_cast<const TableHeader*>(head.data());
    if (h->magic.load(std::memory_order_relaxed) == TableHeader::kMagic && h->config_bytes < (size_t{1} << 24)) {
      head.resize(head.size() + h->config_bytes);
      got = ::pread(fd, head.data(), head.size(), 0);
    }
  }
  ::close(fd);
  return header_of(head.data(), got < 0 ? 0 : static_cast<size_t>(got));
}

int64_t Table::size() const {
  const int64_t held = writer_->held();
  if (held >= 0) return held;
  return std::max<int64_t>(0, ring_.size() - header_->holes.load(std::memory_order_acquire));
}

int64_t Table::stale_updates() const { return header_->stale.load(std::memory_order_relaxed); }
uint64_t Table::sample_calls() const { return header_->calls.load(std::memory_order_relaxed); }
int64_t Table::version() const { return header_->version_stamp.load(std::memory_order_relaxed); }
void Table::set_version(int64_t version) {
  header_->version_stamp.store(version, std::memory_order_relaxed);
}

void Table::SlotsOf(const int64_t* keys, int64_t* slots, int64_t n) const {
  const KeyCodec& codec = ring_.codec();
  for (int64_t i = 0; i < n; ++i) {
    slots[i] = codec.WellFormed(keys[i], capacity()) ? codec.Slot(keys[i]) : -1;
  }
}

std::vector<int64_t> Table::StoredKeys() const {
  if (writer_->fifo()) return writer_->StoredKeys(ring_);  // the ring's counters alone
  // A locked writer's insertion numbers change under its lock (and sorting by numbers that
  // change meanwhile is undefined): read them under it.
  WriterLock lock(const_cast<Table&>(*this));
  return writer_->StoredKeys(ring_);
}

void Table::InsertionsOf(const int64_t* keys, int64_t* out, int64_t n) const {
  writer_->InsertionsOf(keys, out, n, ring_);
}

void Table::CheckKey(int64_t key, int64_t position) const {
  if (!writer_->WasWritten(key, ring_)) throw std::out_of_range(BadKeyMessage(key, position));
}

std::string Table::BadKeyMessage(int64_t key, int64_t position) const {
  const KeyCodec& codec = ring_.codec();
  const std::string at = internal::Concat("index ", key, " at position ", position);
  const char* hint = " (keys are the indices a sample returned)";
  if (key < 0) return internal::Concat(at, " is negative: keys are >= 0", hint);
  if (codec.Shard(key) != codec.shard) {
    return internal::Concat(at, " belongs to shard ", codec.Shard(key), "; this buffer is shard ",
                            codec.shard, hint);
  }
  const int64_t slot = codec.Slot(key);
  if (slot >= capacity()) {
    return internal::Concat(at, " is not a key of this buffer: its slot ", slot,
                            " is beyond the capacity ", capacity(), hint);
  }
  return internal::Concat(at, " was never written: it is generation ", codec.Generation(key),
                          " of slot ", slot, ", and ", ring_.claimed(),
                          " items have been written in all", hint);
}

namespace {

Part* RolePart(const std::string& role, Part* writer, Part* admission, Part* selector) {
  Part* part = role == "selector" ? selector : role == "admission" ? admission : role == "writer" ? writer : nullptr;
  REVERIE_CHECK(part != nullptr, "this buffer has no ", role, " part with live settings");
  return part;
}

}  // namespace

void Table::SetLive(const std::string& role, const std::string& name, const ConfigValue& value) {
  Part* part = RolePart(role, writer_.get(), admission_.get(), selector_.get());
  WriterLock lock(*this);
  part->SetLive(name, value);
}

ConfigValue Table::Live(const std::string& role) const {
  return RolePart(role, writer_.get(), admission_.get(), selector_.get())->Live();
}

ConfigValue Table::Scalars(std::vector<std::string> names, std::vector<std::vector<uint8_t>>* copies) {
  WriterLock lock(*this);
  const std::vector<StateArray> arrays = StateArrays();
  copies->clear();
  for (const std::string& name : names) {
    const auto it = std::find_if(arrays.begin(), arrays.end(), [&](const StateArray& a) { return a.name == name; });
    REVERIE_CHECK(it != arrays.end(), "this buffer has no state array '", name, "'");
    copies->emplace_back(it->data, it->data + it->bytes());
  }
  return Scalars();
}

// ---- State ------------------------------------------------------------------------------

std::vector<StateArray> Table::StateArrays() {
  std::vector<StateArray> out;
  const auto& spec = storage_.spec();
  for (size_t f = 0; f < spec.size(); ++f) {
    std::vector<int64_t> shape{capacity()};
    shape.insert(shape.end(), spec[f].shape.begin(), spec[f].shape.end());
    out.push_back(StateArray{"column:" + spec[f].name, DTypeName(spec[f].dtype), shape,
                             storage_.column(f), true});
  }
  // The stamps say which slots hold which key (and which were removed); the layout is
  // ring.h's (no stamp of a save is "being written": saves wait for writes in flight).
  auto* stamps = reinterpret_cast<uint8_t*>(ring_.stamps());
  out.push_back(StateArray{"table.stamps", "uint64", {capacity()}, stamps, false});
  for (Part* part : Parts()) part->StateArrays(&out);
  return out;
}

ConfigValue Table::Scalars() const {
  ConfigValue out = ConfigValue::MakeMap();
  out.Set("table.written", ConfigValue::Int(ring_.committed()));
  out.Set("table.sample_calls", ConfigValue::UInt(sample_calls()));
  out.Set("table.stale_updates", ConfigValue::Int(stale_updates()));
  out.Set("table.version", ConfigValue::Int(version()));
  out.Set("limiter.sampled", ConfigValue::Int(limiter_.sampled()));
  out.Set("limiter.offset", ConfigValue::Double(limiter_.offset()));
  for (Part* part : const_cast<Table*>(this)->Parts()) part->SaveScalars(&out);
  return out;
}

void Table::Restore(const ConfigValue& scalars) {
  const int64_t written = StateInt(scalars, "table.written");
  const int64_t stale = StateInt(scalars, "table.stale_updates");
  const int64_t sampled = StateInt(scalars, "limiter.sampled");
  const double offset = StateScalar(scalars, "limiter.offset");
  const ConfigValue& calls = scalars.Get("table.sample_calls");
  REVERIE_CHECK(!calls.is_null(), "the state has no 'table.sample_calls'");
  REVERIE_CHECK(written >= 0, "written must be >= 0, got ", written);
  REVERIE_CHECK(stale >= 0, "stale_updates must be >= 0, got ", stale);
  REVERIE_CHECK(sampled >= 0, "sampled must be >= 0, got ", sampled);
  REVERIE_CHECK(std::isfinite(offset), "rate limiter offset must be finite, got ", offset);
  header_->ring.claimed.store(written, std::memory_order_relaxed);
  header_->ring.committed.store(written, std::memory_order_relaxed);
  // The FIFO writer's stamps follow from the counters (it rebuilds them); every other
  // writer's are state, checked below.
  if (writer_->fifo()) writer_->Restore(scalars, ring_);
  // Every stamp: empty, or a committed or removed key of its own slot.
  const KeyCodec& codec = ring_.codec();
  int64_t held = 0, removed = 0;
  for (int64_t slot = 0; slot < capacity(); ++slot) {
    const uint64_t stamp = ring_.LoadStamp(slot);
    if (stamp == Stamp::kEmpty) continue;
    REVERIE_CHECK(!Stamp::IsWriting(stamp), "slot ", slot, " is marked as being written");
    const int64_t key = Stamp::KeyOf(stamp);
    REVERIE_CHECK(codec.WellFormed(key, capacity()) && codec.Slot(key) == slot, "slot ", slot,
                  " holds key ", key, ", which is not a key of that slot");
    held += Stamp::IsCommitted(stamp);
    removed += Stamp::IsRemoved(stamp);
  }
  // A FIFO ring fills its slots in order; a locked writer may write a held slot again (an
  // archive's better entry) and checks its own count of filled slots (locked_writer.cc).
  REVERIE_CHECK(writer_->fifo() ? held + removed == std::min(written, capacity())
                                : held + removed <= std::min(written, capacity()),
                held + removed, " slots have been written, but the counters say ", std::min(written, capacity()));
  header_->holes.store(removed, std::memory_order_relaxed);
  header_->stale.store(stale, std::memory_order_relaxed);
  header_->calls.store(calls.AsUInt("table.sample_calls"), std::memory_order_relaxed);
  header_->version_stamp.store(StateInt(scalars, "table.version"), std::memory_order_relaxed);
  limiter_.Restore(sampled, offset);
  for (Part* part : Parts()) {
    if (part != writer_.get() || !writer_->fifo()) part->Restore(scalars, ring_);
  }
  if (max_times_ > 0) {
    int64_t left = 0;
    for (int64_t slot = 0; slot < capacity(); ++slot) {
      const uint64_t stamp = ring_.LoadStamp(slot);
      if (Stamp::IsCommitted(stamp)) {
        left += max_times_ - meta_->TimesSampled(slot, codec.Generation(Stamp::KeyOf(stamp)));
      }
    }
    header_->remaining.store(left, std::memory_order_relaxed);
  }
}

}  // namespace reverie
