#include "reverie/storage.h"

#include <unordered_set>

#include "reverie/common.h"

namespace reverie {

int64_t FieldSpec::item_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t ArrayView::elements() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

std::string ShapeString(const int64_t* shape, int ndim) {
  std::string out = "(";
  for (int i = 0; i < ndim; ++i) {
    out += std::to_string(shape[i]);
    if (i + 1 < ndim || ndim == 1) out += ",";
    if (i + 1 < ndim) out += " ";
  }
  return out + ")";
}

Storage::Storage(int64_t capacity, std::vector<FieldSpec> spec, bool allow_empty)
    : capacity_(capacity), spec_(std::move(spec)) {
  REVERIE_CHECK(capacity >= 1, "capacity must be >= 1, got ", capacity);
  REVERIE_CHECK(allow_empty || !spec_.empty(), "a buffer needs at least one field");
  std::unordered_set<std::string> names;
  for (const FieldSpec& field : spec_) {
    REVERIE_CHECK(!field.name.empty(), "field names must be non-empty");
    REVERIE_CHECK(names.insert(field.name).second, "field '", field.name, "' appears twice");
    REVERIE_CHECK(static_cast<int>(field.shape.size()) < kMaxDims, "field '", field.name,
                  "': at most ", kMaxDims - 1, " dimensions per item, got ", field.shape.size());
    for (int64_t d : field.shape) {
      REVERIE_CHECK(d >= 0, "field '", field.name, "': dimensions must be >= 0, got shape ",
                    ShapeString(field.shape.data(), static_cast<int>(field.shape.size())));
    }
  }
}

size_t Storage::column_bytes(size_t field) const {
  // Whole cache lines, so every column starts aligned; never empty.
  const size_t bytes = (spec_[field].row_bytes() * static_cast<size_t>(capacity_) + 63) / 64 * 64;
  return bytes == 0 ? 64 : bytes;
}

size_t Storage::item_bytes() const {
  size_t n = 0;
  for (const FieldSpec& field : spec_) n += field.row_bytes();
  return n;
}

}  // namespace reverie
