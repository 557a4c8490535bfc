// A table's configuration: one tree of plain values (null, bool, integers, doubles, strings,
// lists, maps), the form every layer passes around, with one canonical text form (JSON, keys
// sorted, doubles written to round-trip exactly) that fingerprints shared segments and files
// and heads checkpoints. The bindings convert Python values to and from it generically; the
// parts read their own settings from it with typed getters whose errors name the setting.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace reverie {

class ConfigValue {
 public:
  enum class Type { kNull, kBool, kInt, kUInt, kDouble, kString, kList, kMap };
  using List = std::vector<ConfigValue>;
  using Map = std::map<std::string, ConfigValue>;

  ConfigValue() = default;  // null
  static ConfigValue Bool(bool v);
  static ConfigValue Int(int64_t v);
  static ConfigValue UInt(uint64_t v);  // for values above INT64_MAX (e.g. a seed)
  static ConfigValue Double(double v);
  static ConfigValue String(std::string v);
  static ConfigValue MakeList(List v = {});
  static ConfigValue MakeMap(Map v = {});

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_map() const { return type_ == Type::kMap; }

  // Typed reads; `what` names the value in the error (ValueError / TypeError).
  bool AsBool(const std::string& what) const;
  int64_t AsInt(const std::string& what) const;      // kInt, or a kUInt that fits
  uint64_t AsUInt(const std::string& what) const;    // kInt >= 0 or kUInt
  double AsDouble(const std::string& what) const;    // any number
  const std::string& AsString(const std::string& what) const;
  const List& AsList(const std::string& what) const;
  const Map& AsMap(const std::string& what) const;

  // Map access. `Get` returns null for a missing key; `At` throws naming `what` and the key.
  const ConfigValue& Get(const std::string& key) const;
  const ConfigValue& At(const std::string& key, const std::string& what) const;
  bool Has(const std::string& key) const;
  // Sets a key (this must be a map or null, which becomes a map).
  void Set(const std::string& key, ConfigValue value);
  // The list's items (this must be a list).
  void Append(ConfigValue value);

  // Canonical JSON: keys sorted (std::map order), no spaces, integers as integers, doubles
  // with 17 significant digits (so they read back bit for bit; inf/nan are refused).
  std::string ToJson() const;

 private:
  Type type_ = Type::kNull;
  bool b_ = false;
  int64_t i_ = 0;
  uint64_t u_ = 0;
  double d_ = 0;
  std::string s_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Map> map_;
};

// The settings of one part of a table: {"kind": "<registered name>", ...}. Returns the kind;
// throws ValueError (naming `what`) unless the value is a map with a string "kind".
const std::string& KindOf(const ConfigValue& part, const std::string& what);

// 64-bit FNV-1a of a string (fingerprints).
uint64_t Fnv1a(const std::string& text);

}  // namespace reverie
