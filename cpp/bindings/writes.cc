// add/extend as vectorcall functions bound to a Python buffer (see below). Glue only.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "reverie/table.h"

namespace reverie_py {

using namespace reverie;

namespace {

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
  PyObject* core = nullptr;   // the bound _core.Table (a strong reference), or null
  WriteSink* table = nullptr;
};

constexpr const char* kWriteTargetName = "reverie._core.write_target";

WriteTarget* TargetOf(PyObject* capsule) {
  return static_cast<WriteTarget*>(PyCapsule_GetPointer(capsule, kWriteTargetName));
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
  WriteSink* table = target->table;
  int64_t stored = 0;
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
      stored = kBatched ? table->Extend(in.fields(), in.count) : table->Add(in.fields(), in.count);
    }
  } catch (...) {
    SetPythonError();
    return nullptr;
  }
  return PyLong_FromLongLong(stored);
}

PyMethodDef kFastAdd = {"add", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&FastWrite<false>)),
                        METH_FASTCALL | METH_KEYWORDS, "Stores one item (keyword arguments: fields); returns 1 if stored, else 0."};
PyMethodDef kFastExtend = {"extend", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&FastWrite<true>)),
                           METH_FASTCALL | METH_KEYWORDS, "Stores a batch of items along axis 0; returns how many were stored."};

}  // namespace

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

// Binds the target's functions to `core` (a _core.Table), or unbinds them (None).
void BindWrites(py::capsule capsule, py::object core) {
  WriteTarget* target = TargetOf(capsule.ptr());
  if (target == nullptr) throw py::error_already_set();
  WriteSink* table = core.is_none() ? nullptr : core.cast<WriteSink*>();
  PyObject* old = target->core;
  target->core = core.is_none() ? nullptr : core.inc_ref().ptr();
  target->table = table;
  Py_XDECREF(old);
}


void BindWriteFunctions(py::module_& m) {
  m.def("make_write_target", &MakeWriteTarget, py::arg("owner"),
        "(target, add, extend): the write functions of the Python buffer `owner`, unbound.");
  m.def("bind_writes", &BindWrites, py::arg("target"), py::arg("core"),
        "Binds a write target's functions to a core, or unbinds them (None).");
}

}  // namespace reverie_py
