// pybind11 glue for reverie._core.Table: converts arguments while holding the GIL, releases it
// around every call into the core, and allocates the arrays a call fills. No engine logic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert.h"
#include "common_calls.h"
#include "reverie/table.h"

namespace reverie_py {

using namespace reverie;

namespace {

// A fresh array for field f with leading dims `lead`, then (episode views: obs fields with
// frame_stack > 1) the stack axis, then the field's shape.
py::array NewFieldArray(const Table& table, size_t f, std::vector<py::ssize_t> shape) {
  const FieldSpec& spec = table.spec()[f];
  if (const EpisodeView* view = table.episodes()) {
    const EpisodeConfig& ec = view->config();
    if (ec.frame_stack > 1 && std::find(ec.obs.begin(), ec.obs.end(), static_cast<int>(f)) != ec.obs.end()) {
      shape.push_back(ec.frame_stack);
    }
  }
  shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
  return py::array(NumpyDType(spec.dtype), shape);
}

py::list NewFieldArrays(const Table& table, const std::vector<py::ssize_t>& lead,
                        std::vector<uint8_t*>* dst) {
  py::list arrays;
  for (size_t f = 0; f < table.spec().size(); ++f) {
    py::array a = NewFieldArray(table, f, lead);
    dst->push_back(static_cast<uint8_t*>(a.mutable_data()));
    arrays.append(std::move(a));
  }
  return arrays;
}

// The importance-weight output of a sample call: a fresh float32 array (with *w pointing into
// it) for a prioritized table, else None (and *w null).
py::object NewWeights(const Table& table, int64_t batch, float** w) {
  if (!table.selector().prioritized()) return py::none();
  py::array_t<float> weights(batch);
  *w = weights.mutable_data();
  return std::move(weights);
}

EpisodeView& Episodes(Table& table, const char* what) {
  EpisodeView* view = table.episodes();
  if (view == nullptr) throw std::invalid_argument(std::string(what) + " needs an episode buffer (num_envs)");
  return *view;
}

}  // namespace

void BindTable(py::module_& m) {
  py::class_<WriteSink>(m, "WriteSink");  // what the fast write path writes into
  py::class_<Table, WriteSink> cls(m, "Table");
  BindCommonCalls(cls);
  cls
      .def(py::init([](py::dict config, const std::string& storage, const std::string& name) {
             const ConfigValue c = ConfigFromPython(config, "config");
             const StorageConfig st = MakeStorage(storage, name);
             std::unique_ptr<Table> table;
             {
               py::gil_scoped_release release;  // creating a large shared segment takes a while
               table = std::make_unique<Table>(c, st);
             }
             // While a call waits for the rate limiter, Ctrl-C (and other signals) still work.
             table->set_wait_poll([] {
               py::gil_scoped_acquire gil;
               if (PyErr_CheckSignals() != 0) throw py::error_already_set();
             });
             return table;
           }),
           py::arg("config"), py::arg("storage") = "memory", py::arg("name") = "")
      .def_static("stored_config", [](const std::string& storage, const std::string& name) {
        return Table::StoredConfig(MakeStorage(storage, name));
      }, py::arg("storage"), py::arg("name"), "The canonical configuration JSON of an existing table.")
      .def("sample", [](Table& table, int64_t batch, const std::optional<std::vector<uintptr_t>>& out, bool meta) {
        // Gathers into fresh numpy arrays (that the caller's tensors then own), or into the
        // caller's tensors at the given addresses (python/reverie checks them).
        if (batch <= 0) throw std::invalid_argument("batch_size must be > 0, got " + std::to_string(batch));
        const auto& spec = table.spec();
        std::vector<uint8_t*> dst;
        py::list arrays;
        if (out) {
          if (out->size() != spec.size()) throw std::invalid_argument("one output per field expected");
          for (uintptr_t p : *out) dst.push_back(reinterpret_cast<uint8_t*>(p));
        } else {
          arrays = NewFieldArrays(table, {batch}, &dst);
        }
        py::array_t<int64_t> keys(batch);
        float* w = nullptr;
        py::object weights = NewWeights(table, batch, &w);
        BatchMeta bm;
        py::object meta_out = NewMetaArrays(batch, meta, &bm);
        int64_t* k = keys.mutable_data();
        {
          py::gil_scoped_release release;
          table.Sample(batch, dst.data(), k, w, meta ? &bm : nullptr);
        }
        return py::make_tuple(std::move(arrays), std::move(keys), std::move(weights), std::move(meta_out));
      }, py::arg("batch"), py::arg("out") = py::none(), py::arg("meta") = false)
      .def("get", [](const Table& table, const py::array& keys, bool meta) {
        // The stored rows of the given keys, in fresh arrays (IndexError for a key that is
        // not stored now).
        const auto k = KeyArray(keys);
        const int64_t n = k.size();
        std::vector<uint8_t*> dst;
        py::list arrays = NewRowArrays(table.spec(), n, &dst);
        BatchMeta bm;
        py::object meta_out = NewMetaArrays(n, meta, &bm);
        {
          py::gil_scoped_release release;
          table.Get(k.data(), n, dst.data(), meta ? &bm : nullptr);
        }
        return py::make_tuple(std::move(arrays), py::array_t<int64_t>(n, k.data()), std::move(meta_out));
      }, py::arg("keys"), py::arg("meta") = false)
      .def("extend_masked", [](Table& table, const py::array& mask, py::kwargs fields) {
        // extend() through a caller's predicate: mask[r] == 0 drops input row r.
        if (mask.dtype().kind() != 'b' || mask.ndim() != 1) ThrowType("the admission mask must be a 1-D bool array");
        const auto m = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(mask);
        Inputs in(fields.size());
        size_t i = 0;
        for (auto [key, value] : fields) ConvertOne(key.ptr(), value.ptr(), i++, in);
        py::gil_scoped_release release;
        return table.Extend(in.fields(), in.count, m.data(), m.size());
      }, py::arg("mask"))
      .def("sample_transitions", [](Table& table, int64_t batch, int n_step, double gamma) {
        // Fresh arrays: fields of the start rows (obs fields stacked), next obs, returns,
        // discounts, keys, weights.
        EpisodeView& view = Episodes(table, "n-step sampling");
        view.CheckTransitionArgs(batch, n_step, gamma);
        std::vector<uint8_t*> dst, next_dst;
        py::list arrays = NewFieldArrays(table, {batch}, &dst);
        py::list next_arrays;
        for (int f : view.config().obs) {
          py::array a = NewFieldArray(table, static_cast<size_t>(f), {batch});
          next_dst.push_back(static_cast<uint8_t*>(a.mutable_data()));
          next_arrays.append(std::move(a));
        }
        py::array_t<float> returns(batch), discounts(batch);
        py::array_t<int64_t> keys(batch);
        float* w = nullptr;
        py::object weights = NewWeights(table, batch, &w);
        float* r = returns.mutable_data();
        float* d = discounts.mutable_data();
        int64_t* k = keys.mutable_data();
        {
          py::gil_scoped_release release;
          view.SampleTransitions(table, batch, n_step, gamma, dst.data(), next_dst.data(), r, d, k, w);
        }
        return py::make_tuple(std::move(arrays), std::move(next_arrays), std::move(returns),
                              std::move(discounts), std::move(keys), std::move(weights));
      }, py::arg("batch"), py::arg("n_step"), py::arg("gamma"))
      .def("sample_sequences", [](Table& table, int64_t batch, int64_t burn_in, int64_t length, bool drop) {
        EpisodeView& view = Episodes(table, "sequence sampling");
        view.CheckSequenceArgs(batch, burn_in, length);  // before allocating the outputs
        const int64_t total = burn_in + length;
        std::vector<uint8_t*> dst;
        py::list arrays = NewFieldArrays(table, {batch, total}, &dst);
        py::array_t<bool> mask({batch, total});
        py::array_t<int64_t> keys(batch);
        float* w = nullptr;
        py::object weights = NewWeights(table, batch, &w);
        auto* mk = reinterpret_cast<uint8_t*>(mask.mutable_data());
        int64_t* k = keys.mutable_data();
        {
          py::gil_scoped_release release;
          view.SampleSequences(table, batch, burn_in, length, drop, dst.data(), mk, k, w);
        }
        return py::make_tuple(std::move(arrays), std::move(mask), std::move(keys), std::move(weights));
      }, py::arg("batch"), py::arg("burn_in"), py::arg("length"), py::arg("drop"))
      .def("pin_all", [](Table& table, bool pin) {
        py::gil_scoped_release release;
        return table.PinAll(pin);
      }, py::arg("pin"), "Pins every item held and written later (or unpins every item); returns how many changed.")
      .def_property_readonly("pins", &Table::pins)
      .def_property_readonly("pins_new", &Table::pins_new)
      // Keys (key.h): the decoder of the layers above.
      .def("slots_of", [](const Table& table, const py::array& keys) {
        const auto k = KeyArray(keys);
        py::array_t<int64_t> slots(k.size());
        table.SlotsOf(k.data(), slots.mutable_data(), k.size());
        return slots;
      }, "The slot of each key (-1: not a key of this table).")
      .def("insertions_of", [](const Table& table, const py::array& keys) {
        const auto k = KeyArray(keys);
        py::array_t<int64_t> out(k.size());
        table.InsertionsOf(k.data(), out.mutable_data(), k.size());
        return out;
      }, "The insertion number of each key (-1: the writer cannot tell, or no key).")
      .def("stored_keys", [](const Table& table) {
        std::vector<int64_t> keys;
        {
          py::gil_scoped_release release;
          keys = table.StoredKeys();
        }
        return py::array_t<int64_t>(static_cast<py::ssize_t>(keys.size()), keys.data());
      }, "The keys of the stored items, oldest first.")
      .def_property_readonly("capacity", &Table::capacity)
      .def_property_readonly("written", &Table::written)
      .def_property_readonly("claimed", &Table::claimed)
      .def_property_readonly("size", &Table::size)
      .def_property_readonly("prioritized", [](const Table& table) { return table.selector().prioritized(); })
      .def("column", [](py::object self, size_t field) {
        // A numpy view of the whole column [capacity, *shape]; it keeps the table alive.
        auto& table = self.cast<Table&>();
        if (field >= table.spec().size()) throw std::out_of_range("no field number " + std::to_string(field));
        const FieldSpec& spec = table.spec()[field];
        std::vector<py::ssize_t> shape{table.capacity()};
        shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
        return py::array(NumpyDType(spec.dtype), shape, table.column(field), self);
      });
}

}  // namespace reverie_py
