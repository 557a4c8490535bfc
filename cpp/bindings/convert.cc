// Conversions between Python values and the core's plain types (convert.h).
#include "convert.h"

#include <pybind11/stl.h>

#include <cmath>
#include <limits>

#include "dlpack.h"

namespace reverie_py {

using namespace reverie;

namespace {


bool DTypeFromNumpy(const py::dtype& dt, DType* out) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  const char order = dt.byteorder();
  if (order == '>') return false;
  switch (kind) {
    case 'b': *out = DType::kBool; return size == 1;
    case 'u': *out = DType::kUInt8; return size == 1;
    case 'i':
      switch (size) {
        case 1: *out = DType::kInt8; return true;
        case 2: *out = DType::kInt16; return true;
        case 4: *out = DType::kInt32; return true;
        case 8: *out = DType::kInt64; return true;
      }
      return false;
    case 'f':
      switch (size) {
        case 2: *out = DType::kFloat16; return true;
        case 4: *out = DType::kFloat32; return true;
        case 8: *out = DType::kFloat64; return true;
      }
      return false;
  }
  return false;
}

bool DTypeFromDLPack(const dlpack::DataType& dt, DType* out) {
  if (dt.lanes != 1) return false;
  switch (dt.code) {
    case dlpack::kBool: *out = DType::kBool; return dt.bits == 8;
    case dlpack::kUInt: *out = DType::kUInt8; return dt.bits == 8;
    case dlpack::kInt:
      switch (dt.bits) {
        case 8: *out = DType::kInt8; return true;
        case 16: *out = DType::kInt16; return true;
        case 32: *out = DType::kInt32; return true;
        case 64: *out = DType::kInt64; return true;
      }
      return false;
    case dlpack::kFloat:
      switch (dt.bits) {
        case 16: *out = DType::kFloat16; return true;
        case 32: *out = DType::kFloat32; return true;
        case 64: *out = DType::kFloat64; return true;
      }
      return false;
    case dlpack::kBfloat: *out = DType::kBFloat16; return dt.bits == 16;
  }
  return false;
}

void FromNumpy(const std::string& name, py::array arr, bool typed, bool owned, Inputs& in,
               ArrayView* view) {
  // `owned`: arr was made by this conversion and must be kept alive for the call.
  if (!(arr.flags() & py::array::c_style)) {
    arr = py::array::ensure(arr, py::array::c_style);
    owned = true;
  }
  if (!DTypeFromNumpy(arr.dtype(), &view->dtype)) {
    ThrowType("field '" + name + "': dtype " + std::string(py::str(arr.dtype())) +
              " is not supported (bool, uint8, int8..int64, float16/32/64, bfloat16)");
  }
  if (!typed && view->dtype != DType::kBool && view->dtype != DType::kInt64 &&
      view->dtype != DType::kFloat64) {
    ThrowType("field '" + name + "': cannot read a value of numpy dtype " +
              std::string(py::str(arr.dtype())));
  }
  if (arr.ndim() >= kMaxDims) {
    throw std::invalid_argument("field '" + name + "': too many dimensions (" +
                                std::to_string(arr.ndim()) + ")");
  }
  view->typed = typed;
  view->ndim = static_cast<int>(arr.ndim());
  for (int d = 0; d < view->ndim; ++d) view->shape[d] = arr.shape(d);
  view->data = arr.data();
  if (owned) in.keep.push_back(std::move(arr));
}

bool FromDLPack(const std::string& name, py::handle value, Inputs& in, ArrayView* view) {
  py::object capsule;
  try {
    capsule = value.attr("__dlpack__")();
  } catch (py::error_already_set& e) {
    // A tensor that requires grad refuses export; its data is what we store.
    if (!PyObject_HasAttrString(value.ptr(), "detach")) {
      ThrowType("field '" + name + "': cannot read this tensor: " + std::string(e.what()));
    }
    py::object detached = value.attr("detach")();
    try {
      capsule = detached.attr("__dlpack__")();
    } catch (py::error_already_set& e2) {
      ThrowType("field '" + name + "': cannot read this tensor: " + std::string(e2.what()));
    }
    in.keep.push_back(std::move(detached));
  }
  auto* managed = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (managed == nullptr) {
    PyErr_Clear();
    ThrowType("field '" + name + "': __dlpack__ did not return a DLPack tensor capsule");
  }
  const dlpack::Tensor& t = managed->dl_tensor;
  if (t.device.device_type != dlpack::kCPU && t.device.device_type != dlpack::kCUDAHost) {
    ThrowType("field '" + name + "': the tensor is on a device (DLPack device type " +
              std::to_string(t.device.device_type) +
              "); this buffer stores in host memory: pass tensor.cpu()");
  }
  if (!DTypeFromDLPack(t.dtype, &view->dtype)) {
    ThrowType("field '" + name + "': tensor dtype (DLPack code " + std::to_string(t.dtype.code) +
              ", " + std::to_string(t.dtype.bits) + " bits) is not supported");
  }
  if (t.ndim >= kMaxDims) {
    throw std::invalid_argument("field '" + name + "': too many dimensions (" +
                                std::to_string(t.ndim) + ")");
  }
  if (t.strides != nullptr) {
    int64_t expected = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (t.shape[d] != 1 && t.strides[d] != expected) return false;  // not C-contiguous
      expected *= t.shape[d];
    }
  }
  view->typed = true;
  view->ndim = t.ndim;
  for (int d = 0; d < t.ndim; ++d) view->shape[d] = t.shape[d];
  view->data = static_cast<const uint8_t*>(t.data) + t.byte_offset;
  in.keep.push_back(std::move(capsule));  // the capsule's destructor releases the tensor
  return true;
}

// Converts one Python value into an ArrayView that stays valid while `in` lives.
void ToView(const std::string& name, py::handle value, size_t index, Inputs& in, ArrayView* view) {
  PyObject* obj = value.ptr();
  auto& scalar = in.scalar(index);
  view->typed = false;
  view->ndim = 0;
  if (PyBool_Check(obj)) {
    scalar.b = obj == Py_True ? 1 : 0;
    view->dtype = DType::kBool;
    view->data = &scalar.b;
    return;
  }
  if (PyLong_Check(obj)) {
    int overflow = 0;
    scalar.i = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow != 0) throw std::invalid_argument("field '" + name + "': integer out of int64 range");
    view->dtype = DType::kInt64;
    view->data = &scalar.i;
    return;
  }
  if (PyFloat_Check(obj)) {
    scalar.d = PyFloat_AS_DOUBLE(obj);
    view->dtype = DType::kFloat64;
    view->data = &scalar.d;
    return;
  }
  if (py::isinstance<py::array>(value)) {
    FromNumpy(name, py::reinterpret_borrow<py::array>(value), true, false, in, view);
    return;
  }
  if (PyObject_HasAttrString(obj, "__dlpack__")) {
    if (FromDLPack(name, value, in, view)) return;
    // A strided tensor: ask it for a contiguous copy once.
    if (PyObject_HasAttrString(obj, "contiguous")) {
      py::object dense = value.attr("contiguous")();
      in.keep.push_back(dense);
      if (FromDLPack(name, dense, in, view)) return;
    }
    ThrowType("field '" + name + "': the tensor is not contiguous");
  }
  // numpy scalars keep their dtype; lists and tuples of Python numbers do not have one.
  static py::object np_generic = py::module_::import("numpy").attr("generic");
  const bool typed = py::isinstance(value, np_generic);
  py::array arr;
  try {
    arr = py::array(py::module_::import("numpy").attr("asarray")(value));
  } catch (py::error_already_set& e) {
    ThrowType("field '" + name + "': cannot read a value of type " +
              std::string(py::str(py::type::handle_of(value).attr("__name__"))) + ": " + e.what());
  }
  if (arr.dtype().kind() == 'O' || arr.dtype().kind() == 'U' || arr.dtype().kind() == 'S') {
    ThrowType("field '" + name + "': expected a number, array or tensor, got " +
              std::string(py::str(py::type::handle_of(value).attr("__name__"))));
  }
  FromNumpy(name, arr, typed, true, in, view);
}

}  // namespace

// One keyword argument: field name `key`, value `value`, the i-th of the call.
void ConvertOne(PyObject* key, PyObject* value, size_t i, Inputs& in) {
  if (!PyUnicode_Check(key)) ThrowType("field names must be strings");
  Py_ssize_t len = 0;
  const char* utf8 = PyUnicode_AsUTF8AndSize(key, &len);
  if (utf8 == nullptr) throw py::error_already_set();
  FieldInput& field = in.fields()[i];
  field.name = std::string_view(utf8, static_cast<size_t>(len));
  ToView(std::string(field.name), value, i, in, &field.value);
}


// Sets the Python error for an exception from the core or the conversion (GIL held).
void SetPythonError() {
  try {
    throw;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const reverie::TypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what());
  } catch (const reverie::TimeoutError& e) {
    PyErr_SetString(PyExc_TimeoutError, e.what());
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::out_of_range& e) {
    PyErr_SetString(PyExc_IndexError, e.what());
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
}


namespace {

py::dtype MakeNumpyDType(DType dtype) {
  switch (dtype) {
    case DType::kBool: return py::dtype("bool");
    case DType::kUInt8: return py::dtype("uint8");
    case DType::kInt8: return py::dtype("int8");
    case DType::kInt16: return py::dtype("int16");
    case DType::kInt32: return py::dtype("int32");
    case DType::kInt64: return py::dtype("int64");
    case DType::kFloat16: return py::dtype("float16");
    case DType::kBFloat16: return py::dtype("uint16");  // numpy has no bfloat16: raw bits
    case DType::kFloat32: return py::dtype("float32");
    case DType::kFloat64: return py::dtype("float64");
  }
  return py::dtype("uint8");
}

}  // namespace

// The numpy dtype for a column, made once per dtype (parsing a dtype name costs more than
// allocating a small array). Leaked on purpose: no Python object may outlive the
// interpreter in a static destructor. Called with the GIL held.
const py::dtype& NumpyDType(DType dtype) {
  static auto* cache = [] {
    auto* table = new std::vector<py::dtype>();
    for (int i = 0; i < kNumDTypes; ++i) table->push_back(MakeNumpyDType(static_cast<DType>(i)));
    return table;
  }();
  return (*cache)[static_cast<size_t>(dtype)];
}

// A fresh array for field f with leading dims `lead`, then (episodes: obs fields with
// frame_stack > 1) the stack axis, then the field's shape.

ConfigValue ConfigFromPython(py::handle value, const std::string& where) {
  PyObject* obj = value.ptr();
  if (value.is_none()) return ConfigValue();
  if (PyBool_Check(obj)) return ConfigValue::Bool(obj == Py_True);
  if (PyLong_Check(obj)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow == 0) return ConfigValue::Int(v);
    if (overflow > 0) {
      const unsigned long long u = PyLong_AsUnsignedLongLong(obj);
      if (!PyErr_Occurred()) return ConfigValue::UInt(u);
      PyErr_Clear();
    }
    throw std::invalid_argument(where + ": integer " + std::string(py::str(value)) + " is out of range");
  }
  if (PyFloat_Check(obj)) return ConfigValue::Double(PyFloat_AS_DOUBLE(obj));
  if (PyUnicode_Check(obj)) return ConfigValue::String(value.cast<std::string>());
  if (PyList_Check(obj) || PyTuple_Check(obj)) {
    ConfigValue list = ConfigValue::MakeList();
    size_t i = 0;
    for (py::handle item : value) list.Append(ConfigFromPython(item, where + "[" + std::to_string(i++) + "]"));
    return list;
  }
  if (PyDict_Check(obj)) {
    ConfigValue map = ConfigValue::MakeMap();
    for (auto [k, v] : value.cast<py::dict>()) {
      if (!PyUnicode_Check(k.ptr())) ThrowType(where + ": mapping keys must be strings");
      const std::string key = k.cast<std::string>();
      map.Set(key, ConfigFromPython(v, where + "." + key));
    }
    return map;
  }
  // numpy scalars and other number-likes
  if (PyIndex_Check(obj)) return ConfigFromPython(py::reinterpret_steal<py::object>(PyNumber_Index(obj)), where);
  if (PyNumber_Check(obj)) return ConfigValue::Double(PyFloat_AsDouble(obj));
  ThrowType(where + ": expected a number, string, list or mapping, got " +
            std::string(py::str(py::type::handle_of(value).attr("__name__"))));
}

py::object ConfigToPython(const ConfigValue& value) {
  switch (value.type()) {
    case ConfigValue::Type::kNull: return py::none();
    case ConfigValue::Type::kBool: return py::bool_(value.AsBool(""));
    case ConfigValue::Type::kInt: return py::int_(value.AsInt(""));
    case ConfigValue::Type::kUInt: return py::int_(value.AsUInt(""));
    case ConfigValue::Type::kDouble: return py::float_(value.AsDouble(""));
    case ConfigValue::Type::kString: return py::str(value.AsString(""));
    case ConfigValue::Type::kList: {
      py::list out;
      for (const ConfigValue& item : value.AsList("")) out.append(ConfigToPython(item));
      return std::move(out);
    }
    case ConfigValue::Type::kMap: {
      py::dict out;
      for (const auto& [k, v] : value.AsMap("")) out[py::str(k)] = ConfigToPython(v);
      return std::move(out);
    }
  }
  return py::none();
}

// 1-D integer keys as a C-contiguous int64 array (TypeError / ValueError otherwise).
reverie::StorageConfig MakeStorage(const std::string& storage, const std::string& name) {
  reverie::StorageConfig st;
  st.name = name;
  if (storage == "memory") {
    st.kind = reverie::StorageConfig::Kind::kPrivate;
  } else if (storage == "create_shared") {
    st.kind = reverie::StorageConfig::Kind::kCreateShared;
  } else if (storage == "attach_shared") {
    st.kind = reverie::StorageConfig::Kind::kAttachShared;
  } else if (storage == "file") {
    st.kind = reverie::StorageConfig::Kind::kFile;
  } else {
    throw std::invalid_argument("unknown storage '" + storage + "'");
  }
  return st;
}

Int64Array KeyArray(const py::array& keys) {
  const char kind = keys.dtype().kind();
  if (kind != 'i' && kind != 'u') ThrowType("keys must be integers, got dtype " + std::string(py::str(keys.dtype())));
  if (keys.ndim() != 1) throw std::invalid_argument("keys must be 1-D, got " + std::to_string(keys.ndim()) + "-D");
  return Int64Array::ensure(keys);
}

py::list NewRowArrays(const std::vector<reverie::FieldSpec>& spec, int64_t n, std::vector<uint8_t*>* dst) {
  py::list arrays;
  for (const reverie::FieldSpec& f : spec) {
    std::vector<py::ssize_t> shape{n};
    shape.insert(shape.end(), f.shape.begin(), f.shape.end());
    py::array a(NumpyDType(f.dtype), shape);
    dst->push_back(static_cast<uint8_t*>(a.mutable_data()));
    arrays.append(std::move(a));
  }
  return arrays;
}

py::object NewMetaArrays(int64_t n, bool wanted, reverie::BatchMeta* meta) {
  if (!wanted) return py::none();
  py::dict out;
  const std::pair<const char*, int64_t**> fields[] = {{"inserted", &meta->inserted},
                                                     {"version", &meta->version},
                                                     {"times_sampled", &meta->times_sampled},
                                                     {"last_sampled", &meta->last_sampled}};
  for (const auto& [name, ptr] : fields) {
    py::array_t<int64_t> a(n);
    *ptr = a.mutable_data();
    out[name] = std::move(a);
  }
  return std::move(out);
}

void AttachLengths(Inputs& in, const py::dict& lengths, std::vector<Int64Array>* keep) {
  keep->reserve(lengths.size());  // pointers into it stay valid
  for (size_t k = 0; k < in.count; ++k) {
    reverie::FieldInput& f = in.fields()[k];
    const py::str name(std::string(f.name));
    if (!lengths.contains(name)) continue;
    keep->push_back(Int64Array::ensure(lengths[name]));
    if (!keep->back() || keep->back().ndim() != 1) {
      ThrowType("the lengths of ragged field '" + std::string(f.name) + "' must be a 1-D integer array");
    }
    f.lengths = keep->back().data();
    f.num_lengths = keep->back().size();
  }
}

}  // namespace reverie_py
