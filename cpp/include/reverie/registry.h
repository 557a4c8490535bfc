// Registries of a table's parts: a part kind ("fifo", "prioritized", "threshold", ...) names
// a factory that builds the part from its settings. A new part is a file of its own plus
// one line in RegisterBuiltinParts (parts.cc); nothing else names the kinds: no enum, no
// switch in the bindings, no isinstance chain in Python (the Python classes carry the kind
// and their settings; the core looks the kind up here).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "reverie/common.h"
#include "reverie/config.h"
#include "reverie/part.h"

namespace reverie {

class Writer;
class Admission;
class Selector;

namespace internal {
// Registers every built-in part, once (parts.cc). Called by the registries' lookups.
void EnsureBuiltinParts();
}  // namespace internal

// Thread-safety: filled once, before the first lookup (EnsureBuiltinParts), then read-only.
template <typename Interface>
class Registry {
 public:
  using Factory = std::unique_ptr<Interface> (*)(const ConfigValue& settings, const TableContext& table);
  struct Entry {
    Factory make = nullptr;
    // Settings that may change while the table is in use (e.g. a prioritized selector's
    // beta): left out of the table's fingerprint, and kept by the table's region rather
    // than by its configuration once it exists.
    std::vector<std::string> live;
    // Every setting the part reads besides "kind" (live ones included): any other name is
    // refused, so a misspelt setting is an error rather than a default.
    std::vector<std::string> settings;
  };

  // `what` names the role in errors ("selector", "writer", "admission").
  static Registry& Instance(const char* what) {
    static Registry* registry = new Registry(what);  // never destroyed (used at exit)
    return *registry;
  }

  void Add(const std::string& kind, Factory make, std::vector<std::string> settings = {},
           std::vector<std::string> live = {}) {
    entries_[kind] = Entry{make, std::move(live), std::move(settings)};
  }

  const Entry& Find(const std::string& kind) const {
    internal::EnsureBuiltinParts();
    const auto it = entries_.find(kind);
    if (it == entries_.end()) {
      std::string known;
      for (const auto& [name, entry] : entries_) known += (known.empty() ? "" : ", ") + name;
      throw std::invalid_argument(internal::Concat("unknown ", what_, " kind '", kind, "'; known: ", known));
    }
    return it->second;
  }

  // Builds the part `settings` ({"kind": ..., ...}) names. Throws ValueError for an unknown
  // kind or bad settings.
  std::unique_ptr<Interface> Make(const ConfigValue& settings, const TableContext& table) const {
    const std::string& kind = KindOf(settings, what_);
    const Entry& entry = Find(kind);
    for (const auto& [name, value] : settings.AsMap(what_)) {
      if (name == "kind") continue;
      bool known = false;
      std::string names;
      for (const std::string& s : entry.settings) {
        known = known || s == name;
        names += (names.empty() ? "" : ", ") + s;
      }
      REVERIE_CHECK(known, "the ", kind, " ", what_, " has no setting '", name, "'; its settings: ",
                    names.empty() ? "none" : names);
    }
    return entry.make(settings, table);
  }

  std::vector<std::string> Kinds() const {
    internal::EnsureBuiltinParts();
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_) out.push_back(name);
    return out;
  }

 private:
  explicit Registry(const char* what) : what_(what) {}
  std::string what_;
  std::map<std::string, Entry> entries_;
};

inline Registry<Writer>& Writers() { return Registry<Writer>::Instance("writer"); }
inline Registry<Admission>& Admissions() { return Registry<Admission>::Instance("admission"); }
inline Registry<Selector>& Selectors() { return Registry<Selector>::Instance("selector"); }

}  // namespace reverie
