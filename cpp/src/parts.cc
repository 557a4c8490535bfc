// Every built-in part of a table, registered here: one line each. A new writer, admission
// rule or selector is a file of its own plus its line below.
#include <mutex>

#include "reverie/admission.h"
#include "reverie/class_balanced.h"
#include "reverie/common.h"
#include "reverie/fifo_writer.h"
#include "reverie/keep_top_k.h"
#include "reverie/keyed_archive.h"
#include "reverie/locked_fifo.h"
#include "reverie/part.h"
#include "reverie/prioritized_selector.h"
#include "reverie/recency_selector.h"
#include "reverie/registry.h"
#include "reverie/reservoir_writer.h"
#include "reverie/uniform_selector.h"

namespace reverie {
namespace internal {

void EnsureBuiltinParts() {
  static std::once_flag once;
  std::call_once(once, [] {
    // kind, factory, every setting it reads, the live ones among them
    Writers().Add("fifo", MakeFifoWriter, {"pins"});
    Writers().Add("reservoir", MakeReservoirWriter, {"pins"});
    Writers().Add("keep_top_k", MakeKeepTopK, {"score"});
    Writers().Add("class_balanced", MakeClassBalanced, {"label", "max_classes"});
    Writers().Add("quotas", MakeQuotas, {"group", "max_groups"});
    Writers().Add("keyed_archive", MakeKeyedArchive, {"key", "score", "tiebreak", "tiebreak_order"});
    Admissions().Add("threshold", MakeThreshold, {"field", "value"}, {"value"});
    Selectors().Add("uniform", MakeUniformSelector, {"replacement"});
    Selectors().Add("prioritized", MakePrioritizedSelector, {"alpha", "beta", "eps"}, {"beta"});
    Selectors().Add("recency", MakeRecencySelector, {"exponent"}, {"exponent"});
  });
}

}  // namespace internal

void Part::SetLive(const std::string& name, const ConfigValue&) {
  throw std::invalid_argument(internal::Concat("'", name, "' is not a setting that can change while "
                                               "the buffer is in use"));
}

size_t StateArray::bytes() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  size_t item = 8;
  if (dtype == "uint8" || dtype == "int8" || dtype == "bool") item = 1;
  else if (dtype == "int16" || dtype == "uint16" || dtype == "float16" || dtype == "bfloat16") item = 2;
  else if (dtype == "int32" || dtype == "uint32" || dtype == "float32") item = 4;
  return n * item;
}

int TableContext::FieldIndex(const std::string& name, const std::string& what) const {
  for (size_t i = 0; i < spec->size(); ++i) {
    if ((*spec)[i].name == name) return static_cast<int>(i);
  }
  std::string names;
  for (const FieldSpec& f : *spec) names += (names.empty() ? "" : ", ") + f.name;
  throw std::invalid_argument(internal::Concat(what, " '", name, "' is not in the spec; fields: ", names));
}

int TableContext::ScalarField(const std::string& name, const std::string& what) const {
  const int index = FieldIndex(name, what);
  const FieldSpec& f = (*spec)[static_cast<size_t>(index)];
  REVERIE_CHECK_TYPE(f.shape.empty() && f.dtype != DType::kBool, what, " '", name,
                     "' must be a numeric scalar field, got ", DTypeName(f.dtype),
                     ShapeString(f.shape.data(), static_cast<int>(f.shape.size())));
  return index;
}

double StateScalar(const ConfigValue& scalars, const std::string& name) {
  const ConfigValue& v = scalars.Get(name);
  REVERIE_CHECK(!v.is_null(), "the state has no '", name, "'");
  return v.AsDouble("state '" + name + "'");
}

int64_t StateInt(const ConfigValue& scalars, const std::string& name) {
  const ConfigValue& v = scalars.Get(name);
  REVERIE_CHECK(!v.is_null(), "the state has no '", name, "'");
  return v.AsInt("state '" + name + "'");
}

}  // namespace reverie
