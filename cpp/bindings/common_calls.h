// The calls a table and a partitioned table share (those taking keys: update_priorities,
// update_fields, pin, lookup; inspection, live settings, the rate limiter, state): glue
// defined once for both classes. Argument conversion only; the core validates the rest.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "convert.h"
#include "reverie/part.h"
#include "reverie/rate_limiter.h"

namespace reverie_py {

// A numpy view of a state array (it keeps the table alive).
inline py::array StateView(py::object owner, const reverie::StateArray& a) {
  const std::string dtype = a.dtype == "bfloat16" ? "int16" : a.dtype;  // its 16-bit pattern
  std::vector<py::ssize_t> shape(a.shape.begin(), a.shape.end());
  return py::array(py::dtype(dtype), shape, a.data, owner);
}

template <typename T, typename... Bases>
void BindCommonCalls(py::class_<T, Bases...>& cls) {
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
      }, py::arg("user_keys"), "The keys of the items held for these user keys (-1: none).")
      .def_property_readonly("stale_updates", &T::stale_updates)
      .def_property_readonly("sample_calls", &T::sample_calls)
      .def_property_readonly("seed", &T::seed)
      .def_property_readonly("config_json", &T::config_json)
      .def_property("version", &T::version, &T::set_version)
      .def_property_readonly("shared_name", [](T& table) -> py::object {
        if (!table.shared()) return py::none();
        return py::str(table.shared_name());
      })
      .def_property_readonly("reopened", &T::reopened)
      .def("unlink", &T::Unlink)
      .def("flush", &T::Flush, py::call_guard<py::gil_scoped_release>())
      .def("set_live", [](T& table, const std::string& role, const std::string& name, py::handle value) {
        const reverie::ConfigValue v = ConfigFromPython(value, name);
        py::gil_scoped_release release;
        table.SetLive(role, name, v);
      }, py::arg("role"), py::arg("name"), py::arg("value"))
      .def("live", [](T& table, const std::string& role) { return ConfigToPython(table.Live(role)); })
      .def("configure_rate_limiter", [](T& table, bool enabled, int64_t min_size, double spi,
                                        double tolerance, double timeout) {
        table.rate_limiter().Configure(reverie::RateLimitConfig{enabled, min_size, spi, tolerance, timeout});
      })
      .def("rate_limiter_config", [](T& table) {
        const reverie::RateLimitConfig c = table.rate_limiter().config();
        return py::make_tuple(c.enabled, c.min_size, c.samples_per_insert, c.tolerance, c.timeout);
      })
      .def_property_readonly("sampled", [](T& table) { return table.rate_limiter().sampled(); })
      .def("can_sample", [](T& table) { return table.rate_limiter().CanSample(); })
      .def("can_insert", [](T& table) { return table.rate_limiter().CanInsert(); })
      .def("state_arrays", [](py::object self) {
        auto& table = self.cast<T&>();
        py::list out;
        for (const reverie::StateArray& a : table.StateArrays()) {
          out.append(py::make_tuple(a.name, a.dtype, py::tuple(py::cast(a.shape)), a.per_slot, StateView(self, a)));
        }
        return out;
      })
      .def("scalars", [](T& table) { return ConfigToPython(table.Scalars()); })
      .def("snapshot", [](T& table, const std::vector<std::string>& names) {
        std::vector<std::vector<uint8_t>> copies;
        reverie::ConfigValue scalars;
        {
          py::gil_scoped_release release;
          scalars = table.Scalars(names, &copies);
        }
        py::list arrays;
        for (const auto& c : copies) arrays.append(py::bytes(reinterpret_cast<const char*>(c.data()), c.size()));
        return py::make_tuple(std::move(arrays), ConfigToPython(scalars));
      }, py::arg("names"), "Copies of the named state arrays (bytes) and the scalars, taken together.")
      .def("restore", [](T& table, py::dict scalars) {
        const reverie::ConfigValue s = ConfigFromPython(scalars, "state");
        py::gil_scoped_release release;
        table.Restore(s);
      });
}

}  // namespace reverie_py
