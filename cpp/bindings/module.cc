// pybind11 glue for reverie._core: converts arguments while holding the GIL, releases it
// around every call into the core, and maps core exceptions to Python ones. No engine logic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dlpack.h"
#include "reverie/device_buffer.h"
#include "reverie/prioritized_sampler.h"
#include "reverie/rate_limiter.h"
#include "reverie/replay_buffer.h"

namespace py = pybind11;
using namespace reverie;

namespace {

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
  FieldInput* fields() { return count > kInline ? heap_fields.data() : inline_fields; }

  size_t count;
  Scalar inline_scalars[kInline];
  FieldInput inline_fields[kInline];
  std::vector<Scalar> heap_scalars;  // sized up front: pointers into it stay valid
  std::vector<FieldInput> heap_fields;
  std::vector<py::object> keep;  // values made here (copies, capsules); the caller's own
                                 // arrays are kept alive by the call's arguments
};

[[noreturn]] void ThrowType(const std::string& message) { throw reverie::TypeError(message); }

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

// ---- add/extend as vectorcall functions --------------------------------------------------
// The per-item path is the hottest call of the API and runs with the GIL held until the core
// takes over, so it skips pybind11's dispatcher and the kwargs dict: METH_FASTCALL C functions.
// Each Python buffer gets one WriteTarget when it is made, and its `add`/`extend` are these
// functions bound to it, for the buffer's whole life: an alias (`add = buf.add`) taken at any
// time is the same function. Bound to a core (bind_writes), a call goes straight to it; unbound
// (before the spec is known, after close()), it calls the buffer's Python method `unbound_add`
// / `unbound_extend` with the same arguments, reached through a weak reference so that no
// reference cycle through this C object keeps the buffer alive.

struct WriteTarget {
  PyObject* owner = nullptr;  // weak reference to the Python buffer
  PyObject* core = nullptr;   // the bound _core.ReplayBuffer (a strong reference), or null
  ReplayBuffer* buf = nullptr;
};

constexpr const char* kWriteTargetName = "reverie._core.write_target";

WriteTarget* TargetOf(PyObject* capsule) {
  return static_cast<WriteTarget*>(PyCapsule_GetPointer(capsule, kWriteTargetName));
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

// The unbound call: owner.unbound_<add|extend>(*args, **kwargs), same vectorcall arguments.
PyObject* CallUnbound(WriteTarget* target, bool batched, PyObject* const* args, Py_ssize_t nargs,
                      PyObject* kwnames) {
  PyObject* owner = PyWeakref_GetObject(target->owner);  // borrowed; None once collected
  if (owner == nullptr) return nullptr;
  if (owner == Py_None) {
    PyErr_SetString(PyExc_ValueError, "this buffer no longer exists");
    return nullptr;
  }
  Py_INCREF(owner);
  PyObject* method = PyObject_GetAttrString(owner, batched ? "unbound_extend" : "unbound_add");
  Py_DECREF(owner);
  if (method == nullptr) return nullptr;
  PyObject* result = PyObject_Vectorcall(method, args, static_cast<size_t>(nargs), kwnames);
  Py_DECREF(method);
  return result;
}

template <bool kBatched>
PyObject* FastWrite(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  WriteTarget* target = TargetOf(capsule);
  if (target == nullptr) return nullptr;
  if (target->core == nullptr) return CallUnbound(target, kBatched, args, nargs, kwnames);
  if (PyWeakref_GetObject(target->owner) == Py_None) {
    // The buffer is gone (its shared segment may be unlinked): refuse rather than write into
    // a core nobody can read.
    PyErr_SetString(PyExc_ValueError, "this buffer no longer exists");
    return nullptr;
  }
  // The core stays alive for this call even if another thread unbinds it meanwhile.
  py::object core = py::reinterpret_borrow<py::object>(target->core);
  ReplayBuffer* buf = target->buf;
  try {
    if (nargs != 0) {
      ThrowType(std::string(kBatched ? "extend" : "add") +
                "() takes fields as keyword arguments only, e.g. " +
                (kBatched ? "extend(obs=O, reward=R)" : "add(obs=o, reward=r)"));
    }
    const auto n = static_cast<size_t>(kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames));
    Inputs in(n);
    for (size_t i = 0; i < n; ++i) {
      ConvertOne(PyTuple_GET_ITEM(kwnames, static_cast<Py_ssize_t>(i)), args[i], i, in);
    }
    {
      py::gil_scoped_release release;
      if (kBatched) {
        buf->Extend(in.fields(), in.count);
      } else {
        buf->Add(in.fields(), in.count);
      }
    }
  } catch (...) {
    SetPythonError();
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef kFastAdd = {"add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&FastWrite<false>)),
                        METH_FASTCALL | METH_KEYWORDS, "Stores one item (keyword arguments: fields)."};
PyMethodDef kFastExtend = {"extend", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&FastWrite<true>)),
                           METH_FASTCALL | METH_KEYWORDS, "Stores a batch of items along axis 0."};

// (target, add, extend) for the Python buffer `owner`; the functions start unbound.
py::tuple MakeWriteTarget(py::object owner) {
  py::object weak = py::reinterpret_steal<py::object>(PyWeakref_NewRef(owner.ptr(), nullptr));
  if (!weak) throw py::error_already_set();
  auto* target = new WriteTarget{weak.release().ptr(), nullptr, nullptr};
  PyObject* capsule = PyCapsule_New(target, kWriteTargetName, [](PyObject* c) {
    auto* t = TargetOf(c);
    Py_XDECREF(t->owner);
    Py_XDECREF(t->core);
    delete t;
  });
  if (capsule == nullptr) {
    Py_DECREF(target->owner);
    delete target;
    throw py::error_already_set();
  }
  py::object cap = py::reinterpret_steal<py::object>(capsule);
  py::object add = py::reinterpret_steal<py::object>(PyCFunction_New(&kFastAdd, cap.ptr()));
  if (!add) throw py::error_already_set();
  py::object extend = py::reinterpret_steal<py::object>(PyCFunction_New(&kFastExtend, cap.ptr()));
  if (!extend) throw py::error_already_set();
  return py::make_tuple(cap, add, extend);
}

// Binds the target's functions to `core` (a _core.ReplayBuffer), or unbinds them (None).
void BindWrites(py::capsule capsule, py::object core) {
  WriteTarget* target = TargetOf(capsule.ptr());
  if (target == nullptr) throw py::error_already_set();
  ReplayBuffer* buf = core.is_none() ? nullptr : core.cast<ReplayBuffer*>();
  PyObject* old = target->core;
  target->core = core.is_none() ? nullptr : core.inc_ref().ptr();
  target->buf = buf;
  Py_XDECREF(old);
}

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
py::array NewFieldArray(const ReplayBuffer& buf, size_t f, std::vector<py::ssize_t> shape) {
  const FieldSpec& spec = buf.spec()[f];
  const EpisodeConfig& ec = buf.episodes();
  if (ec.frame_stack > 1 && std::find(ec.obs.begin(), ec.obs.end(), static_cast<int>(f)) != ec.obs.end()) {
    shape.push_back(ec.frame_stack);
  }
  shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
  return py::array(NumpyDType(spec.dtype), shape);
}

py::list NewEpisodeArrays(const ReplayBuffer& buf, const std::vector<py::ssize_t>& lead,
                          std::vector<uint8_t*>* dst) {
  py::list arrays;
  for (size_t f = 0; f < buf.spec().size(); ++f) {
    py::array a = NewFieldArray(buf, f, lead);
    dst->push_back(static_cast<uint8_t*>(a.mutable_data()));
    arrays.append(std::move(a));
  }
  return arrays;
}

// The importance-weight output of a sample call: a fresh float32 array (with *w pointing into
// it) for a prioritized buffer, else None (and *w null).
py::object NewWeights(const ReplayBuffer& buf, int64_t batch, float** w) {
  if (!buf.sampler().prioritized()) return py::none();
  py::array_t<float> weights(batch);
  *w = weights.mutable_data();
  return std::move(weights);
}

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// 1-D integer keys as a C-contiguous int64 array (TypeError / ValueError otherwise).
Int64Array KeyArray(const py::array& keys) {
  const char kind = keys.dtype().kind();
  if (kind != 'i' && kind != 'u') ThrowType("keys must be integers, got dtype " + std::string(py::str(keys.dtype())));
  if (keys.ndim() != 1) throw std::invalid_argument("keys must be 1-D, got " + std::to_string(keys.ndim()) + "-D");
  return Int64Array::ensure(keys);
}

PrioritizedSampler& Prioritized(ReplayBuffer& buf) {
  auto* p = dynamic_cast<const PrioritizedSampler*>(&buf.sampler());
  if (p == nullptr) throw std::invalid_argument("this buffer's sampler is not prioritized");
  return const_cast<PrioritizedSampler&>(*p);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "reverie's native core (private: use the reverie package)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const reverie::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const reverie::TimeoutError& e) {
      PyErr_SetString(PyExc_TimeoutError, e.what());
    }
  });
  m.def("make_write_target", &MakeWriteTarget, py::arg("owner"),
        "(target, add, extend): the write functions of the Python buffer `owner`, unbound.");
  m.def("bind_writes", &BindWrites, py::arg("target"), py::arg("core"),
        "Binds a write target's functions to a core, or unbinds them (None).");
  m.def("cuda_built", &CudaBuilt, "Whether the CUDA kernels were compiled into this build.");
  m.def("cuda_device_count", &CudaDeviceCount, py::call_guard<py::gil_scoped_release>(),
        "CUDA devices usable now (0 without kernels, driver or device).");
  m.def("dtype_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumDTypes; ++i) names.emplace_back(DTypeName(static_cast<DType>(i)));
    return names;
  });

  // Device buffers: pointers and streams cross as integers (a tensor's data_ptr(), a torch
  // stream's cuda_stream); the Python layer checks devices, dtypes and shapes.
  py::class_<DeviceStatus>(m, "DeviceStatus")
      .def_readonly("max_q", &DeviceStatus::max_q)
      .def_readonly("scale_exp", &DeviceStatus::scale_exp)
      .def_readonly("stale", &DeviceStatus::stale)
      .def_readonly("error", &DeviceStatus::error)
      .def_readonly("error_pos", &DeviceStatus::error_pos)
      .def_readonly("error_key", &DeviceStatus::error_key)
      .def_readonly("error_value", &DeviceStatus::error_value);
  py::class_<DeviceReplay>(m, "DeviceReplay")
      .def(py::init([](int64_t capacity, std::vector<int64_t> row_bytes, const std::string& device,
                       int index, bool prioritized, double alpha, double beta, double eps,
                       uint64_t seed, int block_threads) {
             PrioritizedConfig config{alpha, beta, eps};
             std::unique_ptr<DeviceBackend> backend =
                 device == "cuda" ? MakeCudaBackend(index) : MakeHostBackend(block_threads);
             return std::make_unique<DeviceReplay>(capacity, std::move(row_bytes), prioritized,
                                                   config, seed, std::move(backend));
           }),
           py::arg("capacity"), py::arg("row_bytes"), py::arg("device"), py::arg("index"),
           py::arg("prioritized"), py::arg("alpha"), py::arg("beta"), py::arg("eps"),
           py::arg("seed"), py::arg("block_threads") = 1, py::call_guard<py::gil_scoped_release>())
      .def("add", [](DeviceReplay& self, const std::vector<uintptr_t>& sources, int64_t n,
                     uintptr_t stream) {
             std::vector<const void*> src(sources.size());
             for (size_t f = 0; f < sources.size(); ++f) src[f] = reinterpret_cast<const void*>(sources[f]);
             py::gil_scoped_release release;
             self.Add(src.data(), n, stream);
           })
      .def("sample", [](DeviceReplay& self, int64_t batch, const std::vector<uintptr_t>& out,
                        uintptr_t keys, uintptr_t weights, uintptr_t stream) {
             std::vector<uint8_t*> dst(out.size());
             for (size_t f = 0; f < out.size(); ++f) dst[f] = reinterpret_cast<uint8_t*>(out[f]);
             py::gil_scoped_release release;
             self.Sample(batch, dst.data(), reinterpret_cast<int64_t*>(keys),
                         reinterpret_cast<float*>(weights), stream);
           })
      .def("update_priorities", [](DeviceReplay& self, uintptr_t keys, uintptr_t priorities,
                                   bool f64, int64_t n, uintptr_t stream) {
             py::gil_scoped_release release;
             self.UpdatePriorities(reinterpret_cast<const int64_t*>(keys),
                                   reinterpret_cast<const void*>(priorities), f64, n, stream);
           })
      .def("read_status", &DeviceReplay::ReadStatus, py::arg("stream"), py::arg("clear_error"),
           py::call_guard<py::gil_scoped_release>())
      .def("read_leaves", [](DeviceReplay& self, uintptr_t stream) {
             std::vector<uint64_t> leaves;
             {
               py::gil_scoped_release release;
               leaves = self.ReadLeaves(stream);
             }
             return py::array_t<uint64_t>(static_cast<py::ssize_t>(leaves.size()), leaves.data());
           })
      .def("read_column", [](DeviceReplay& self, int field, uintptr_t out, uintptr_t stream) {
             py::gil_scoped_release release;
             self.ReadColumn(field, reinterpret_cast<void*>(out), stream);
           })
      .def_property("beta", &DeviceReplay::beta, &DeviceReplay::set_beta)
      .def_property_readonly("capacity", &DeviceReplay::capacity)
      .def_property_readonly("size", &DeviceReplay::size)
      .def_property_readonly("written", &DeviceReplay::written)
      .def_property_readonly("sample_calls", &DeviceReplay::sample_calls)
      .def_property_readonly("seed", &DeviceReplay::seed)
      .def_property_readonly("device", &DeviceReplay::device);

  py::class_<ReplayBuffer>(m, "ReplayBuffer")
      .def(py::init([](int64_t capacity, const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& spec,
                       const std::string& sampler, bool replacement, double alpha, double beta,
                       double eps, uint64_t seed, const std::string& storage, const std::string& name,
                       const std::optional<std::tuple<int64_t, int, int, int, std::vector<int>, int>>& episodes) {
             std::vector<FieldSpec> fields;
             for (const auto& [field, dtype, shape] : spec) {
               fields.push_back(FieldSpec{field, DTypeFromName(dtype), shape});
             }
             SamplerConfig sc;
             if (sampler == "uniform") {
               sc.kind = SamplerConfig::Kind::kUniform;
               sc.replacement = replacement;
             } else if (sampler == "prioritized") {
               sc.kind = SamplerConfig::Kind::kPrioritized;
               sc.prioritized = PrioritizedConfig{alpha, beta, eps};
             } else {
               throw std::invalid_argument("unknown sampler '" + sampler + "'");
             }
             StorageConfig st;
             if (storage == "memory") {
               st.kind = StorageConfig::Kind::kPrivate;
             } else if (storage == "create_shared") {
               st.kind = StorageConfig::Kind::kCreateShared;
             } else if (storage == "attach_shared") {
               st.kind = StorageConfig::Kind::kAttachShared;
             } else if (storage == "file") {
               st.kind = StorageConfig::Kind::kFile;
             } else {
               throw std::invalid_argument("unknown storage '" + storage + "'");
             }
             st.name = name;
             EpisodeConfig ec;
             if (episodes) {
               std::tie(ec.num_envs, ec.reward, ec.terminated, ec.truncated, ec.obs, ec.frame_stack) = *episodes;
             }
             std::unique_ptr<ReplayBuffer> buf;
             {
               py::gil_scoped_release release;  // creating a large shared segment takes a while
               buf = std::make_unique<ReplayBuffer>(capacity, std::move(fields), sc, seed, st, ec);
             }
             // While a call waits for the rate limiter, Ctrl-C (and other signals) still work.
             buf->set_wait_poll([] {
               py::gil_scoped_acquire gil;
               if (PyErr_CheckSignals() != 0) throw py::error_already_set();
             });
             return buf;
           }),
           py::arg("capacity"), py::arg("spec"), py::arg("sampler"), py::arg("replacement"),
           py::arg("alpha"), py::arg("beta"), py::arg("eps"), py::arg("seed"),
           py::arg("storage") = "memory", py::arg("name") = "",
           py::arg("episodes") = py::none())
      .def("sample", [](ReplayBuffer& buf, int64_t batch, const std::optional<std::vector<uintptr_t>>& out) {
        // Gathers into fresh numpy arrays (that the caller's tensors then own), or into the
        // caller's tensors at the given addresses (python/reverie/_buffer.py checks them).
        if (batch <= 0) throw std::invalid_argument("batch_size must be > 0, got " + std::to_string(batch));
        const auto& spec = buf.spec();
        std::vector<uint8_t*> dst(spec.size());
        py::list arrays;
        if (out) {
          if (out->size() != spec.size()) throw std::invalid_argument("one output per field expected");
          for (size_t i = 0; i < spec.size(); ++i) dst[i] = reinterpret_cast<uint8_t*>((*out)[i]);
        } else {
          for (size_t i = 0; i < spec.size(); ++i) {
            std::vector<py::ssize_t> shape{batch};
            shape.insert(shape.end(), spec[i].shape.begin(), spec[i].shape.end());
            py::array a(NumpyDType(spec[i].dtype), shape);
            dst[i] = static_cast<uint8_t*>(a.mutable_data());
            arrays.append(std::move(a));
          }
        }
        py::array_t<int64_t> keys(batch);
        float* w = nullptr;
        py::object weights = NewWeights(buf, batch, &w);
        int64_t* k = keys.mutable_data();
        {
          py::gil_scoped_release release;
          buf.Sample(batch, dst.data(), k, w);
        }
        return py::make_tuple(std::move(arrays), std::move(keys), std::move(weights));
      }, py::arg("batch"), py::arg("out") = py::none())
      .def("get", [](const ReplayBuffer& buf, const py::array& keys) {
        // The stored rows of the given keys, in fresh arrays (IndexError for a key that is
        // not stored now).
        const auto k = KeyArray(keys);
        const int64_t n = k.size();
        const auto& spec = buf.spec();
        std::vector<uint8_t*> dst(spec.size());
        py::list arrays;
        for (size_t i = 0; i < spec.size(); ++i) {
          std::vector<py::ssize_t> shape{n};
          shape.insert(shape.end(), spec[i].shape.begin(), spec[i].shape.end());
          py::array a(NumpyDType(spec[i].dtype), shape);
          dst[i] = static_cast<uint8_t*>(a.mutable_data());
          arrays.append(std::move(a));
        }
        {
          py::gil_scoped_release release;
          buf.Get(k.data(), n, dst.data());
        }
        return py::make_tuple(std::move(arrays), py::array_t<int64_t>(n, k.data()));
      }, py::arg("keys"))
      .def("sample_transitions", [](ReplayBuffer& buf, int64_t batch, int n_step, double gamma) {
        // Fresh arrays: fields of the start rows (obs fields stacked), next obs, returns,
        // discounts, keys, weights.
        buf.CheckTransitionArgs(batch, n_step, gamma);
        const EpisodeConfig& ec = buf.episodes();
        std::vector<uint8_t*> dst, next_dst;
        py::list arrays = NewEpisodeArrays(buf, {batch}, &dst);
        py::list next_arrays;
        for (int f : ec.obs) {
          py::array a = NewFieldArray(buf, static_cast<size_t>(f), {batch});
          next_dst.push_back(static_cast<uint8_t*>(a.mutable_data()));
          next_arrays.append(std::move(a));
        }
        py::array_t<float> returns(batch), discounts(batch);
        py::array_t<int64_t> keys(batch);
        float* w = nullptr;
        py::object weights = NewWeights(buf, batch, &w);
        float* r = returns.mutable_data();
        float* d = discounts.mutable_data();
        int64_t* k = keys.mutable_data();
        {
          py::gil_scoped_release release;
          buf.SampleTransitions(batch, n_step, gamma, dst.data(), next_dst.data(), r, d, k, w);
        }
        return py::make_tuple(std::move(arrays), std::move(next_arrays), std::move(returns),
                              std::move(discounts), std::move(keys), std::move(weights));
      }, py::arg("batch"), py::arg("n_step"), py::arg("gamma"))
      .def("sample_sequences", [](ReplayBuffer& buf, int64_t batch, int64_t burn_in, int64_t length, bool drop) {
        buf.CheckSequenceArgs(batch, burn_in, length);  // before allocating the outputs
        const int64_t total = burn_in + length;
        std::vector<uint8_t*> dst;
        py::list arrays = NewEpisodeArrays(buf, {batch, total}, &dst);
        py::array_t<bool> mask({batch, total});
        py::array_t<int64_t> keys(batch);
        float* w = nullptr;
        py::object weights = NewWeights(buf, batch, &w);
        auto* m = reinterpret_cast<uint8_t*>(mask.mutable_data());
        int64_t* k = keys.mutable_data();
        {
          py::gil_scoped_release release;
          buf.SampleSequences(batch, burn_in, length, drop, dst.data(), m, k, w);
        }
        return py::make_tuple(std::move(arrays), std::move(mask), std::move(keys), std::move(weights));
      }, py::arg("batch"), py::arg("burn_in"), py::arg("length"), py::arg("drop"))
      .def("episode_state", [](const ReplayBuffer& buf) {
        if (!buf.episodes().enabled()) throw std::invalid_argument("this buffer has no episode state");
        py::array_t<uint8_t> flags(buf.capacity()), streams(buf.episodes().num_envs);
        std::memcpy(flags.mutable_data(), buf.row_flags(), static_cast<size_t>(buf.capacity()));
        std::memcpy(streams.mutable_data(), buf.stream_flags(), static_cast<size_t>(buf.episodes().num_envs));
        return py::make_tuple(flags, streams);
      })
      .def("set_episode_state", [](ReplayBuffer& buf, const py::array_t<uint8_t, py::array::c_style>& flags,
                                   const py::array_t<uint8_t, py::array::c_style>& streams) {
        buf.SetEpisodeState(flags.data(), static_cast<size_t>(flags.size()), streams.data(),
                            static_cast<size_t>(streams.size()));
      })
      .def("update_priorities", [](ReplayBuffer& buf, const py::array& keys, const py::array& priorities) {
        // Argument conversion: integer keys -> int64, numeric priorities -> float64.
        const char kk = keys.dtype().kind(), pk = priorities.dtype().kind();
        if (kk != 'i' && kk != 'u') ThrowType("indices must be integers, got dtype " + std::string(py::str(keys.dtype())));
        if (pk != 'f' && pk != 'i' && pk != 'u') ThrowType("priorities must be numbers, got dtype " + std::string(py::str(priorities.dtype())));
        if (keys.ndim() != 1 || priorities.ndim() != 1) {
          throw std::invalid_argument("indices and priorities must be 1-D, got " + std::to_string(keys.ndim()) +
                                      "-D and " + std::to_string(priorities.ndim()) + "-D");
        }
        if (keys.shape(0) != priorities.shape(0)) {
          throw std::invalid_argument("got " + std::to_string(keys.shape(0)) + " indices but " +
                                      std::to_string(priorities.shape(0)) + " priorities");
        }
        const auto k = Int64Array::ensure(keys);
        const auto p = DoubleArray::ensure(priorities);
        py::gil_scoped_release release;
        return buf.UpdatePriorities(k.data(), p.data(), k.shape(0));
      })
      .def_property_readonly("capacity", &ReplayBuffer::capacity)
      .def_property_readonly("written", &ReplayBuffer::written)
      .def_property_readonly("claimed", &ReplayBuffer::claimed)
      .def_property_readonly("shared_name", [](const ReplayBuffer& buf) -> py::object {
        if (!buf.shared()) return py::none();
        return py::str(buf.shared_name());
      })
      .def("unlink", &ReplayBuffer::Unlink)
      .def("flush", &ReplayBuffer::Flush, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("reopened", &ReplayBuffer::reopened)
      .def("configure_rate_limiter", [](ReplayBuffer& buf, bool enabled, int64_t min_size, double spi,
                                        double tolerance, double timeout) {
        buf.rate_limiter().Configure(RateLimitConfig{enabled, min_size, spi, tolerance, timeout});
      })
      .def("rate_limiter_config", [](const ReplayBuffer& buf) {
        const RateLimitConfig c = buf.rate_limiter().config();
        return py::make_tuple(c.enabled, c.min_size, c.samples_per_insert, c.tolerance, c.timeout);
      })
      .def_property_readonly("sampled", [](const ReplayBuffer& buf) { return buf.rate_limiter().sampled(); })
      .def("can_sample", [](const ReplayBuffer& buf) { return buf.rate_limiter().CanSample(); })
      .def("can_insert", [](const ReplayBuffer& buf) { return buf.rate_limiter().CanInsert(); })
      .def_property_readonly("size", &ReplayBuffer::size)
      .def_property_readonly("stale_updates", &ReplayBuffer::stale_updates)
      .def_property_readonly("prioritized", [](const ReplayBuffer& buf) { return buf.sampler().prioritized(); })
      .def("column", [](py::object self, size_t field) {
        // A numpy view of the whole column [capacity, *shape]; it keeps the buffer alive.
        auto& buf = self.cast<ReplayBuffer&>();
        if (field >= buf.spec().size()) throw std::out_of_range("no field number " + std::to_string(field));
        const FieldSpec& spec = buf.spec()[field];
        std::vector<py::ssize_t> shape{buf.capacity()};
        shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
        return py::array(NumpyDType(spec.dtype), shape, buf.column(field), self);
      })
      .def("get_counters", [](const ReplayBuffer& buf) {
        const auto c = buf.GetCounters();
        return py::make_tuple(c.written, c.sample_calls, c.stale_updates, c.sampled, c.limiter_offset);
      })
      .def("set_counters", [](ReplayBuffer& buf, int64_t written, uint64_t calls, int64_t stale,
                              int64_t sampled, double limiter_offset) {
        buf.SetCounters(ReplayBuffer::Counters{written, calls, stale, sampled, limiter_offset});
      })
      .def("load_column", [](ReplayBuffer& buf, size_t field, const py::array& data) {
        if (!(data.flags() & py::array::c_style)) throw std::invalid_argument("column data must be C-contiguous");
        const auto bytes = static_cast<size_t>(data.nbytes());
        const void* ptr = data.data();
        py::gil_scoped_release release;
        buf.LoadColumn(field, ptr, bytes);
      })
      // Prioritized sampler access.
      .def_property("beta",
                    [](ReplayBuffer& buf) { return Prioritized(buf).config().beta; },
                    [](ReplayBuffer& buf, double beta) {
                      Prioritized(buf);
                      buf.WithSampler([&](Sampler& s) { static_cast<PrioritizedSampler&>(s).set_beta(beta); });
                    })
      .def("priority_state", [](ReplayBuffer& buf) {
        PrioritizedSampler& p = Prioritized(buf);
        auto state = buf.WithSampler([&](Sampler&) { return p.GetState(); });
        py::array_t<uint64_t> leaves(static_cast<py::ssize_t>(state.leaves.size()));
        std::copy(state.leaves.begin(), state.leaves.end(), leaves.mutable_data());
        return py::make_tuple(leaves, state.scale_exp, state.max_q);
      })
      .def("set_priority_state", [](ReplayBuffer& buf, const py::array_t<uint64_t, py::array::c_style>& leaves,
                                    int scale_exp, double max_q) {
        Prioritized(buf);
        PrioritizedSampler::State state;
        state.leaves.assign(leaves.data(), leaves.data() + leaves.size());
        state.scale_exp = scale_exp;
        state.max_q = max_q;
        py::gil_scoped_release release;
        buf.SetPriorityState(state);
      })
      // Keys (key.h): the decoder of the layers above.
      .def("slots_of", [](const ReplayBuffer& buf, const py::array& keys) {
        const auto k = KeyArray(keys);
        py::array_t<int64_t> slots(k.size());
        buf.SlotsOf(k.data(), slots.mutable_data(), k.size());
        return slots;
      }, "The slot of each key (-1: not a key of this buffer).")
      .def("insertions_of", [](const ReplayBuffer& buf, const py::array& keys) {
        const auto k = KeyArray(keys);
        py::array_t<int64_t> out(k.size());
        buf.InsertionsOf(k.data(), out.mutable_data(), k.size());
        return out;
      }, "The FIFO insertion number of each key (-1: not a key of this buffer).")
      .def("stored_keys", [](const ReplayBuffer& buf) {
        const std::vector<int64_t> keys = buf.StoredKeys();
        return py::array_t<int64_t>(static_cast<py::ssize_t>(keys.size()), keys.data());
      }, "The keys of the stored items, oldest first.");
}
