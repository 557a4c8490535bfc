// pybind11 glue for the micro-batch splitter (micro_batch.h). Glue only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "convert.h"
#include "reverie/micro_batch.h"

namespace reverie_py {

namespace {

template <typename T>
py::array_t<T> ToArray(const std::vector<T>& v) {
  return py::array_t<T>(static_cast<py::ssize_t>(v.size()), v.data());
}

}  // namespace

void BindMicroBatches(py::module_& m) {
  m.def("split_micro_batches", [](const py::array& lengths, const py::object& groups, int64_t k, int64_t max_tokens,
                                  double a) {
    const auto l = KeyArray(lengths);
    const bool grouped = !groups.is_none();
    const auto g = KeyArray(grouped ? groups.cast<py::array>() : py::array_t<int64_t>(0));
    if (grouped && g.size() != l.size()) {
      throw std::invalid_argument("got " + std::to_string(l.size()) + " lengths but " + std::to_string(g.size()) +
                                  " group ids");
    }
    reverie::MicroBatchSplit split;
    {
      py::gil_scoped_release release;
      split = reverie::SplitMicroBatches(l.data(), l.size(), grouped ? g.data() : nullptr, k, max_tokens, a);
    }
    return py::make_tuple(ToArray(split.order), ToArray(split.starts), ToArray(split.costs), ToArray(split.tokens));
  }, py::arg("lengths"), py::arg("groups"), py::arg("k"), py::arg("max_tokens"), py::arg("a"),
     "Balanced micro-batches: (order, starts, costs, tokens).");
}

}  // namespace reverie_py
