// A minimal test harness: TEST(name) registers a function; CHECK* record failures.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace reverie_test {

struct Case {
  std::string name;
  std::function<void()> fn;
};
inline std::vector<Case>& Registry() {
  static std::vector<Case> cases;
  return cases;
}
inline int& Failures() {
  static int failures = 0;
  return failures;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { Registry().push_back({name, std::move(fn)}); }
};

}  // namespace reverie_test

#define TEST(name)                                                        \
  static void name();                                                     \
  static ::reverie_test::Register register_##name(#name, name);           \
  static void name()

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++::reverie_test::Failures();                                            \
    }                                                                          \
  } while (0)

#define CHECK_THROWS(expr, type)                                               \
  do {                                                                         \
    bool thrown_ = false;                                                      \
    try {                                                                      \
      expr;                                                                    \
    } catch (const type&) {                                                    \
      thrown_ = true;                                                          \
    }                                                                          \
    if (!thrown_) {                                                            \
      std::fprintf(stderr, "  %s:%d: expected %s from %s\n", __FILE__, __LINE__, #type, #expr); \
      ++::reverie_test::Failures();                                            \
    }                                                                          \
  } while (0)
