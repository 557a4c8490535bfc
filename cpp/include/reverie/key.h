// Keys: the int64 that names one stored item (batch.indices; update_priorities and get take
// them back). One encoding for every writer, remover and selector, decoded in O(1) by shifts.
//
//   bit 62..63   zero: a key is a non-negative int64 below 2^62 (so a commit stamp, which
//                stores key + 1 shifted left by two, fits 64 bits; ring.h)
//   bits 55..61  shard id (kShardBits = 7: up to 128 tables of one sharded buffer; 0 for a
//                table on its own)
//   bits c..54   generation: how many items the slot held before this one (0 for its first)
//   bits b..c-1  partition (a partitioned buffer's tables, partitioned_table.h: c - b =
//                ceil(log2(max_partitions)); none, c = b, for a table on its own)
//   bits 0..b-1  slot, with b = SlotBits(capacity) = ceil(log2(capacity)) (0 for capacity 1;
//                for partitions, of the largest partition's capacity)
//
// So a key tells its slot (and partition) without any table state, and two keys of one slot
// order by generation: a key whose slot holds a newer generation names an item that has
// left (an update for it is stale). The generation has 55 - c bits: at capacity 1M, 2^35
// writes of every slot (3.6e16 items) before it would wrap, beyond any run; capacity is
// limited to 2^40.
//
// A FIFO ring of capacity C that has written n items before an item gives it generation
// n / C and slot n % C (one stream; episode streams: ring.h), so for a power-of-two C the key
// of the n-th item is n itself. Only the FIFO writer relates keys to insertion order.
#pragma once

#include <cstdint>

#include "reverie/common.h"

namespace reverie {

inline constexpr int kShardBits = 7;
inline constexpr int kLocalKeyBits = 55;  // generation + slot
inline constexpr int64_t kMaxCapacity = int64_t{1} << 40;
inline constexpr int64_t kMaxShards = int64_t{1} << kShardBits;

// Bits a slot number of a table of `capacity` slots takes: ceil(log2(capacity)). O(1).
REVERIE_HD int SlotBits(int64_t capacity) {
  int bits = 0;
  while ((int64_t{1} << bits) < capacity) ++bits;
  return bits;
}

// The encoding of one table's keys (plain data: device code takes it by value).
struct KeyCodec {
  int slot_bits = 0;
  int partition_bits = 0;
  int64_t partition = 0;
  int64_t shard = 0;

  KeyCodec() = default;
  REVERIE_HD KeyCodec(int64_t capacity, int64_t shard_id)
      : slot_bits(SlotBits(capacity)), shard(shard_id) {}
  // Partition `partition_id` of a partitioned buffer (slot and partition widths shared by all).
  REVERIE_HD KeyCodec(int slots, int partitions, int64_t partition_id, int64_t shard_id)
      : slot_bits(slots), partition_bits(partitions), partition(partition_id), shard(shard_id) {}

  REVERIE_HD int64_t slot_mask() const { return (int64_t{1} << slot_bits) - 1; }
  REVERIE_HD int generation_shift() const { return slot_bits + partition_bits; }
  REVERIE_HD int64_t generation_mask() const {
    return (int64_t{1} << (kLocalKeyBits - generation_shift())) - 1;
  }
  // The key of generation `generation` of `slot`. Preconditions: slot < 2^slot_bits,
  // 0 <= generation <= generation_mask(). O(1).
  REVERIE_HD int64_t Key(int64_t generation, int64_t slot) const {
    return static_cast<int64_t>((static_cast<uint64_t>(shard) << kLocalKeyBits) |
                                (static_cast<uint64_t>(generation) << generation_shift()) |
                                (static_cast<uint64_t>(partition) << slot_bits) |
                                static_cast<uint64_t>(slot));
  }
  REVERIE_HD int64_t Slot(int64_t key) const { return key & slot_mask(); }
  REVERIE_HD int64_t Generation(int64_t key) const {
    return (key >> generation_shift()) & generation_mask();
  }
  REVERIE_HD int64_t Partition(int64_t key) const {
    return (key >> slot_bits) & ((int64_t{1} << partition_bits) - 1);
  }
  REVERIE_HD int64_t Shard(int64_t key) const { return key >> kLocalKeyBits; }
  // Whether `key` can name an item of this table: non-negative, below 2^62, this table's
  // shard and partition, a slot below capacity. Says nothing about whether that item was
  // ever written.
  REVERIE_HD bool WellFormed(int64_t key, int64_t capacity) const {
    return key >= 0 && Shard(key) == shard && Partition(key) == partition && Slot(key) < capacity;
  }
};

}  // namespace reverie
