// pybind11 glue for reverie._core.PartitionedTable: converts arguments while holding the GIL,
// releases it around every call into the core, and allocates the arrays a call fills. The
// same method names as _core.Table where the meaning is the same. No engine logic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert.h"
#include "common_calls.h"
#include "reverie/partitioned_table.h"

namespace reverie_py {

using namespace reverie;

namespace {

bool AnyPrioritized(PartitionedTable& table) {
  for (int64_t p = 0; p < table.count(); ++p) {
    if (table.partition(p).selector().prioritized()) return true;
  }
  return false;
}

}  // namespace

void BindPartitionedTable(py::module_& m) {
  py::class_<PartitionedTable, WriteSink> cls(m, "PartitionedTable");
  BindCommonCalls(cls);
  cls
      .def(py::init([](py::dict config, const std::string& storage, const std::string& name) {
             const ConfigValue c = ConfigFromPython(config, "config");
             const StorageConfig st = MakeStorage(storage, name);
             std::unique_ptr<PartitionedTable> table;
             {
               py::gil_scoped_release release;
               table = std::make_unique<PartitionedTable>(c, st);
             }
             table->set_wait_poll([] {
               py::gil_scoped_acquire gil;
               if (PyErr_CheckSignals() != 0) throw py::error_already_set();
             });
             return table;
           }),
           py::arg("config"), py::arg("storage") = "memory", py::arg("name") = "")
      .def_static("stored_config", [](const std::string& storage, const std::string& name) {
        return PartitionedTable::StoredConfig(MakeStorage(storage, name));
      }, py::arg("storage"), py::arg("name"))
      .def_static("holds", [](const std::string& storage, const std::string& name) {
        return PartitionedTable::Holds(MakeStorage(storage, name));
      }, py::arg("storage"), py::arg("name"), "Whether the segment or file holds a partitioned table.")
      .def("sample", [](PartitionedTable& table, int64_t batch, const std::optional<std::vector<uintptr_t>>& out,
                        bool meta, const std::optional<std::vector<double>>& mixture) {
        if (batch <= 0) throw std::invalid_argument("batch_size must be > 0, got " + std::to_string(batch));
        std::vector<uint8_t*> dst;
        py::list arrays;
        if (out) {
          if (out->size() != table.spec().size()) throw std::invalid_argument("one output per field expected");
          for (uintptr_t p : *out) dst.push_back(reinterpret_cast<uint8_t*>(p));
        } else {
          arrays = NewRowArrays(table.spec(), batch, &dst);
        }
        py::array_t<int64_t> keys(batch), partition(batch);
        py::object weights = py::none();
        float* w = nullptr;
        if (AnyPrioritized(table)) {
          py::array_t<float> a(batch);
          w = a.mutable_data();
          weights = std::move(a);
        }
        BatchMeta bm;
        py::object meta_out = NewMetaArrays(batch, meta, &bm);
        int64_t* k = keys.mutable_data();
        int64_t* part = partition.mutable_data();
        {
          py::gil_scoped_release release;
          table.Sample(batch, dst.data(), k, w, part, meta ? &bm : nullptr, mixture ? mixture->data() : nullptr,
                       mixture ? static_cast<int64_t>(mixture->size()) : 0);
        }
        return py::make_tuple(std::move(arrays), std::move(keys), std::move(weights), std::move(meta_out),
                              std::move(partition));
      }, py::arg("batch"), py::arg("out") = py::none(), py::arg("meta") = false, py::arg("mixture") = py::none())
      .def("get", [](PartitionedTable& table, const py::array& keys, bool meta) {
        const auto k = KeyArray(keys);
        const int64_t n = k.size();
        std::vector<uint8_t*> dst;
        py::list arrays = NewRowArrays(table.spec(), n, &dst);
        py::array_t<int64_t> partition(n);
        BatchMeta bm;
        py::object meta_out = NewMetaArrays(n, meta, &bm);
        int64_t* part = partition.mutable_data();
        {
          py::gil_scoped_release release;
          table.Get(k.data(), n, dst.data(), part, meta ? &bm : nullptr);
        }
        return py::make_tuple(std::move(arrays), py::array_t<int64_t>(n, k.data()), std::move(meta_out),
                              std::move(partition));
      }, py::arg("keys"), py::arg("meta") = false)
      .def("extend_masked", [](PartitionedTable& table, const py::array& mask, py::kwargs fields) {
        if (mask.dtype().kind() != 'b' || mask.ndim() != 1) ThrowType("the admission mask must be a 1-D bool array");
        const auto mk = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(mask);
        Inputs in(fields.size());
        size_t i = 0;
        for (auto [key, value] : fields) ConvertOne(key.ptr(), value.ptr(), i++, in);
        py::gil_scoped_release release;
        return table.Extend(in.fields(), in.count, mk.data(), mk.size());
      }, py::arg("mask"))
      .def("pin_partition", [](PartitionedTable& table, int64_t value, bool pin) {
        py::gil_scoped_release release;
        return table.PinPartition(value, pin);
      }, py::arg("value"), py::arg("pin"))
      .def("set_mixture", [](PartitionedTable& table, const std::map<int64_t, double>& weights) {
        table.SetMixture(weights);
      }, py::arg("weights"))
      .def("clear_mixture", &PartitionedTable::ClearMixture)
      .def_property_readonly("mixture", &PartitionedTable::Mixture)
      .def_property_readonly("mode", &PartitionedTable::mode)
      .def_property_readonly("values", [](PartitionedTable& table) {
        std::vector<int64_t> out;
        for (int64_t p = 0; p < table.count(); ++p) out.push_back(table.value(p));
        return out;
      }, "The partition key value of each partition, in partition order.")
      .def("partition_sizes", [](PartitionedTable& table) {
        std::vector<int64_t> out;
        for (int64_t p = 0; p < table.count(); ++p) out.push_back(table.partition(p).size());
        return out;
      })
      .def("stored_keys", [](PartitionedTable& table) {
        std::vector<int64_t> keys;
        {
          py::gil_scoped_release release;
          keys = table.StoredKeys();
        }
        return py::array_t<int64_t>(static_cast<py::ssize_t>(keys.size()), keys.data());
      })
      .def("slots_of", [](PartitionedTable& table, const py::array& keys) {
        const auto k = KeyArray(keys);
        py::array_t<int64_t> slots(k.size());
        table.SlotsOf(k.data(), slots.mutable_data(), k.size());
        return slots;
      })
      .def_property_readonly("capacity", &PartitionedTable::capacity)
      .def_property_readonly("written", &PartitionedTable::written)
      .def_property_readonly("claimed", &PartitionedTable::written)
      .def_property_readonly("size", &PartitionedTable::size)
      .def_property_readonly("prioritized", [](PartitionedTable& table) { return AnyPrioritized(table); });
}

}  // namespace reverie_py
