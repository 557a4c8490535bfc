// Element types of stored fields, and the conversions of untyped (Python) input values.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "reverie/common.h"

namespace reverie {

enum class DType : uint8_t {
  kBool = 0,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFloat16,
  kBFloat16,
  kFloat32,
  kFloat64,
};
inline constexpr int kNumDTypes = 10;

enum class DTypeKind : uint8_t { kBool, kInt, kFloat };

// Bytes of one element. O(1).
size_t DTypeSize(DType dtype);
// The name users see ("float32", "bfloat16", ...). O(1).
const char* DTypeName(DType dtype);
// Parses a name as DTypeName writes it; throws ValueError for an unknown name.
DType DTypeFromName(const std::string& name);
DTypeKind KindOf(DType dtype);

// Whether a value of an untyped source kind (a Python bool, int or float) may be stored in a
// field of dtype `dst`: bool -> any dtype, int -> integer and floating dtypes, float -> floating
// dtypes. Typed sources (arrays, tensors) must match the field's dtype exactly instead.
bool UntypedConvertible(DType src, DType dst);

// Converts `n` contiguous elements of an untyped source (src is kBool, kInt64 or kFloat64) to
// `dst`. Preconditions: UntypedConvertible(src, dst) and every integer in range of dst (see
// IntegersFitIn). Floats round to nearest even when narrowed.
void ConvertUntyped(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n);

// Whether every one of `n` int64 values fits dst's range; reports the first that does not.
bool IntegersFitIn(const int64_t* values, size_t n, DType dst, int64_t* bad_value);

// IEEE binary16 and bfloat16 from float, round to nearest even (NaN kept NaN). O(1).
uint16_t FloatToHalf(float value);
uint16_t FloatToBFloat16(float value);
// And back, exactly. O(1).
float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);

// Element `index` of a buffer of n elements of `dtype` (any dtype; bool is 0 or 1), as a
// double (int64 values beyond 2^53 round). O(1).
double ElementAsDouble(const void* data, DType dtype, int64_t index);

}  // namespace reverie
