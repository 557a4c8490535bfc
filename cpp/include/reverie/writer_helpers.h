// Small pieces the keyed writers share (class_balanced, quotas, keyed_archive): a hash for
// their open-addressing tables, the tables' sizes, and the integer scalar field they key by.
#pragma once

#include <cstdint>
#include <string>

#include "reverie/part.h"
#include "reverie/writer.h"

namespace reverie {

// splitmix64's finaliser: a hash of labels, user keys and list positions.
inline uint64_t MixBits(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The size of an open-addressing table for `entries`: a power of two >= 2 * entries.
inline uint64_t HashTableSize(int64_t entries) {
  uint64_t size = 2;
  while (size < 2 * static_cast<uint64_t>(entries)) size <<= 1;
  return size;
}

// The index of field `name`, which must be an integer scalar (TypeError naming `what`
// otherwise; ValueError for a field not in the spec).
int IntegerScalarField(const TableContext& table, const std::string& name, const std::string& what);

// Row `row` of an integer scalar input (the field's dtype when typed, an untyped input is
// int64; bool as 0/1; a 0-d input is one value for every row).
int64_t IntegerAt(const ArrayView& v, int64_t row);
// Offered item i's value of integer scalar field `field`.
inline int64_t IntegerAt(const WriteBatch& batch, int field, int64_t i) {
  return IntegerAt(*batch.values[field], batch.Row(i));
}

}  // namespace reverie
