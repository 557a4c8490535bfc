// Columnar storage: one contiguous, 64-byte aligned array per field, `capacity` rows, in
// memory the buffer places (its region).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "reverie/dtype.h"

namespace reverie {

inline constexpr int kMaxDims = 8;

// One field of a buffer's spec: its name, element type and per-item shape.
struct FieldSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;  // per item; empty for a scalar

  int64_t item_elements() const;
  size_t row_bytes() const { return static_cast<size_t>(item_elements()) * DTypeSize(dtype); }
};

// Renders a shape as "(4, 84, 84)"; for error messages.
std::string ShapeString(const int64_t* shape, int ndim);

// A caller's contiguous (C-order) input array, borrowed for the duration of one call.
// `typed` is false for values without a dtype of their own (Python bool/int/float and lists
// of them, seen as bool/int64/float64): those are converted to the field's dtype when the
// kind allows (UntypedConvertible); typed values must match the dtype exactly.
struct ArrayView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  bool typed = true;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};

  int64_t elements() const;
};

// An input value for one named field.
struct FieldInput {
  std::string_view name;
  ArrayView value;
  // A ragged field (arena.h) written as a batch: its values are the items' tokens packed,
  // [sum of lengths, *rest], and lengths[i] is item i's (num_lengths items). Null otherwise.
  const int64_t* lengths = nullptr;
  int64_t num_lengths = 0;
};

// Thread-safety: the columns' memory is stable for the object's lifetime; who may write
// which rows when is decided by ReplayBuffer.
class Storage {
 public:
  Storage() = default;
  // Validates the spec (names non-empty and unique, dims >= 0). The columns are placed by
  // Bind. Throws ValueError on a bad spec (an empty one unless allowed: a table of ragged
  // fields only).
  Storage(int64_t capacity, std::vector<FieldSpec> spec, bool allow_empty = false);

  // Bytes to reserve for column `field` (whole cache lines).
  size_t column_bytes(size_t field) const;
  // Places the columns (num_fields() pointers, each column_bytes long, 64-byte aligned, and
  // owned by the caller for this object's lifetime).
  void Bind(std::vector<uint8_t*> columns) { columns_ = std::move(columns); }

  int64_t capacity() const { return capacity_; }
  const std::vector<FieldSpec>& spec() const { return spec_; }
  size_t num_fields() const { return spec_.size(); }
  uint8_t* column(size_t field) { return columns_[field]; }
  const uint8_t* column(size_t field) const { return columns_[field]; }
  // Stored bytes per item over all fields.
  size_t item_bytes() const;

 private:
  int64_t capacity_ = 0;
  std::vector<FieldSpec> spec_;
  std::vector<uint8_t*> columns_;
};

}  // namespace reverie
