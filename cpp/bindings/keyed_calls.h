// The calls that take keys, the same for a table and a partitioned table (update_priorities,
// update_fields, pin, lookup, pinned): glue defined once for both classes. Argument
// conversion only; the core validates the rest.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "convert.h"

namespace reverie_py {

template <typename T, typename... Bases>
void BindKeyedCalls(py::class_<T, Bases...>& cls) {
  cls.def("update_priorities", [](T& table, const py::array& keys, const py::array& priorities) {
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
       return table.UpdatePriorities(k.data(), p.data(), k.shape(0));
     })
      .def("update_fields", [](T& table, const py::array& keys, py::kwargs fields) {
        const auto k = KeyArray(keys);
        Inputs in(fields.size());
        size_t i = 0;
        for (auto [key, value] : fields) ConvertOne(key.ptr(), value.ptr(), i++, in);
        py::gil_scoped_release release;
        return table.UpdateFields(k.data(), k.size(), in.fields(), in.count);
      }, py::arg("keys"), "Overwrites the given fields of the items of `keys`; returns how many were stale.")
      .def("pin", [](T& table, const py::array& keys, bool pin) {
        const auto k = KeyArray(keys);
        py::gil_scoped_release release;
        return table.Pin(k.data(), k.size(), pin);
      }, py::arg("keys"), py::arg("pin"), "Pins (or unpins) the items of `keys`; returns how many changed.")
      .def_property_readonly("pinned", [](T& table) { return table.pinned(); })
      .def("lookup", [](T& table, const py::array& user_keys) {
        const auto k = KeyArray(user_keys);
        py::array_t<int64_t> out(k.size());
        int64_t* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          table.Lookup(k.data(), k.size(), o);
        }
        return out;
      }, py::arg("user_keys"), "The keys of the items held for these user keys (-1: none).");
}

}  // namespace reverie_py
