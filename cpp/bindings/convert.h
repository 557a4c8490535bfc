// Conversions between Python values and the core's plain types, shared by the binding files
// of reverie._core. Glue only: no engine logic.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "reverie/common.h"
#include "reverie/config.h"
#include "reverie/dtype.h"
#include "reverie/storage.h"
#include "reverie/table.h"

namespace reverie_py {

namespace py = pybind11;

// Keeps converted Python values alive (and holds Python scalars) during one call.
// Fields of up to kInline values live on the stack: the per-item path allocates nothing.
struct Inputs {
  static constexpr size_t kInline = 16;
  union Scalar {
    int64_t i;
    double d;
    uint8_t b;
  };
  explicit Inputs(size_t n) : count(n) {
    if (n > kInline) {
      heap_scalars.resize(n);
      heap_fields.resize(n);
    }
  }
  Scalar& scalar(size_t i) { return count > kInline ? heap_scalars[i] : inline_scalars[i]; }
  reverie::FieldInput* fields() { return count > kInline ? heap_fields.data() : inline_fields; }

  size_t count;
  Scalar inline_scalars[kInline];
  reverie::FieldInput inline_fields[kInline];
  std::vector<Scalar> heap_scalars;  // sized up front: pointers into it stay valid
  std::vector<reverie::FieldInput> heap_fields;
  std::vector<py::object> keep;  // values made here (copies, capsules); the caller's own
                                 // arrays are kept alive by the call's arguments
};

[[noreturn]] inline void ThrowType(const std::string& message) { throw reverie::TypeError(message); }

// One keyword argument: field name `key`, value `value`, the i-th of the call.
void ConvertOne(PyObject* key, PyObject* value, size_t i, Inputs& in);

// Sets the Python error for an exception from the core or the conversion (GIL held).
void SetPythonError();

// The numpy dtype of a column (bfloat16 as uint16 bits), made once per dtype. GIL held.
const py::dtype& NumpyDType(reverie::DType dtype);

// A Python value (None, bool, int, float, str, list/tuple, dict with str keys) as a
// configuration tree and back; TypeError for anything else, naming `where`.
reverie::ConfigValue ConfigFromPython(py::handle value, const std::string& where);
py::object ConfigToPython(const reverie::ConfigValue& value);

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// The core's storage for a binding's (storage, name): "memory", "create_shared",
// "attach_shared" or "file" (ValueError otherwise).
reverie::StorageConfig MakeStorage(const std::string& storage, const std::string& name);

// 1-D integer keys as a C-contiguous int64 array (TypeError / ValueError otherwise).
Int64Array KeyArray(const py::array& keys);

// Fresh arrays [n, *shape] for every field of `spec` (dst gets their addresses). GIL held.
py::list NewRowArrays(const std::vector<reverie::FieldSpec>& spec, int64_t n, std::vector<uint8_t*>* dst);
// Metadata outputs of n items: {name: int64 [n]} and the pointers the core fills, or None
// when not wanted. GIL held.
py::object NewMetaArrays(int64_t n, bool wanted, reverie::BatchMeta* meta);
// Points each ragged input of `in` named in `lengths` ({field: 1-D ints}) at its lengths,
// kept alive in `keep` for the call. TypeError for lengths that are not 1-D integers.
void AttachLengths(Inputs& in, const py::dict& lengths, std::vector<Int64Array>* keep);

}  // namespace reverie_py
