// pybind11 glue for the device buffer (device_buffer.h): pointers and streams cross as
// integers, the Python layer checks devices, dtypes and shapes. Glue only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "convert.h"
#include "reverie/device_buffer.h"

namespace reverie_py {

using namespace reverie;

void BindDevice(py::module_& m) {
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
      .def("get", [](DeviceReplay& self, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& host_keys,
                     uintptr_t keys, const std::vector<uintptr_t>& out, uintptr_t stream) {
             std::vector<uint8_t*> dst(out.size());
             for (size_t f = 0; f < out.size(); ++f) dst[f] = reinterpret_cast<uint8_t*>(out[f]);
             py::gil_scoped_release release;
             self.Get(host_keys.data(), reinterpret_cast<const int64_t*>(keys), host_keys.size(), dst.data(), stream);
           })
      .def("check_keys", [](const DeviceReplay& self,
                            const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& keys,
                            bool stored) {
             py::gil_scoped_release release;
             self.CheckKeys(keys.data(), keys.size(), stored);
           }, py::arg("keys"), py::arg("stored"))
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

}

}  // namespace reverie_py
