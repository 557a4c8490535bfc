#include "reverie/writer_helpers.h"

#include "reverie/common.h"

namespace reverie {

int IntegerScalarField(const TableContext& table, const std::string& name, const std::string& what) {
  const int field = table.FieldIndex(name, what);
  const FieldSpec& f = (*table.spec)[static_cast<size_t>(field)];
  const bool integer = f.dtype == DType::kUInt8 || f.dtype == DType::kInt8 || f.dtype == DType::kInt16 ||
                       f.dtype == DType::kInt32 || f.dtype == DType::kInt64;
  REVERIE_CHECK_TYPE(f.shape.empty() && integer, what, " '", name, "' must be an integer scalar field, got ",
                     DTypeName(f.dtype), ShapeString(f.shape.data(), static_cast<int>(f.shape.size())));
  return field;
}

int64_t IntegerAt(const ArrayView& v, int64_t i) {
  const int64_t row = v.ndim == 0 ? 0 : i;
  const uint8_t* p = static_cast<const uint8_t*>(v.data);
  switch (v.dtype) {  // a typed input has the field's dtype; an untyped one is int64
    case DType::kUInt8: return p[row];
    case DType::kInt8: return reinterpret_cast<const int8_t*>(p)[row];
    case DType::kInt16: return reinterpret_cast<const int16_t*>(p)[row];
    case DType::kInt32: return reinterpret_cast<const int32_t*>(p)[row];
    case DType::kBool: return p[row] != 0;
    default: return reinterpret_cast<const int64_t*>(p)[row];
  }
}

}  // namespace reverie
