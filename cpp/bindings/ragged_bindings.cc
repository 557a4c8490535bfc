// pybind11 glue for the ragged calls of reverie._core.Table (arena.h, table_ragged.cc):
// writes with per-item lengths, packed / padded batches into fresh arrays, arena figures.
// Glue only: converts arguments, releases the GIL around the core, wraps its outputs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "convert.h"
#include "reverie/table.h"

namespace reverie_py {

using namespace reverie;

namespace {

// Outputs allocated without the GIL (the core asks while it copies): aligned heap blocks
// that become numpy arrays owning them (a capsule frees each block with its array).
class HeapSink final : public RaggedSink {
 public:
  struct Output {
    void* data = nullptr;
    DType dtype = DType::kInt32;
    std::vector<py::ssize_t> shape;
  };
  explicit HeapSink(size_t outputs) : outputs_(outputs) {}
  ~HeapSink() override {
    for (Output& o : outputs_) std::free(o.data);
  }
  uint8_t* Allocate(int output, DType dtype, const int64_t* shape, int ndim) override {
    Output& o = outputs_.at(static_cast<size_t>(output));
    std::free(o.data);  // a copy done again
    size_t bytes = DTypeSize(dtype);
    o.shape.assign(shape, shape + ndim);
    for (py::ssize_t d : o.shape) bytes *= static_cast<size_t>(d);
    o.data = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (o.data == nullptr) throw std::bad_alloc();
    o.dtype = dtype;
    return static_cast<uint8_t*>(o.data);
  }
  // The outputs as numpy arrays (GIL held); the sink no longer owns them.
  py::list Release() {
    py::list arrays;
    for (Output& o : outputs_) {
      if (o.data == nullptr) {  // not asked for (position_ids left to the caller)
        arrays.append(py::none());
        continue;
      }
      py::capsule owner(o.data, [](void* p) { std::free(p); });
      o.data = nullptr;
      arrays.append(py::array(NumpyDType(o.dtype), o.shape, static_cast<const void*>(owner.get_pointer()), owner));
    }
    return arrays;
  }

 private:
  std::vector<Output> outputs_;
};

RaggedLayout MakeLayout(bool padded, int64_t multiple, const std::vector<bool>& left,
                        const std::vector<py::bytes>& pad, int64_t max_tokens) {
  RaggedLayout layout;
  layout.padded = padded;
  layout.positions = false;  // the Python layer derives position_ids from cu_seqlens when asked
  layout.multiple = multiple;
  for (bool l : left) layout.left.push_back(l ? 1 : 0);
  for (const py::bytes& p : pad) {
    const std::string s = p;
    layout.pad.emplace_back(s.begin(), s.end());
  }
  layout.max_tokens = max_tokens;
  return layout;
}

const TokenArena& ArenaOf(const Table& table) {
  if (table.arena() == nullptr) throw std::invalid_argument("this table has no ragged fields");
  return *table.arena();
}

}  // namespace

void BindRagged(py::module_& m) {
  auto cls = py::reinterpret_borrow<py::class_<Table, WriteSink>>(m.attr("Table"));
  cls.def("write_ragged", [](Table& table, bool batched, py::dict lengths, py::kwargs fields) {
        // add (batched=False) / extend with ragged fields: `lengths` {ragged field: int64 [n]}
        // for a batch of packed values.
        Inputs in(fields.size());
        size_t i = 0;
        for (auto [key, value] : fields) ConvertOne(key.ptr(), value.ptr(), i++, in);
        std::vector<Int64Array> keep;
        AttachLengths(in, lengths, &keep);
        py::gil_scoped_release release;
        return batched ? table.Extend(in.fields(), in.count) : table.Add(in.fields(), in.count);
      }, py::arg("batched"), py::arg("lengths"))
      .def("write_group", [](Table& table, py::dict lengths, py::kwargs fields) {
        // add_group: one extend stored as one group (packed values with `lengths`).
        Inputs in(fields.size());
        size_t i = 0;
        for (auto [key, value] : fields) ConvertOne(key.ptr(), value.ptr(), i++, in);
        std::vector<Int64Array> keep;
        AttachLengths(in, lengths, &keep);
        py::gil_scoped_release release;
        return table.ExtendGroup(in.fields(), in.count);
      }, py::arg("lengths"))
      .def("update_ragged", [](Table& table, const py::array& keys, py::dict lengths, py::kwargs fields) {
        // update_fields of ragged fields: packed values with one length per key.
        const auto k = KeyArray(keys);
        Inputs in(fields.size());
        size_t i = 0;
        for (auto [key, value] : fields) ConvertOne(key.ptr(), value.ptr(), i++, in);
        std::vector<Int64Array> keep;
        AttachLengths(in, lengths, &keep);
        py::gil_scoped_release release;
        return table.UpdateRagged(k.data(), k.size(), in.fields(), in.count);
      }, py::arg("keys"), py::arg("lengths"))
      .def("oldest_keys", [](const Table& table, int64_t n, int64_t min_version) {
        std::vector<int64_t> keys;
        {
          py::gil_scoped_release release;
          keys = table.OldestKeys(n, min_version);
        }
        return py::array_t<int64_t>(static_cast<py::ssize_t>(keys.size()), keys.data());
      }, py::arg("n"), py::arg("min_version"))
      .def("group_members", [](const Table& table, const py::array& keys) {
        // (member keys, counts per key), or None when a group changed while read.
        const auto k = KeyArray(keys);
        std::vector<int64_t> members;
        py::array_t<int64_t> counts(k.size());
        int64_t* c = counts.mutable_data();
        bool ok = false;
        {
          py::gil_scoped_release release;
          ok = table.GroupMembers(k.data(), k.size(), &members, c);
        }
        if (!ok) return py::object(py::none());
        return py::object(py::make_tuple(py::array_t<int64_t>(static_cast<py::ssize_t>(members.size()), members.data()),
                                         std::move(counts)));
      })
      .def("sample_ragged", [](Table& table, int64_t batch, bool padded, int64_t multiple, const std::vector<bool>& left,
                               const std::vector<py::bytes>& pad, int64_t max_tokens, bool meta) {
        // (fixed arrays, ragged outputs (arena.h's RaggedSink order), keys, weights, meta,
        // lengths [n, groups], n): arrays hold `batch` rows, the first n are the batch.
        if (batch <= 0) throw std::invalid_argument("batch_size must be > 0, got " + std::to_string(batch));
        const TokenArena& arena = ArenaOf(table);
        const RaggedLayout layout = MakeLayout(padded, multiple, left, pad, max_tokens);
        std::vector<uint8_t*> dst;
        py::list fixed = NewRowArrays(table.spec(), batch, &dst);
        py::array_t<int64_t> keys(batch);
        py::object weights = py::none();
        float* w = nullptr;
        if (table.selector().prioritized()) {
          py::array_t<float> a(batch);
          w = a.mutable_data();
          weights = std::move(a);
        }
        BatchMeta bm;
        py::object meta_out = NewMetaArrays(batch, meta, &bm);
        py::array_t<int64_t> lengths({batch, static_cast<int64_t>(arena.num_groups())});
        HeapSink sink(arena.fields().size() + 2 * static_cast<size_t>(arena.num_groups()));
        int64_t n = 0;
        int64_t* k = keys.mutable_data();
        int64_t* l = lengths.mutable_data();
        {
          py::gil_scoped_release release;
          n = table.SampleRagged(batch, dst.data(), k, w, meta ? &bm : nullptr, layout, l, sink);
        }
        return py::make_tuple(std::move(fixed), sink.Release(), std::move(keys), std::move(weights),
                              std::move(meta_out), std::move(lengths), n);
      }, py::arg("batch"), py::arg("padded"), py::arg("multiple"), py::arg("left"), py::arg("pad"),
         py::arg("max_tokens"), py::arg("meta"))
      .def("get_ragged", [](const Table& table, const py::array& keys, bool padded, int64_t multiple,
                            const std::vector<bool>& left, const std::vector<py::bytes>& pad, bool meta) {
        const TokenArena& arena = ArenaOf(table);
        const auto k = KeyArray(keys);
        const int64_t n = k.size();
        const RaggedLayout layout = MakeLayout(padded, multiple, left, pad, 0);
        std::vector<uint8_t*> dst;
        py::list fixed = NewRowArrays(table.spec(), n, &dst);
        BatchMeta bm;
        py::object meta_out = NewMetaArrays(n, meta, &bm);
        py::array_t<int64_t> lengths({n, static_cast<int64_t>(arena.num_groups())});
        HeapSink sink(arena.fields().size() + 2 * static_cast<size_t>(arena.num_groups()));
        int64_t* l = lengths.mutable_data();
        {
          py::gil_scoped_release release;
          table.GetRagged(k.data(), n, dst.data(), meta ? &bm : nullptr, layout, l, sink);
        }
        return py::make_tuple(std::move(fixed), sink.Release(), py::array_t<int64_t>(n, k.data()),
                              std::move(meta_out), std::move(lengths));
      }, py::arg("keys"), py::arg("padded"), py::arg("multiple"), py::arg("left"), py::arg("pad"), py::arg("meta"))
      .def_property_readonly("ragged", [](const Table& table) {
        // [(name, dtype, rest shape, group)] and the group names, or None.
        if (table.arena() == nullptr) return py::object(py::none());
        py::list fields;
        for (const RaggedFieldSpec& f : table.arena()->fields()) {
          fields.append(py::make_tuple(f.name, DTypeName(f.dtype), f.rest, table.arena()->groups()[static_cast<size_t>(f.group)]));
        }
        return py::object(py::make_tuple(fields, table.arena()->groups()));
      })
      .def("arena_stats", [](const Table& table) {
        const TokenArena& arena = ArenaOf(table);
        py::dict out;
        out["arena_bytes"] = arena.bytes();
        out["arena_used_bytes"] = arena.used_bytes();
        out["arena_held_bytes"] = arena.held_bytes();
        out["arena_evicted"] = arena.evicted_items();
        out["groups_held"] = arena.groups_held();
        int64_t buckets[TokenArena::kStalenessBuckets];
        arena.EvictedStaleness(buckets);
        out["evicted_staleness"] = std::vector<int64_t>(buckets, buckets + TokenArena::kStalenessBuckets);
        py::dict tokens;
        for (int g = 0; g < arena.num_groups(); ++g) tokens[py::str(arena.groups()[static_cast<size_t>(g)])] = arena.held_tokens(g);
        out["tokens_held"] = tokens;
        return out;
      });
}

}  // namespace reverie_py
