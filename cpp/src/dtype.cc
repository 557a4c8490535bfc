#include "reverie/dtype.h"

#include <cmath>
#include <limits>

namespace reverie {
namespace {

struct DTypeInfo {
  const char* name;
  size_t size;
  DTypeKind kind;
};

constexpr DTypeInfo kInfo[kNumDTypes] = {
    {"bool", 1, DTypeKind::kBool},      {"uint8", 1, DTypeKind::kInt},
    {"int8", 1, DTypeKind::kInt},       {"int16", 2, DTypeKind::kInt},
    {"int32", 4, DTypeKind::kInt},      {"int64", 8, DTypeKind::kInt},
    {"float16", 2, DTypeKind::kFloat},  {"bfloat16", 2, DTypeKind::kFloat},
    {"float32", 4, DTypeKind::kFloat},  {"float64", 8, DTypeKind::kFloat},
};

const DTypeInfo& Info(DType dtype) { return kInfo[static_cast<int>(dtype)]; }

template <typename Src, typename Dst>
void CastAll(const Src* src, Dst* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[i]);
}

template <typename Src>
void ConvertFrom(const Src* src, void* dst, DType dst_dtype, size_t n) {
  switch (dst_dtype) {
    case DType::kBool: {
      auto* out = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) out[i] = src[i] != 0 ? 1 : 0;
      return;
    }
    case DType::kUInt8: return CastAll(src, static_cast<uint8_t*>(dst), n);
    case DType::kInt8: return CastAll(src, static_cast<int8_t*>(dst), n);
    case DType::kInt16: return CastAll(src, static_cast<int16_t*>(dst), n);
    case DType::kInt32: return CastAll(src, static_cast<int32_t*>(dst), n);
    case DType::kInt64: return CastAll(src, static_cast<int64_t*>(dst), n);
    case DType::kFloat16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) out[i] = FloatToHalf(static_cast<float>(src[i]));
      return;
    }
    case DType::kBFloat16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) out[i] = FloatToBFloat16(static_cast<float>(src[i]));
      return;
    }
    case DType::kFloat32: return CastAll(src, static_cast<float*>(dst), n);
    case DType::kFloat64: return CastAll(src, static_cast<double*>(dst), n);
  }
}

}  // namespace

size_t DTypeSize(DType dtype) { return Info(dtype).size; }
const char* DTypeName(DType dtype) { return Info(dtype).name; }
DTypeKind KindOf(DType dtype) { return Info(dtype).kind; }

DType DTypeFromName(const std::string& name) {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (name == kInfo[i].name) return static_cast<DType>(i);
  }
  std::string known;
  for (int i = 0; i < kNumDTypes; ++i) known += std::string(i ? ", " : "") + kInfo[i].name;
  throw TypeError(internal::Concat("unsupported dtype '", name, "'; supported: ", known));
}

bool UntypedConvertible(DType src, DType dst) {
  switch (KindOf(src)) {
    case DTypeKind::kBool: return true;
    case DTypeKind::kInt: return KindOf(dst) != DTypeKind::kBool;
    case DTypeKind::kFloat: return KindOf(dst) == DTypeKind::kFloat;
  }
  return false;
}

bool IntegersFitIn(const int64_t* values, size_t n, DType dst, int64_t* bad_value) {
  int64_t lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max();
  switch (dst) {
    case DType::kUInt8: lo = 0; hi = 255; break;
    case DType::kInt8: lo = -128; hi = 127; break;
    case DType::kInt16: lo = -32768; hi = 32767; break;
    case DType::kInt32: lo = std::numeric_limits<int32_t>::min(); hi = std::numeric_limits<int32_t>::max(); break;
    default: return true;  // int64 and floating fields take any int64
  }
  for (size_t i = 0; i < n; ++i) {
    if (values[i] < lo || values[i] > hi) {
      *bad_value = values[i];
      return false;
    }
  }
  return true;
}

void ConvertUntyped(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n) {
  switch (src_dtype) {
    case DType::kBool: return ConvertFrom(static_cast<const uint8_t*>(src), dst, dst_dtype, n);
    case DType::kInt64: return ConvertFrom(static_cast<const int64_t*>(src), dst, dst_dtype, n);
    case DType::kFloat64: return ConvertFrom(static_cast<const double*>(src), dst, dst_dtype, n);
    default:
      throw std::logic_error(internal::Concat("untyped source of dtype ", DTypeName(src_dtype)));
  }
}

uint16_t FloatToHalf(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (abs < 0x38800000u) {  // a subnormal half (or zero)
    // Exact: the value in units of 2^-24, rounded to nearest even by the FPU.
    float magnitude;
    std::memcpy(&magnitude, &abs, sizeof magnitude);
    const float scaled = magnitude * 16777216.0f;  // 2^24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  const uint32_t rebased = abs - 0x38000000u;
  const uint32_t round = 0xFFFu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rebased + round) >> 13));
}

uint16_t FloatToBFloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t round = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + round) >> 16);
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1f) {
    out = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    out = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    out = sign;  // +-0
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    out = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

float BFloat16ToFloat(uint16_t bits) {
  const uint32_t out = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

double ElementAsDouble(const void* data, DType dtype, int64_t index) {
  const auto* p = static_cast<const uint8_t*>(data) + static_cast<size_t>(index) * DTypeSize(dtype);
  auto read = [p](auto v) {
    std::memcpy(&v, p, sizeof(v));
    return v;
  };
  switch (dtype) {
    case DType::kBool: return read(uint8_t{}) != 0 ? 1.0 : 0.0;
    case DType::kUInt8: return read(uint8_t{});
    case DType::kInt8: return read(int8_t{});
    case DType::kInt16: return read(int16_t{});
    case DType::kInt32: return read(int32_t{});
    case DType::kInt64: return static_cast<double>(read(int64_t{}));
    case DType::kFloat16: return HalfToFloat(read(uint16_t{}));
    case DType::kBFloat16: return BFloat16ToFloat(read(uint16_t{}));
    case DType::kFloat32: return read(float{});
    case DType::kFloat64: return read(double{});
  }
  return 0.0;
}

}  // namespace reverie
