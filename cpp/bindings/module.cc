// pybind11 glue for reverie._core: the module, its exception translation, and the bindings of
// each part of the core (writes.cc, table_bindings.cc, device_bindings.cc). Conversions are in
// convert.cc. Glue only: converts arguments while holding the GIL, releases it around every
// call into the core, and maps core exceptions to Python ones. No engine logic.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "convert.h"
#include "reverie/common.h"
#include "reverie/device_buffer.h"
#include "reverie/dtype.h"
#include "reverie/key.h"

namespace reverie_py {
void BindWriteFunctions(py::module_& m);
void BindTable(py::module_& m);
void BindPartitionedTable(py::module_& m);
void BindDevice(py::module_& m);
void BindMicroBatches(py::module_& m);
void BindRagged(py::module_& m);
}  // namespace reverie_py

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  using namespace reverie;
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
  m.def("cuda_built", &CudaBuilt, "Whether the CUDA kernels were compiled into this build.");
  m.def("cuda_device_count", &CudaDeviceCount, py::call_guard<py::gil_scoped_release>(),
        "CUDA devices usable now (0 without kernels, driver or device).");
  m.def("dtype_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumDTypes; ++i) names.emplace_back(DTypeName(static_cast<DType>(i)));
    return names;
  });
  m.attr("KEY_SHARD_BITS") = kShardBits;
  m.attr("KEY_LOCAL_BITS") = kLocalKeyBits;
  reverie_py::BindWriteFunctions(m);
  reverie_py::BindTable(m);
  reverie_py::BindRagged(m);
  reverie_py::BindPartitionedTable(m);
  reverie_py::BindDevice(m);
  reverie_py::BindMicroBatches(m);
}
