// Shared macros of the core: the host/device marker and always-on input checks.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

// Functions marked REVERIE_HD are plain C++ in a CPU build and __host__ __device__ under
// nvcc, so a CUDA build runs exactly the code that the CPU build runs and tests.
#if defined(__CUDACC__)
#define REVERIE_HD __host__ __device__ __forceinline__
#else
#define REVERIE_HD inline
#endif

namespace reverie {
namespace internal {

template <typename... Args>
std::string Concat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

}  // namespace internal

// A wrong type or dtype given by the caller (Python: TypeError).
class TypeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A call that the rate limiter did not allow within its timeout (Python: TimeoutError).
class TimeoutError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace reverie

// Always-on input checks (never compiled out, unlike assert). The message parts are
// streamed, so they can carry the expected and the given values.
// std::invalid_argument -> ValueError, std::out_of_range -> IndexError,
// reverie::TypeError -> TypeError (see cpp/bindings/module.cc).
#define REVERIE_CHECK(cond, ...)                                                   \
  do {                                                                             \
    if (!(cond)) throw std::invalid_argument(::reverie::internal::Concat(__VA_ARGS__)); \
  } while (0)
#define REVERIE_CHECK_INDEX(cond, ...)                                           \
  do {                                                                           \
    if (!(cond)) throw std::out_of_range(::reverie::internal::Concat(__VA_ARGS__)); \
  } while (0)
#define REVERIE_CHECK_TYPE(cond, ...)                                              \
  do {                                                                             \
    if (!(cond)) throw ::reverie::TypeError(::reverie::internal::Concat(__VA_ARGS__)); \
  } while (0)
